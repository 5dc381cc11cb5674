import numpy as np
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _radam_reference(grads, b1, b2, eps, threshold=4.0, eps_on_raw_sqrt=False):
    m = v = np.zeros_like(grads[0], np.float64)
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > threshold:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            if eps_on_raw_sqrt:
                yield r * m_hat * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
            else:
                yield r * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        else:
            yield m_hat


def _first_rectified_step(b2, threshold):
    rho_inf = 2 / (1 - b2) - 1
    return next(t for t in range(1, 100) if rho_inf - 2 * t * b2**t / (1 - b2**t) > threshold)


@pytest.mark.parametrize("threshold", [4.0, 5.0])
@pytest.mark.parametrize("eps_on_raw_sqrt", [False, True])
def test_scale_by_radam_matches_paper(threshold, eps_on_raw_sqrt):
    # Both sides of the threshold are covered: steps 1..4 (or 5) un-adapted, later rectified.
    assert 3 <= _first_rectified_step(0.999, threshold) <= 10
    grads = random_grads(25, seed=1)
    got = run_updates(optimizers.scale_by_radam(0.9, 0.999, 1e-3, threshold=threshold,
                                                eps_on_raw_sqrt=eps_on_raw_sqrt), grads)
    check_reference(got, grads, lambda gs: _radam_reference(gs, 0.9, 0.999, 1e-3, threshold, eps_on_raw_sqrt))


def test_radam_matches_paper():
    grads, theta0 = random_grads(25, seed=2), random_tree(np.random.default_rng(3))

    def reference(theta, gs):
        for u in _radam_reference(gs, 0.9, 0.99, 1e-8):
            theta = theta - 0.01 * u
            yield theta

    check_reference(run_params(optimizers.radam(0.01, 0.9, 0.99), grads, theta0), grads, reference, params=theta0)


def test_radam_matches_torch_with_threshold_5():
    grads, theta0 = random_grads(50, seed=4), random_tree(np.random.default_rng(5))
    got = run_params_f64(optimizers.radam(1e-2, threshold=5, eps_on_raw_sqrt=True), grads, theta0)
    want = run_torch(lambda ps: torch.optim.RAdam(ps, lr=1e-2), theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_radam_paper_threshold_differs_from_torch():
    """Threshold 4 rectifies one step earlier than PyTorch's 5, which shows in the params."""
    assert _first_rectified_step(0.999, 4.0) < _first_rectified_step(0.999, 5.0)
    grads, theta0 = random_grads(10, seed=6), random_tree(np.random.default_rng(7))
    got = run_params_f64(optimizers.radam(1e-2), grads, theta0)[-1]
    want = run_torch(lambda ps: torch.optim.RAdam(ps, lr=1e-2), theta0, grads)[-1]
    assert not np.allclose(got["dense"]["w"], want["dense"]["w"], rtol=1e-6)
