import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, random_grads, random_tree, run_params, run_updates

from optimizers.rules.adaptive.amos import amos, scale_by_amos

ETA = {"dense": {"w": 0.3, "b": 0.5}, "blocks": [0.2, 1.0], "scale": 0.7}
GRANULARITIES = {
    "element": lambda ndim: (),
    "leaf": lambda ndim: tuple(range(ndim)),
    "last_axis": lambda ndim: tuple(range(ndim - 1)),
    "first_axis": lambda ndim: (0,) if ndim >= 2 else (),
}


def _amos_reference(theta, grads, xi, eta, beta, c, d, axes, eps=2.0**-125, momentum=0.0, move=True):
    """Algorithm 1 as in the authors' jestimator code; yields theta_t (or, with move=False,
    the step divided by xi at fixed theta)."""
    v = b = np.zeros([1 if i in axes else n for i, n in enumerate(np.shape(theta))])
    avg = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g2 = np.mean(g**2, axis=axes, keepdims=True)
        v = beta * v + (1 - beta) * g2
        v_hat = np.maximum(v, eps) / (1 - beta**t)
        c_t = (1 + c * np.sqrt(xi) * b) ** -0.5
        d_t = 1 / (1 + d * np.sqrt(xi * eta) * b)
        gamma = c_t * xi**2 * g2 / v_hat
        step = d_t * (xi * eta * g / np.sqrt(v_hat) + 0.5 * gamma * theta)
        b = b + gamma * (1 + b)
        avg = momentum * avg + (1 - momentum) * step
        if move:
            theta = theta - avg
            yield theta
        else:
            yield avg / xi


def _check_leaves(got, grads, theta0, reference):
    """``reference(theta, leaf_grads, eta, ndim)`` per leaf, with that leaf's eta from ETA."""
    seqs = list(zip(*[jax.tree.leaves(g) for g in grads]))
    for i, (seq, theta, eta) in enumerate(zip(seqs, jax.tree.leaves(theta0), jax.tree.leaves(ETA), strict=True)):
        for step, want in enumerate(reference(theta, list(seq), eta, np.ndim(theta))):
            assert_close(jax.tree.leaves(got[step])[i], want)


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("xi,beta,c,d", [(0.1, 0.999, 0.25, 0.25), (0.5, 0.9, 1.0, 0.1)])
def test_scale_by_amos_matches_algorithm_1(granularity, xi, beta, c, d):
    grads, theta0 = random_grads(25, seed=1), random_tree(np.random.default_rng(2))
    given = granularity
    if granularity == "first_axis":  # a function: share v and b over the first axis of matrices
        given = lambda leaf: (0,) if leaf.ndim >= 2 else ()  # noqa: E731
    got = run_updates(scale_by_amos(xi, ETA, beta, c, d, given), grads, params=theta0)
    axes = GRANULARITIES[granularity]
    _check_leaves(got, grads, theta0,
                  lambda th, gs, e, n: _amos_reference(th, gs, xi, e, beta, c, d, axes(n), move=False))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_amos_matches_algorithm_1(momentum):
    grads, theta0 = random_grads(30, seed=3), random_tree(np.random.default_rng(4))
    eta_fn = lambda params: jax.tree.map(lambda _, e: e, params, ETA)  # noqa: E731  a function of the params
    got = run_params(amos(0.2, eta_fn, beta=0.98, granularity="leaf", momentum=momentum), grads, theta0)
    _check_leaves(got, grads, theta0, lambda th, gs, e, n: _amos_reference(
        th, gs, 0.2, e, 0.98, 0.25, 0.25, tuple(range(n)), momentum=momentum))


def test_slots_have_the_reduced_shapes():
    params = {"kernel": jnp.zeros((1024, 512)), "bias": jnp.zeros(512), "s": jnp.zeros(())}
    shapes = {g: jax.tree.map(jnp.shape, scale_by_amos(0.1, 0.5, granularity=g).init(params).v)
              for g in ("element", "leaf", "last_axis")}
    assert shapes["element"] == {"kernel": (1024, 512), "bias": (512,), "s": ()}
    assert shapes["leaf"] == {"kernel": (1, 1), "bias": (1,), "s": ()}
    assert shapes["last_axis"] == {"kernel": (1, 512), "bias": (512,), "s": ()}


def test_zero_gradients_and_zero_learning_rate_give_zero_steps():
    theta = jax.tree.map(np.float32, random_tree(np.random.default_rng(5)))
    zeros = jax.tree.map(np.zeros_like, theta)
    for tx, g in [(scale_by_amos(0.1, 0.5), zeros), (amos(0.0, 0.5, momentum=0.9), theta)]:
        u, _ = jax.jit(tx.update)(g, tx.init(theta), theta)
        assert all(np.all(x == 0) for x in jax.tree.leaves(u))


def test_update_needs_params():
    tx = scale_by_amos(0.1, 0.5)
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(3), tx.init(jnp.ones(3)))
