import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import check_reference, random_grads, random_tree, run_updates

import optimizers


def _decay_reference(grads, theta, wd, on):
    for t, g in enumerate(grads):
        yield g + wd(t) * theta if on else g


@pytest.mark.parametrize("mask_kind", ["none", "tree", "callable"])
def test_add_decayed_weights_matches_formula(mask_kind):
    grads, params = random_grads(20, seed=1), random_tree(np.random.default_rng(2))
    wd = lambda t: 0.1 / (1 + t)  # noqa: E731
    tree_mask = {"dense": {"w": True, "b": False}, "blocks": [True, False], "scale": False}
    mask = {"none": None, "tree": tree_mask, "callable": lambda p: jax.tree.map(lambda x: x.ndim > 1, p)}[mask_kind]
    want_mask = jax.tree.map(lambda x: True, params) if mask_kind == "none" else (
        tree_mask if mask_kind == "tree" else jax.tree.map(lambda x: x.ndim > 1, params))
    got = run_updates(optimizers.add_decayed_weights(wd, mask), grads, params=params)
    on = jax.tree.leaves(want_mask)
    starts = jax.tree.leaves(params)
    for i, (leaf_on, theta) in enumerate(zip(on, starts)):
        seq = [jax.tree.leaves(g)[i] for g in grads]
        want = list(_decay_reference(seq, np.float32(theta).astype(np.float64), lambda t: np.float32(wd(t)), leaf_on))
        for step, w in enumerate(want):
            np.testing.assert_allclose(jax.tree.leaves(got[step])[i], w, rtol=2e-6, atol=1e-6)


def test_add_decayed_weights_needs_params():
    tx = optimizers.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))


@pytest.mark.parametrize("flip_sign", [True, False])
def test_scale_by_learning_rate(flip_sign):
    grads = random_grads(20, seed=3)
    lr = lambda t: 0.5**t  # noqa: E731
    got = run_updates(optimizers.scale_by_learning_rate(lr, flip_sign=flip_sign), grads)
    sign = -1 if flip_sign else 1
    check_reference(got, grads, lambda gs: (sign * 0.5**t * g for t, g in enumerate(gs)))


def test_scale_by_learning_rate_matches_optax():
    grads = random_grads(5, seed=4)
    got = run_updates(optimizers.scale_by_learning_rate(0.3), grads)
    want = run_updates(optax.scale_by_learning_rate(0.3), grads)
    for g, w in zip(got, want):
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
            np.testing.assert_array_equal(a, b)
