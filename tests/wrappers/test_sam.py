import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close

import optimizers
from optimizers.checkpoint import from_bytes, to_bytes

_RNG = np.random.default_rng(0)
A = _RNG.normal(size=(4, 4))
C = _RNG.normal(size=3)
THETA0 = {"w": _RNG.normal(size=4), "b": _RNG.normal(size=3)}


def _loss(p):
    return 0.5 * jnp.sum((A @ p["w"]) ** 2) + jnp.sum(jnp.cos(C * p["b"])) + 0.1 * jnp.sum(p["w"] ** 4)


def _grad_np(p):
    return {"w": A.T @ (A @ p["w"]) + 0.4 * p["w"] ** 3, "b": -C * np.sin(C * p["b"])}


def _sam_reference(theta, outer_steps, lr, rho, period=2):
    """Algorithm 1 of Foret et al. (2021), p = 2, SGD outer step; period - 1 ascent steps of rho g/|g| from w
    (the adversarial optimizer restarted each period), then w -= lr * grad at the last perturbed point.
    Yields the params after every call (the perturbed points too), as the transparent mode's calls."""
    for _ in range(outer_steps):
        adv = theta
        for _ in range(period - 1):
            g = _grad_np(adv)
            norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
            adv = {k: adv[k] + rho * g[k] / norm for k in adv}
            yield adv
        g = _grad_np(adv)
        theta = {k: theta[k] - lr * g[k] for k in theta}
        yield theta


def _run(tx, calls, dtype=np.float32, opaque=False):
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), THETA0)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(_loss)(p)
        extra = dict(grad_fn=lambda q, i: jax.grad(_loss)(q)) if opaque else {}
        u, s = tx.update(g, s, p, **extra)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(calls):
        params, state = step(params, state)
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float64), params))
    return out, state


@pytest.mark.parametrize("period", [2, 3])
def test_transparent_mode_matches_paper(period):
    got, _ = _run(optimizers.sam(optimizers.sgd(0.05), rho=0.1, sync_period=period), 11 * period)
    want = list(_sam_reference(THETA0, 11, 0.05, 0.1, period))
    for g, w in zip(got, want, strict=True):
        assert_trees_close(g, w, rtol=2e-5)


@pytest.mark.parametrize("period", [2, 3])
def test_opaque_mode_matches_paper(period):
    got, _ = _run(optimizers.sam(optimizers.sgd(0.05), rho=0.1, sync_period=period, opaque_mode=True), 22,
                  opaque=True)
    want = list(_sam_reference(THETA0, 22, 0.05, 0.1, period))[period - 1::period]
    for g, w in zip(got, want, strict=True):
        assert_trees_close(g, w, rtol=2e-5)


def _pair(opaque, period, reset):
    ours = optimizers.sam(optax.adam(0.01), optax.chain(optimizers.normalize(), optax.adam(0.05)), period, reset,
                          opaque)
    theirs = optax.contrib.sam(optax.adam(0.01), optax.chain(optax.contrib.normalize(), optax.adam(0.05)), period,
                               reset, opaque)
    return ours, theirs


@pytest.mark.parametrize("opaque,period,reset", [(False, 2, True), (False, 3, False), (True, 3, True),
                                                 (True, 2, False)])
def test_matches_optax(opaque, period, reset):
    ours, theirs = _pair(opaque, period, reset)
    with jax.enable_x64(True):
        a, _ = _run(ours, 21, np.float64, opaque)
        b, _ = _run(theirs, 21, np.float64, opaque)
    for x, y in zip(a, b):
        assert_trees_close(x, y, rtol=1e-12)


def test_default_adversary_is_normalized_sgd():
    with jax.enable_x64(True):
        a, _ = _run(optimizers.sam(optax.sgd(0.05)), 20, np.float64)
        b, _ = _run(optax.contrib.sam(optax.sgd(0.05), optax.chain(optax.contrib.normalize(), optax.sgd(0.05))),
                    20, np.float64)
    for x, y in zip(a, b):
        assert_trees_close(x, y, rtol=1e-12)


def test_opaque_mode_needs_grad_fn():
    tx = optimizers.sam(optimizers.sgd(0.1), opaque_mode=True)
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="grad_fn"):
        tx.update(p, tx.init(p), p)


def test_inject_hyperparams_and_checkpoint_round_trip():
    make = lambda learning_rate: optimizers.sam(optimizers.sgd(learning_rate), rho=0.1)  # noqa: E731
    plain, _ = _run(make(0.05), 6)
    injected, state = _run(optax.inject_hyperparams(make)(learning_rate=0.05), 6)
    for a, b in zip(plain, injected):
        assert_trees_close(a, b, rtol=1e-7)
    restored = from_bytes(state, to_bytes(state))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,name", [(dict(sync_period=0), "sync_period"), (dict(sync_period=1.5), "sync_period"),
                                         (dict(rho=-0.1), "rho"), (dict(batch_axis_name=3), "batch_axis_name")])
def test_bad_values_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.sam(optimizers.sgd(0.1), **kwargs)
