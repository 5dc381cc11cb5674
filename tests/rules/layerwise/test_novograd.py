import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_updates)

from optimizers.rules.layerwise.novograd import novograd, scale_by_novograd


def _novograd_reference(w, grads, b1, b2, eps, wd):
    """NovoGrad, Algorithm 1 (and the update table of “Optimization algorithms in deep learning”): no eps at the first step."""
    m = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        norm2 = np.sum(g**2)
        if t == 1:
            v = norm2
            m = (g / np.sqrt(v) if v > 0 else 0 * g) + wd * w
        else:
            v = b2 * v + (1 - b2) * norm2
            m = b1 * m + g / (np.sqrt(v) + eps) + wd * w
        yield m


def _grads(steps, seed, zero_first=False):
    """Random gradients; with ``zero_first`` the bias's first two gradients are zero (v = 0)."""
    grads = random_grads(steps, seed=seed)
    if zero_first:
        for g in grads[:2]:
            g["dense"]["b"] = np.zeros_like(g["dense"]["b"])
    return grads


@pytest.mark.parametrize("b1,b2,eps,wd,zero_first", [
    (0.9, 0.25, 1e-8, 0.0, False),  # the table's defaults
    (0.95, 0.98, 1e-3, 0.01, False),  # the paper's ResNet-50 moments, a large eps
    (0.9, 0.25, 1e-8, 0.1, True),
])
def test_scale_by_novograd_matches_paper(b1, b2, eps, wd, zero_first):
    grads, params = _grads(25, seed=1, zero_first=zero_first), random_tree(np.random.default_rng(2))
    got = run_updates(scale_by_novograd(b1, b2, eps, weight_decay=wd), grads, params=params)
    check_reference(got, grads, lambda w, gs: _novograd_reference(w, gs, b1, b2, eps, wd), params=params)


def test_novograd_matches_paper():
    grads, theta0 = _grads(30, seed=3, zero_first=True), random_tree(np.random.default_rng(4))

    def reference(theta, gs):
        # The decay uses the current weights, so the loop is written out with them.
        m = np.zeros_like(theta)
        for t, g in enumerate(gs, start=1):
            norm2 = np.sum(g**2)
            v = norm2 if t == 1 else 0.25 * v + 0.75 * norm2
            den = np.sqrt(v) + (0.0 if t == 1 else 1e-8)
            m = 0.9 * m + (g / den if den > 0 else 0 * g) + 0.01 * theta
            theta = theta - 0.02 * m
            yield theta

    got = run_params(novograd(0.02, weight_decay=0.01), grads, theta0)
    check_reference(got, grads, reference, params=theta0)


def test_scheduled_hyperparameters():
    grads, params = _grads(20, seed=5), random_tree(np.random.default_rng(6))
    tx = scale_by_novograd(b1=lambda t: 0.5 + 0.4 * jnp.cos(t), weight_decay=lambda t: 0.01 * t)

    def reference(w, gs):
        m = np.zeros_like(w)
        for t, g in enumerate(gs):
            norm2 = np.sum(g**2)
            v = norm2 if t == 0 else 0.25 * v + 0.75 * norm2
            m = (0.5 + 0.4 * np.cos(t)) * m + g / (np.sqrt(v) + (1e-8 if t else 0.0)) + 0.01 * t * w
            yield m

    check_reference(run_updates(tx, grads, params=params), grads, reference, params=params)


def test_matches_optax():
    """50 steps in float64. optax adds eps at the first step too; eps=1e-30 makes that vanish."""
    grads, theta0 = random_grads(50, seed=7), random_tree(np.random.default_rng(8))
    got = run_params_f64(novograd(0.01, 0.9, 0.5, 1e-30, weight_decay=0.01), grads, theta0)
    want = run_params_f64(optax.novograd(0.01, 0.9, 0.5, 1e-30, weight_decay=0.01), grads, theta0)
    for g, w in zip(got, want, strict=True):
        assert_trees_close(g, w, rtol=1e-10)


def test_first_step_eps_is_the_only_difference_from_optax():
    """With eps=1e-6 optax's first update is g / (||g|| + eps): smaller by the factor ||g|| / (||g|| + eps)."""
    grads, theta0 = random_grads(2, seed=9), random_tree(np.random.default_rng(10))
    with jax.enable_x64(True):
        ours = run_updates(scale_by_novograd(eps=1e-6), grads, theta0, dtype=np.float64)[0]
        theirs = run_updates(optax.scale_by_novograd(eps=1e-6), grads, theta0, dtype=np.float64)[0]
    for a, b, g in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(grads[0]), strict=True):
        norm = np.sqrt(np.sum(g**2))
        np.testing.assert_allclose(b / a, norm / (norm + 1e-6), rtol=1e-12)
        assert np.all(a != b)


def test_zero_gradient_gives_no_nan():
    params = {"w": jnp.ones((3, 2)), "s": jnp.zeros(())}
    tx = novograd(0.1, weight_decay=0.1)
    state = tx.init(params)
    u, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    np.testing.assert_allclose(u["w"], -0.01)  # only the decay: -lr * wd * w
    np.testing.assert_array_equal(u["s"], 0.0)
    u, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state, params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))


def test_second_moment_is_one_scalar_per_leaf():
    params = {"w": jnp.ones((1024, 512)), "b": jnp.ones(512), "s": jnp.ones(())}
    state = scale_by_novograd().init(params)
    assert all(x.shape == () for x in jax.tree.leaves(state.nu))
    assert jax.tree.map(jnp.shape, state.mu) == jax.tree.map(jnp.shape, params)


def test_bfloat16():
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), random_tree(np.random.default_rng(11)))
    tx = novograd(0.01)
    state = tx.init(params)
    for g in random_grads(3, seed=12):
        u, state = jax.jit(tx.update)(jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g), state, params)
        assert all(x.dtype == jnp.bfloat16 and np.all(np.isfinite(np.float32(x))) for x in jax.tree.leaves(u))


def test_needs_params():
    tx = scale_by_novograd()
    with pytest.raises(ValueError, match="params"):
        tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))
