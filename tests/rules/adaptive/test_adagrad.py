import numpy as np
import pytest
import torch
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _adagrad_reference(grads, v0, eps):
    v = np.full_like(grads[0], v0, np.float64)
    for g in grads:
        v = v + g**2
        yield g / (np.sqrt(v) + eps)


@pytest.mark.parametrize("v0,eps", [(0.0, 1e-10), (0.1, 1e-3)])
def test_adagrad_matches_table(v0, eps):
    grads, theta0 = random_grads(25, seed=1), random_tree(np.random.default_rng(2))
    check_reference(run_updates(optimizers.scale_by_rss(v0, eps), grads), grads,
                    lambda gs: _adagrad_reference(gs, v0, eps))

    def reference(theta, gs):
        for u in _adagrad_reference(gs, v0, eps):
            theta = theta - 0.1 * u
            yield theta

    check_reference(run_params(optimizers.adagrad(0.1, v0, eps), grads, theta0), grads, reference, params=theta0)


@pytest.mark.parametrize("lr_decay,v0", [(0.0, 0.0), (0.01, 0.1)])
def test_adagrad_matches_torch(lr_decay, v0):
    grads, theta0 = random_grads(50, seed=3), random_tree(np.random.default_rng(4))
    lr = lambda t: 0.1 / (1 + t * lr_decay)  # noqa: E731  PyTorch's lr_decay as a schedule
    got = run_params_f64(optimizers.adagrad(lr, v0), grads, theta0)
    want = run_torch(lambda ps: torch.optim.Adagrad(ps, lr=0.1, lr_decay=lr_decay, initial_accumulator_value=v0),
                     theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)
