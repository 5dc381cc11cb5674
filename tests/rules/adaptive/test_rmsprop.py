import numpy as np
import optax
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _rmsprop_reference(grads, rho, eps, eps_in_sqrt=False, centered=False):
    v = a = np.zeros_like(grads[0], np.float64)
    for g in grads:
        v = rho * v + (1 - rho) * g**2
        a = rho * a + (1 - rho) * g
        var = v - a**2 if centered else v
        yield g / (np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps)


@pytest.mark.parametrize("eps_in_sqrt,centered", [(False, False), (True, False), (False, True)])
def test_scale_by_rms_matches_table(eps_in_sqrt, centered):
    grads = random_grads(25, seed=1)
    got = run_updates(optimizers.scale_by_rms(0.9, 1e-6, eps_in_sqrt=eps_in_sqrt, centered=centered), grads)
    check_reference(got, grads, lambda gs: _rmsprop_reference(gs, 0.9, 1e-6, eps_in_sqrt, centered), rtol=5e-5)


def test_rmsprop_with_momentum_matches_table():
    grads, theta0 = random_grads(25, seed=2), random_tree(np.random.default_rng(3))

    def reference(theta, gs):
        b = np.zeros_like(theta)
        for u in _rmsprop_reference(gs, 0.99, 1e-8):
            b = 0.9 * b + u
            theta = theta - 0.01 * b
            yield theta

    check_reference(run_params(optimizers.rmsprop(0.01, momentum=0.9), grads, theta0), grads, reference,
                    params=theta0)


@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.0), (False, 0.9), (True, 0.5)])
def test_rmsprop_matches_torch(centered, momentum):
    grads, theta0 = random_grads(50, seed=4), random_tree(np.random.default_rng(5))
    got = run_params_f64(optimizers.rmsprop(1e-2, centered=centered, momentum=momentum), grads, theta0)
    want = run_torch(lambda ps: torch.optim.RMSprop(ps, lr=1e-2, alpha=0.99, eps=1e-8, centered=centered,
                                                    momentum=momentum), theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_rmsprop_eps_in_sqrt_matches_optax():
    grads, theta0 = random_grads(30, seed=6), random_tree(np.random.default_rng(7))
    got = run_params_f64(optimizers.rmsprop(1e-2, decay=0.9, eps_in_sqrt=True), grads, theta0)
    want = run_params_f64(optax.rmsprop(1e-2, decay=0.9, eps=1e-8), grads, theta0)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="rmsprop: nesterov=True needs a momentum"):
        optimizers.rmsprop(1e-2, nesterov=True)
