import jax
import numpy as np
import optax
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _trace_reference(grads, mu, nesterov):
    m = np.zeros_like(grads[0], np.float64)
    for t, g in enumerate(grads):
        m = mu(t) * m + g
        yield g + mu(t) * m if nesterov else m


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("scheduled", [False, True])
def test_trace_matches_paper(nesterov, scheduled):
    mu = (lambda t: 0.5 + 0.4 * np.cos(t)) if scheduled else (lambda t: 0.9)
    grads = random_grads(25)
    tx = optimizers.trace(decay=(lambda t: 0.5 + 0.4 * jax.numpy.cos(t)) if scheduled else 0.9, nesterov=nesterov)
    check_reference(run_updates(tx, grads), grads, lambda gs: _trace_reference(gs, mu, nesterov))


def _sgd_reference(theta, grads, lr, mu, nesterov, wd):
    theta, m = np.array(theta, np.float64), np.zeros_like(theta, np.float64)
    for g in grads:
        g = g + wd * theta
        m = mu * m + g
        theta = theta - lr * ((g + mu * m) if nesterov else m) if mu else theta - lr * g
        yield theta


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0),
                                                  (0.9, True, 0.01), (0.5, False, 0.1)])
def test_sgd_matches_paper(momentum, nesterov, wd):
    grads, theta0 = random_grads(25, seed=1), random_tree(np.random.default_rng(2))
    got = run_params(optimizers.sgd(0.05, momentum, nesterov, weight_decay=wd), grads, theta0)
    check_reference(got, grads, lambda t0, gs: _sgd_reference(t0, gs, 0.05, momentum, nesterov, wd), params=theta0)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.9, False, 0.0), (0.9, True, 0.0), (0.9, True, 1e-2),
                                                  (0.0, False, 1e-2)])
def test_sgd_matches_torch(momentum, nesterov, wd):
    grads, theta0 = random_grads(50, seed=3), random_tree(np.random.default_rng(4))
    want = run_torch(lambda ps: torch.optim.SGD(ps, lr=0.03, momentum=momentum, nesterov=nesterov,
                                                weight_decay=wd), theta0, grads)
    got = run_params_f64(optimizers.sgd(0.03, momentum, nesterov, weight_decay=wd), grads, theta0)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-12)


@pytest.mark.parametrize("momentum,nesterov", [(None, False), (0.9, False), (0.9, True)])
def test_sgd_matches_optax(momentum, nesterov):
    grads, theta0 = random_grads(30, seed=5), random_tree(np.random.default_rng(6))
    got = run_params_f64(optimizers.sgd(0.02, momentum, nesterov), grads, theta0)
    want = run_params_f64(optax.sgd(0.02, momentum, nesterov), grads, theta0)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-12)


def test_trace_matches_optax():
    grads = random_grads(30, seed=7)
    with jax.enable_x64(True):
        got = run_updates(optimizers.trace(0.7, nesterov=True), grads, dtype=np.float64)
        want = run_updates(optax.trace(0.7, nesterov=True), grads, dtype=np.float64)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-12)


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="momentum"):
        optimizers.sgd(0.1, momentum=0.0, nesterov=True)
