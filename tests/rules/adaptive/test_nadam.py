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
    got = run_params_f64(optimizers.nadam(2e-3, 0.9, 0.999, 1e-8, momentum_decay=psi), grads, theta0)
    want = run_torch(lambda ps: torch.optim.NAdam(ps, lr=2e-3, momentum_decay=psi), theta0, grads)
    # torch keeps mu_product as a float32 tensor even for float64 params (~1e-9 relative).
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-8)


_DECAYS = {"w": True, "b": False}  # a mask on part of the tree; the other leaves keep their values


def _masked_tree(rng):
    return {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}


@pytest.mark.parametrize("mask", [None, _DECAYS], ids=["all", "masked"])
def test_nadamw_matches_paper_with_decoupled_decay(mask):
    """theta -= lr (u_t + wd theta_{t-1}) with Nadam's u_t; a masked-out leaf has no decay."""
    rng = np.random.default_rng(31)
    grads, theta0 = [_masked_tree(rng) for _ in range(25)], _masked_tree(rng)
    lr, wd = 0.01, 0.1
    got = run_params(optimizers.nadamw(lr, weight_decay=wd, mask=mask), grads, theta0)
    for key in ("w", "b"):
        decay = wd if mask is None or mask[key] else 0.0
        theta, want = theta0[key], []
        for u in _nadam_reference([g[key] for g in grads], 0.9, 0.999, 1e-8, 0.004):
            theta = theta - lr * (u + decay * theta)
            want.append(theta)
        for step, w in enumerate(want):
            assert_trees_close(got[step][key], w, rtol=2e-5)


def test_nadamw_matches_torch_decoupled():
    grads, theta0 = random_grads(50, seed=32), random_tree(np.random.default_rng(33))
    want = run_torch(lambda ps: torch.optim.NAdam(ps, lr=2e-3, weight_decay=0.05, decoupled_weight_decay=True),
                     theta0, grads)
    for g, w in zip(run_params_f64(optimizers.nadamw(2e-3, weight_decay=0.05), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-8)  # torch keeps its mu product in float32, as for nadam


@pytest.mark.parametrize("nesterov", [True, False])
def test_nadamw_without_schedule_is_optax_nadamw(nesterov):
    import optax

    grads, theta0 = random_grads(20, seed=34), random_tree(np.random.default_rng(35))
    ours = optimizers.nadamw(0.01, 0.8, 0.99, 1e-6, 1e-4, weight_decay=0.05, momentum_decay=None, nesterov=nesterov)
    theirs = optax.nadamw(0.01, 0.8, 0.99, 1e-6, 1e-4, weight_decay=0.05, nesterov=nesterov)
    for g, w in zip(run_params_f64(ours, grads, theta0), run_params_f64(theirs, grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)
    scheduled = run_params_f64(optimizers.nadamw(0.01, 0.8, 0.99, 1e-6, weight_decay=0.05), grads, theta0)[-1]
    optax_final = run_params_f64(optax.nadamw(0.01, 0.8, 0.99, 1e-6, 0.0, weight_decay=0.05), grads, theta0)[-1]
    assert not np.allclose(scheduled["dense"]["w"], optax_final["dense"]["w"], rtol=1e-6)  # Dozat's schedule
