import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, random_grads, random_tree, run_params, run_updates

from optimizers.rules.momentum.funnelled_sgdm import funnelled_sgdm, scale_by_funnelled_sgdm


def _funnelled_reference(grads, eta, mu, beta, gamma_p, gamma_s):
    """the update table of “Optimization algorithms in deep learning”; ``grads[t]`` is the list of leaves at step t. Yields s_t u_t per leaf."""
    p = [np.ones_like(g, np.float64) for g in grads[0]]
    m = [np.zeros_like(g, np.float64) for g in grads[0]]
    u = [np.zeros_like(g, np.float64) for g in grads[0]]
    s = 1.0
    for gs in grads:
        s = s * np.exp(gamma_s * sum(np.sum(a * g) for a, g in zip(u, gs)))  # one global scale
        p = [q * np.exp(gamma_p * a * g) for q, a, g in zip(p, m, gs)]
        m = [beta * a + (1 - beta) * g for a, g in zip(m, gs)]
        u = [mu * a + eta * q * g for a, q, g in zip(u, p, gs)]
        yield [s * a for a in u]


def _leaves(trees):
    return [jax.tree.leaves(t) for t in trees]


CASES = [(0.1, 0.9, 0.9, 0.1, 0.1), (0.05, 0.5, 0.8, 0.5, 0.3), (0.1, 0.0, 0.0, 0.0, 0.0)]


@pytest.mark.parametrize("eta,mu,beta,gamma_p,gamma_s", CASES)
def test_scale_by_funnelled_sgdm_matches_table(eta, mu, beta, gamma_p, gamma_s):
    grads = random_grads(25, seed=1)
    tx = scale_by_funnelled_sgdm(eta, mu, beta, gamma_p, gamma_s)
    got = run_updates(tx, grads)
    for step, want in zip(_leaves(got), _funnelled_reference(_leaves(grads), eta, mu, beta, gamma_p, gamma_s)):
        for a, b in zip(step, want, strict=True):
            assert_close(a, b / eta)


def test_gains_and_scale_move():
    grads = random_grads(25, seed=1)
    state = scale_by_funnelled_sgdm(0.1, 0.9, 0.9, 0.5, 0.3).init(jax.tree.map(np.float32, grads[0]))
    update = jax.jit(scale_by_funnelled_sgdm(0.1, 0.9, 0.9, 0.5, 0.3).update)
    for g in grads:
        _, state = update(jax.tree.map(np.float32, g), state)
    gains = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.gain)])
    assert abs(float(state.scale) - 1) > 1e-2 and np.ptp(gains) > 0.1


def test_funnelled_sgdm_matches_table():
    grads, theta0 = random_grads(25, seed=2), random_tree(np.random.default_rng(3))
    got = run_params(funnelled_sgdm(0.05, 0.9, 0.9, 0.2, 0.1), grads, theta0)
    theta = jax.tree.leaves(theta0)
    for step, u in zip(_leaves(got), _funnelled_reference(_leaves(grads), 0.05, 0.9, 0.9, 0.2, 0.1)):
        theta = [th - a for th, a in zip(theta, u)]
        for a, b in zip(step, theta, strict=True):
            assert_close(a, b)


@pytest.mark.parametrize("sign,grow", [(1.0, True), (-1.0, False)])
def test_gain_grows_when_gradient_agrees_with_momentum(sign, grow):
    """A steady gradient (sign=+1: the steps are too short) raises p and s; one that flips
    every step (sign=-1: the steps overshoot) lowers them."""
    tx = scale_by_funnelled_sgdm(0.1, 0.5, 0.5, 0.5, 0.5)
    state = tx.init(jnp.zeros(2))
    for t in range(6):
        _, state = tx.update(jnp.full(2, sign**t), state)
    assert np.all((np.asarray(state.gain) > 1) == grow) and (float(state.scale) > 1) == grow


def test_adaptation_speeds_up_a_too_small_learning_rate():
    """With the table's signs the gains descend: on 0.5 w^2 from w = 1, a learning rate 100x too
    small gets much further than plain momentum SGD (gamma_p = gamma_s = 0)."""
    def final_loss(tx):
        w, state = jnp.ones(3), tx.init(jnp.ones(3))
        for _ in range(60):
            u, state = tx.update(w, state, w)
            w = optax.apply_updates(w, u)
        return float(0.5 * jnp.sum(w**2))

    plain = final_loss(funnelled_sgdm(1e-3, gamma_p=0, gamma_s=0))
    adapted = final_loss(funnelled_sgdm(1e-3, 0.9, 0.9, 1.0, 1.0))
    assert adapted < 0.5 * plain
