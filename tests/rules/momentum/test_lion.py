import jax
import numpy as np
import optax
import pytest
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_updates)

from optimizers.contract.hyperparams import get_hyperparams
from optimizers.rules.momentum.lion import lion, scale_by_lion


def _lion_reference(grads, b1, b2):
    m = np.zeros_like(grads[0], np.float64)
    for g in grads:
        yield np.sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g


def _with_zero_leaf(grads):
    """The gradients with the vector leaf all zero at every step (sign(0) = 0 must give no step)."""
    return [{**g, "dense": {**g["dense"], "b": np.zeros(3)}} for g in grads]


@pytest.mark.parametrize("b1,b2", [(0.9, 0.99), (0.5, 0.9), (0.0, 0.0)])
def test_scale_by_lion_matches_paper(b1, b2):
    grads = _with_zero_leaf(random_grads(25, seed=1))
    got = run_updates(scale_by_lion(b1, b2), grads)
    check_reference(got, grads, lambda gs: _lion_reference(gs, b1, b2))
    assert all(np.all(u["dense"]["b"] == 0) for u in got)


@pytest.mark.parametrize("wd", [0.0, 1.0])
def test_lion_matches_paper_program(wd):
    grads, theta0 = random_grads(25, seed=2), random_tree(np.random.default_rng(3))
    lr = 1e-3

    def reference(theta, gs):
        for u in _lion_reference(gs, 0.9, 0.99):
            theta = theta - lr * (u + wd * theta)
            yield theta

    check_reference(run_params(lion(lr, weight_decay=wd), grads, theta0), grads, reference, params=theta0)


def test_lion_defaults_are_the_tables():
    hp = get_hyperparams(lion(1e-3).init(jax.tree.map(np.float32, random_tree(np.random.default_rng(4)))))
    np.testing.assert_allclose([hp["b1"], hp["b2"], hp["weight_decay"]], [0.9, 0.99, 1.0], rtol=1e-7)


def _mask(params):
    return jax.tree.map(lambda x: np.ndim(x) >= 2, params)


@pytest.mark.parametrize("b1,b2,wd,mask", [(0.9, 0.99, 1e-3, None), (0.8, 0.95, 0.5, _mask), (0.9, 0.99, 0.0, None)])
def test_lion_matches_optax(b1, b2, wd, mask):
    grads, theta0 = random_grads(50, seed=5), random_tree(np.random.default_rng(6))
    got = run_params_f64(lion(3e-3, b1, b2, weight_decay=wd, mask=mask), grads, theta0)
    want = run_params_f64(optax.lion(3e-3, b1, b2, weight_decay=wd, mask=mask), grads, theta0)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)
