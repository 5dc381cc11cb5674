import numpy as np
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch)

import optimizers


def _nadam_reference(grads, b1, b2, eps, psi, momentum_denominator="paper"):
    m = v = np.zeros_like(grads[0], np.float64)
    prod = 1.0
    for t, g in enumerate(grads, start=1):
        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        prod *= mu_t
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        # Dozat's paper: prod over i <= t+1; the update table of “Optimization algorithms in deep learning”: prod over
        # i <= t.
        momentum_prod = prod * mu_next if momentum_denominator == "paper" else prod
        m_hat = mu_next * m / (1 - momentum_prod) + (1 - mu_t) * g / (1 - prod)
        yield m_hat / (np.sqrt(v / (1 - b2**t)) + eps)


@pytest.mark.parametrize("b1,psi", [(0.9, 0.004), (0.95, 0.1)])
def test_scale_by_nadam_matches_paper(b1, psi):
    grads, theta0 = random_grads(25, seed=1), random_tree(np.random.default_rng(2))

    def reference(theta, gs):
        for u in _nadam_reference(gs, b1, 0.999, 1e-8, psi):
            theta = theta - 0.01 * u
            yield theta

    check_reference(run_params(optimizers.nadam(0.01, b1, momentum_decay=psi), grads, theta0), grads, reference,
                    params=theta0)


def test_paper_and_table_forms_differ():
    """The table's momentum denominator is not the paper's: the two references disagree."""
    gs = random_grads(5, seed=3)
    leaf = [g["scale"] for g in gs]
    paper = list(_nadam_reference(leaf, 0.9, 0.999, 1e-8, 0.004))
    table = list(_nadam_reference(leaf, 0.9, 0.999, 1e-8, 0.004, "table"))
    assert not np.allclose(paper, table, rtol=1e-3)


@pytest.mark.parametrize("psi", [0.004, 0.05])
def test_nadam_matches_torch(psi):
    grads, theta0 = random_grads(50, seed=4), random_tree(np.random.default_rng(5))
    got = run_params_f64(optimizers.nadam(2e-3, 0.9, 0.999, 1e-8, psi), grads, theta0)
    want = run_torch(lambda ps: torch.optim.NAdam(ps, lr=2e-3, momentum_decay=psi), theta0, grads)
    # torch keeps mu_product as a float32 tensor even for float64 params (~1e-9 relative).
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-8)
