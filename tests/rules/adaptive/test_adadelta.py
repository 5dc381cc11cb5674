import numpy as np
import optax
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _adadelta_reference(grads, rho, eps):
    v = x = np.zeros_like(grads[0], np.float64)
    for g in grads:
        v = rho * v + (1 - rho) * g**2
        step = np.sqrt(x + eps) / np.sqrt(v + eps) * g  # -Delta theta_t
        x = rho * x + (1 - rho) * step**2
        yield step


@pytest.mark.parametrize("rho,eps", [(0.9, 1e-6), (0.5, 1e-2)])
def test_adadelta_matches_table(rho, eps):
    grads, theta0 = random_grads(25, seed=1), random_tree(np.random.default_rng(2))
    check_reference(run_updates(optimizers.scale_by_adadelta(rho, eps), grads), grads,
                    lambda gs: _adadelta_reference(gs, rho, eps))

    def reference(theta, gs):
        for step in _adadelta_reference(gs, rho, eps):
            theta = theta - step  # the paper's learning rate of 1
            yield theta

    check_reference(run_params(optimizers.adadelta(rho=rho, eps=eps), grads, theta0), grads, reference,
                    params=theta0)


@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_adadelta_matches_torch(lr):
    grads, theta0 = random_grads(50, seed=3), random_tree(np.random.default_rng(4))
    got = run_params_f64(optimizers.adadelta(lr), grads, theta0)
    want = run_torch(lambda ps: torch.optim.Adadelta(ps, lr=lr), theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_scale_by_adadelta_matches_optax():
    grads = random_grads(30, seed=5)
    import jax

    with jax.enable_x64(True):
        got = run_updates(optimizers.scale_by_adadelta(0.9, 1e-6), grads, dtype=np.float64)
        want = run_updates(optax.scale_by_adadelta(0.9, 1e-6), grads, dtype=np.float64)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)
