import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

import optimizers
from optimizers.checkpoint import from_bytes, to_bytes

A = {"w": np.diag([1.0, 3.0, 0.5, 2.0]), "b": np.array([2.0, 0.3, 1.0])}


def _loss(p):
    """A least-squares loss with its minimum 0 at p = 1: f* = 0 is exact."""
    return 0.5 * (jnp.sum((A["w"] @ (p["w"] - 1.0)) ** 2) + jnp.sum(A["b"] * (p["b"] - 1.0) ** 2))


def _loss_np(p):
    return 0.5 * (np.sum((A["w"] @ (p["w"] - 1.0)) ** 2) + np.sum(A["b"] * (p["b"] - 1.0) ** 2))


def _grad_np(p):
    return {"w": A["w"].T @ (A["w"] @ (p["w"] - 1.0)), "b": A["b"] * (p["b"] - 1.0)}


def _polyak_reference(theta, steps, max_lr, s, f_min, eps, variant, branches):
    """Loizou et al. (2021), SPS_max, in optax's chain: step = min(gap / (|s g|^2 + eps), max_lr), theta -= s step g."""
    for _ in range(steps):
        f, g = _loss_np(theta), _grad_np(theta)
        gap = max(f - f_min, 0.0) if variant == "sps+" else f - f_min
        den = s**2 * sum(np.sum(x**2) for x in g.values()) + eps
        capped = gap / den > max_lr
        branches.add(capped)
        step = 0.0 if den <= np.finfo(np.float64).eps else min(gap / den, max_lr)
        theta = {k: theta[k] - s * step * g[k] for k in theta}
        yield theta


def _run(tx, theta, steps, dtype=np.float32):
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), theta)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(_loss)(p)
        u, s = tx.update(g, s, p, value=value)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float64), params))
    return out, state


# (max_lr, scaling, f_min, eps, variant): the cap is hit early, the Polyak ratio later
CASES = [(0.2, 1.0, 0.0, 0.0, "sps"), (0.5, 0.5, -0.5, 1e-3, "sps"), (5.0, 1.0, 0.2, 0.0, "sps+"),
         (5.0, 2.0, 0.1, 0.0, "sps")]


@pytest.mark.parametrize("max_lr,s,f_min,eps,variant", CASES)
def test_polyak_sgd_matches_paper(max_lr, s, f_min, eps, variant):
    theta0 = {"w": np.random.default_rng(1).normal(size=4) * 3, "b": np.random.default_rng(2).normal(size=3) * 3}
    got, _ = _run(optimizers.polyak_sgd(max_lr, s, f_min, eps, variant), theta0, 22)
    branches = set()
    want = list(_polyak_reference(theta0, 22, max_lr, s, f_min, eps, variant, branches))
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=2e-5)
    if max_lr < 1:
        assert branches == {True, False}  # both sides of the min


def test_sps_plus_takes_no_step_below_f_min():
    """f < f*: SPS steps backwards (a negative gap), SPS+ not at all."""
    theta0 = {"w": np.full(4, 1.01), "b": np.full(3, 1.01)}
    plus, _ = _run(optimizers.polyak_sgd(1.0, f_min=1.0, variant="sps+"), theta0, 1)
    plain, _ = _run(optimizers.polyak_sgd(1.0, f_min=1.0), theta0, 1)
    np.testing.assert_allclose(plus[0]["w"], theta0["w"], rtol=1e-7)
    assert np.all(np.abs(plain[0]["w"] - 1.0) > 0.01)


def test_zero_gradient_takes_no_step():
    tx = optimizers.polyak_sgd()
    p = {"w": jnp.ones(3)}
    u, _ = tx.update({"w": jnp.zeros(3)}, tx.init(p), p, value=jnp.float32(2.0))
    np.testing.assert_array_equal(u["w"], 0.0)


@pytest.mark.parametrize("case", CASES)
def test_matches_optax(case):
    max_lr, s, f_min, eps, variant = case
    theta0 = {"w": np.random.default_rng(3).normal(size=4), "b": np.random.default_rng(4).normal(size=3)}
    with jax.enable_x64(True):
        ours, _ = _run(optimizers.polyak_sgd(max_lr, s, f_min, eps, variant), theta0, 20, np.float64)
        theirs, _ = _run(optax.polyak_sgd(max_lr, s, f_min, eps, variant), theta0, 20, np.float64)
    for a, b in zip(ours, theirs):
        assert_trees_close(a, b, rtol=1e-12)


def test_inside_a_chain_value_reaches_it():
    """optax.chain forwards value= to the Polyak step; the norm is of the clipped update."""
    theta0 = {"w": np.full(4, 3.0), "b": np.full(3, 3.0)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optimizers.polyak_sgd(10.0))
    got, _ = _run(tx, theta0, 1)
    g = _grad_np(theta0)
    norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    step = min(_loss_np(theta0) / 1.0, 10.0)  # the clipped update has norm 1
    assert_trees_close(got[0], {k: theta0[k] - step * g[k] / norm for k in g}, rtol=2e-6)


def test_value_is_required():
    tx = optimizers.polyak_sgd()
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="value"):
        tx.update(p, tx.init(p), p)


def test_inject_hyperparams_and_checkpoint_round_trip():
    theta0 = {"w": np.full(4, 2.0), "b": np.full(3, -1.0)}
    plain, _ = _run(optimizers.polyak_sgd(0.3, 0.5), theta0, 6)
    injected, state = _run(optax.inject_hyperparams(optimizers.polyak_sgd)(max_learning_rate=0.3, scaling=0.5),
                           theta0, 6)
    for a, b in zip(plain, injected):
        assert_trees_close(a, b, rtol=1e-7)
    restored = from_bytes(state, to_bytes(state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,name", [(dict(max_learning_rate=0.0), "max_learning_rate"),
                                         (dict(scaling=-1.0), "scaling"), (dict(eps=-1.0), "eps"),
                                         (dict(variant="sps++"), "variant"), (dict(f_min=float("nan")), "f_min")])
def test_bad_values_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.polyak_sgd(**kwargs)
