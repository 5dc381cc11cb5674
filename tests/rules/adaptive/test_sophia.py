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


def _loss(p):
    """A quadratic in w and cosines in b: the Hessian diagonal of b changes sign."""
    return 0.5 * jnp.sum((A @ p["w"]) ** 2) + jnp.sum(jnp.cos(C * p["b"]))


def _grad_np(p):
    return {"w": A.T @ (A @ p["w"]), "b": -C * np.sin(C * p["b"])}


def _hvp_np(p, u):
    return {"w": A.T @ (A @ u["w"]), "b": -(C**2) * np.cos(C * p["b"]) * u["b"]}


def _signs(key, params, n):
    """The Rademacher vectors of n refreshes, drawn as the docstring says (split, then optax.tree.random_like)."""
    key, out = jnp.asarray(key), []
    for _ in range(n):
        key, sub = jax.random.split(key)
        out.append(jax.tree.map(np.asarray, optax.tree.random_like(sub, params, jax.random.rademacher, jnp.float32)))
    return out


def _sophia_reference(theta, steps, lr, b1, b2, eps, gamma, rho, k, wd, signs, form="paper", clipped=None):
    """Algorithm 3 of Liu et al. (2023): h refreshed at t = 1 (mod k) from u * (H u), then
    theta -= lr (clip(m / max(gamma h, eps), -rho, rho) + wd theta); form="optax": m bias-corrected, the old h."""
    m = {n: np.zeros_like(x) for n, x in theta.items()}
    h = {n: np.zeros_like(x) for n, x in theta.items()}
    draws = iter(signs)
    for t in range(1, steps + 1):
        g = _grad_np(theta)
        m = {n: b1 * m[n] + (1 - b1) * g[n] for n in m}
        old = h
        if (t - 1) % k == 0:
            u = next(draws)
            hu = _hvp_np(theta, u)
            h = {n: b2 * h[n] + (1 - b2) * u[n] * hu[n] for n in h}
        used, c1 = (old, 1 - b1**t) if form == "optax" else (h, 1.0)
        step = {}
        for n in m:
            r = m[n] / c1 / np.maximum(gamma * used[n], eps)
            if clipped is not None:
                clipped.update(np.abs(r) > rho)
            step[n] = np.clip(r, -rho, rho)
        theta = {n: theta[n] - lr * (step[n] + wd * theta[n]) for n in theta}
        yield theta


def _run(tx, theta, steps, dtype=np.float32):
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), theta)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(_loss)(p), s, p, obj_fn=_loss)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float64), params))
    return out, state


THETA0 = {"w": _RNG.normal(size=4), "b": _RNG.normal(size=3) * 2}
CASES = {  # lr, b1, b2, eps, gamma, rho, k, wd, form
    "paper": (0.05, 0.9, 0.9, 1e-3, 1.0, 1.0, 3, 1e-2, "paper"),
    "paper, k=1, rho=0.5": (0.05, 0.8, 0.5, 1e-2, 0.5, 0.5, 1, 0.0, "paper"),
    "optax": (0.05, 0.9, 0.9, 1e-3, 1.0, 1.0, 4, 1e-2, "optax"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sophia_matches_paper(case):
    lr, b1, b2, eps, gamma, rho, k, wd, form = CASES[case]
    steps = 24
    signs = _signs(jax.random.PRNGKey(0), jax.tree.map(np.float32, THETA0), steps)
    tx = optimizers.sophia(lr, b1, b2, eps, wd, gamma=gamma, clip_threshold=rho, update_interval=k, form=form)
    got, _ = _run(tx, THETA0, steps)
    clipped = set()
    want = list(_sophia_reference(THETA0, steps, lr, b1, b2, eps, gamma, rho, k, wd, signs, form, clipped))
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=5e-5)
    assert clipped == {True, False}  # both sides of the clip


@pytest.mark.parametrize("kwargs", [dict(), dict(update_interval=1, b1=0.5, gamma=0.5, weight_decay=0.0),
                                    dict(clip_threshold=None, gamma=5.0)])
def test_optax_form_matches_optax(kwargs):
    with jax.enable_x64(True):
        ours, _ = _run(optimizers.sophia(0.01, form="optax", **kwargs), THETA0, 21, np.float64)
        theirs, _ = _run(optax.contrib.sophia(0.01, **kwargs), THETA0, 21, np.float64)
    for a, b in zip(ours, theirs):
        assert_trees_close(a, b, rtol=1e-12)


def test_paper_form_differs_from_optax():
    with jax.enable_x64(True):
        ours, _ = _run(optimizers.sophia(0.01, b2=0.1, gamma=10.0), THETA0, 12, np.float64)
        theirs, _ = _run(optax.contrib.sophia(0.01, b2=0.1, gamma=10.0), THETA0, 12, np.float64)
    assert not np.allclose(ours[-1]["w"], theirs[-1]["w"], rtol=1e-6)


def test_objective_is_required():
    tx = optimizers.sophia(0.01)
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="obj_fn"):
        tx.update(p, tx.init(p), p)


def test_inject_hyperparams_and_checkpoint_round_trip():
    plain, _ = _run(optimizers.sophia(0.01, gamma=1.0, update_interval=2), THETA0, 6)
    injected, state = _run(optax.inject_hyperparams(optimizers.sophia)(learning_rate=0.01, gamma=1.0,
                                                                        update_interval=2), THETA0, 6)
    for a, b in zip(plain, injected):
        assert_trees_close(a, b, rtol=1e-7)
    restored = from_bytes(state, to_bytes(state))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,name", [(dict(b1=1.0), "b1"), (dict(b2=-0.1), "b2"), (dict(eps=0.0), "eps"),
                                         (dict(gamma=0.0), "gamma"), (dict(clip_threshold=0.0), "clip_threshold"),
                                         (dict(update_interval=0), "update_interval"),
                                         (dict(update_interval=1.5), "update_interval"),
                                         (dict(weight_decay=-1.0), "weight_decay"), (dict(form="x"), "form")])
def test_bad_values_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.sophia(0.01, **kwargs)
