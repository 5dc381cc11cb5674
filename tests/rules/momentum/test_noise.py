import jax
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, random_grads, random_tree, run_updates

import optimizers


def _draws(key, grads):
    """The standard normal draws of each step, taken the way the docstring says (split, then one draw per
    leaf with ``optax.tree.random_like``): the noise source, shared by the reference."""
    key = jax.random.key(key)
    out = []
    for g in grads:
        key, draw = jax.random.split(key)
        out.append(jax.tree.map(np.asarray, optax.tree.random_like(draw, jax.tree.map(np.float32, g))))
    return out


def _noisy_reference(grads, draws, eta, gamma):
    """Section 2 of Neelakantan et al. (2015): g_t + N(0, eta / (1 + t)^gamma), t = 0, 1, ..."""
    for t, (g, z) in enumerate(zip(grads, draws)):
        sigma = np.sqrt(eta / (1.0 + t) ** gamma)
        yield jax.tree.map(lambda a, b: a + sigma * np.asarray(b, np.float64), g, z)


@pytest.mark.parametrize("eta,gamma,key", [(0.01, 0.55, 0), (0.3, 1.0, 7), (0.5, 0.0, 3)])
def test_add_noise_matches_paper(eta, gamma, key):
    grads = random_grads(22, seed=1)
    got = run_updates(optimizers.add_noise(eta, gamma, key), grads)
    for g, w in zip(got, _noisy_reference(grads, _draws(key, grads), eta, gamma)):
        assert_trees_close(g, w, rtol=2e-6)


@pytest.mark.parametrize("key", [5, jax.random.key(5), jax.random.PRNGKey(5)])
def test_noisy_sgd_equals_optax_for_the_same_key(key):
    grads, theta = random_grads(20, seed=2), jax.tree.map(np.float32, random_tree(np.random.default_rng(3)))
    ours, theirs = optimizers.noisy_sgd(0.1, 0.2, 0.55, key), optax.noisy_sgd(0.1, 0.2, 0.55, jax.random.key(5))
    s1, s2 = ours.init(theta), theirs.init(theta)
    for g in grads:
        g = jax.tree.map(np.float32, g)
        u1, s1 = jax.jit(ours.update)(g, s1, theta)
        u2, s2 = jax.jit(theirs.update)(g, s2, theta)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_array_equal(a, b)  # the same draws, the same float32 operations


def test_seed_is_optax_spelling_of_key():
    grads = random_grads(3, seed=4)
    a = run_updates(optimizers.add_noise(0.1, 0.55, seed=9), grads)
    b = run_updates(optimizers.add_noise(0.1, 0.55, key=9), grads)
    assert_trees_close(a[-1], b[-1], rtol=0)
    with pytest.raises(ValueError, match="key"):
        optimizers.add_noise(0.1, 0.55, key=1, seed=1)


def test_noise_statistics():
    """Zero gradients: the noise of step t has mean 0 and variance eta / (1 + t)^gamma (4000 draws a step)."""
    eta, gamma = 0.5, 0.55
    tx, zero = optimizers.add_noise(eta, gamma, 11), {"w": np.zeros(4000, np.float32)}
    state, update = tx.init(zero), jax.jit(tx.update)
    first = None
    for t in range(20):
        u, state = update(zero, state, zero)
        u = np.asarray(u["w"], np.float64)
        var = eta / (1 + t) ** gamma
        assert abs(u.mean()) < 5 * np.sqrt(var / 4000)
        assert abs(u.var() / var - 1) < 5 * np.sqrt(2 / 4000)
        if first is None:
            first = u
        else:
            assert abs(np.corrcoef(first, u)[0, 1]) < 0.1  # a fresh draw at every step


def test_hyperparams_are_schedules():
    grads = random_grads(20, seed=5)
    eta = lambda t: 0.1 / (1 + t)  # noqa: E731
    got = run_updates(optimizers.add_noise(eta, 0.0, 2), grads)
    draws = _draws(2, grads)
    for t, (g, z, u) in enumerate(zip(grads, draws, got)):
        want = jax.tree.map(lambda a, b: a + np.sqrt(eta(t)) * b, g, z)
        assert_trees_close(u, want, rtol=2e-6)


@pytest.mark.parametrize("kwargs,name", [(dict(eta=-0.1), "eta"), (dict(gamma=-1.0), "gamma"),
                                         (dict(key="a"), "key")])
def test_bad_values_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.noisy_sgd(0.1, **kwargs)
