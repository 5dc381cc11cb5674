"""Every optimizer in the package x every shared property.

Every declared optimizer (``tests/registry.py``: the rules' ``@declare_optimizer``, the wrappers
and the fused forms) is enrolled; the tests never branch on a name.
"""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers import random_tree
from registry import ALIASES, KWARGS, NAMES, make, other_value, scheduled_names

import optimizers
import schedules

def test_every_optimizer_is_enrolled():
    """Every public function whose first parameter is ``learning_rate`` is declared (so it joins the suites)."""
    takes_lr = sorted(n for n in optimizers.__all__
                      if next(iter(inspect.signature(getattr(optimizers, n)).parameters), None) == "learning_rate")
    assert not set(takes_lr) - set(ALIASES), "declare these with @declare_optimizer"
    assert all(getattr(optimizers, n, None) is not None for n in ALIASES), "declared but not exported"


def _steps(tx, params, grads, jit=True):
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def _apply(tx, grads, state, params):
    """One step by hand: ``(params + update, new state)``."""
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, u), state


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


GRADS = [_f32(random_tree(np.random.default_rng(k))) for k in range(8)]  # RAdam adapts from step 5
PARAMS = _f32(random_tree(np.random.default_rng(100)))


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager(name):
    jitted, _ = _steps(make(name), PARAMS, GRADS)
    eager, _ = _steps(make(name), PARAMS, GRADS, jit=False)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_inside_chain_with_clipping(name):
    def clip(g):
        norm = np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(g)))
        return jax.tree.map(lambda x: x * np.float32(min(1.0, 0.5 / norm)), g)

    chained, _ = _steps(optax.chain(optax.clip_by_global_norm(0.5), make(name)), PARAMS, GRADS)
    manual, _ = _steps(make(name), PARAMS, [clip(g) for g in GRADS])
    for a, b in zip(jax.tree.leaves(chained), jax.tree.leaves(manual)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_inside_inject_hyperparams(name):
    injected = optax.inject_hyperparams(lambda learning_rate: make(name, learning_rate=learning_rate))(
        learning_rate=1e-3)
    want, _ = _steps(make(name, learning_rate=1e-3), PARAMS, GRADS)
    got, state = _steps(injected, PARAMS, GRADS)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # A new learning rate set in the injected state is used at the next step, as if scheduled.
    state.hyperparams["learning_rate"] = jnp.full_like(state.hyperparams["learning_rate"], 2e-3)
    u, _ = jax.jit(injected.update)(GRADS[0], state, got)
    switched = make(name, learning_rate=lambda t: jnp.where(t < len(GRADS), 1e-3, 2e-3))
    p_sw, s_sw = _steps(switched, PARAMS, GRADS)
    u_sw, _ = jax.jit(switched.update)(GRADS[0], s_sw, p_sw)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_sw)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(jnp.tanh(nn.Dense(8)(x)))


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_flax_train_state(name):
    x, y = _data()
    model = _Mlp()
    params = model.init(jax.random.key(0), x)["params"]

    def loss(p):
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=make(name))
    step = jax.jit(lambda s: s.apply_gradients(grads=jax.grad(loss)(s.params)))
    tx, manual, opt_state = make(name), params, make(name).init(params)
    manual_step = jax.jit(lambda p, s: _apply(tx, jax.grad(loss)(p), s, p))
    for _ in range(3):
        state = step(state)
        manual, opt_state = manual_step(manual, opt_state)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(manual)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(loss(state.params)) != float(loss(params))


@pytest.mark.parametrize("name", NAMES)
def test_flax_nnx_optimizer(name):
    x, y = _data()
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(jnp.array, params)  # a copy, before the optimizer changes the model
    optimizer = nnx.Optimizer(model, make(name), wrt=nnx.Param)

    def loss(m):
        return jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def step(m, opt):
        opt.update(m, nnx.grad(loss)(m))

    tx = make(name)
    opt_state = tx.init(params)
    manual_step = jax.jit(lambda p, s: _apply(tx, jax.grad(lambda q: loss(nnx.merge(graphdef, q)))(p), s, p))
    for _ in range(3):
        step(model, optimizer)
        params, opt_state = manual_step(params, opt_state)
    got = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_keeps_dtype(name, dtype):
    with jax.enable_x64(dtype == "float64"):
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), PARAMS)
        grads = [jax.tree.map(lambda x: jnp.asarray(x, dtype), g) for g in GRADS]
        tx = make(name)
        state = tx.init(params)
        for g in grads:
            u, state = jax.jit(tx.update)(g, state, params)
            assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(u))
            assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(u))
            params = optax.apply_updates(params, u)
        assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(params))
        buffers = [x for x in jax.tree.leaves(state) if x.shape != ()]
        assert all(x.dtype == jnp.dtype(dtype) for x in buffers)


@pytest.mark.parametrize("name", NAMES)
def test_nested_empty_and_none_pytrees(name):
    params = {"a": [jnp.ones(3), (jnp.zeros((2, 2)), None)], "b": {"c": jnp.ones(())}, "d": None}
    grads = jax.tree.map(lambda x: 0.1 * x + 0.2, params)
    new, _ = _steps(make(name), params, [grads, grads])
    assert jax.tree.structure(new) == jax.tree.structure(params)
    assert new["d"] is None and new["a"][1][1] is None
    assert not np.allclose(new["a"][0], params["a"][0])
    empty, _ = _steps(make(name), {}, [{}, {}])
    assert empty == {}


CASES = [(n, h) for n in ALIASES for h in scheduled_names(n)]


@pytest.mark.parametrize("name,hyper", CASES)
def test_every_hyperparameter_can_be_a_schedule(name, hyper):
    default = inspect.signature(getattr(optimizers, name)).parameters[hyper].default
    v = KWARGS[name].get(hyper, default)
    v = 0.0 if v is None else v
    alt = other_value(v)
    sched = lambda t: jnp.where(t < 2, schedules.resolve(v, t), schedules.resolve(alt, t))  # noqa: E731
    tx_const, tx_sched = make(name, **{hyper: v}), make(name, **{hyper: sched})
    s_const, s_sched = tx_const.init(PARAMS), tx_sched.init(PARAMS)
    same = []
    for g in GRADS:
        u_const, s_const = jax.jit(tx_const.update)(g, s_const, PARAMS)
        u_sched, s_sched = jax.jit(tx_sched.update)(g, s_sched, PARAMS)
        same.append(all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(u_const), jax.tree.leaves(u_sched))))
    # Equal while the schedule gives the constant's value; different once it changes
    # (RAdam ignores b2 and eps until it rectifies, at step 5).
    assert same[:2] == [True, True] and not all(same), f"{hyper}: steps equal to the constant's: {same}"
    lr = optimizers.get_hyperparams(s_sched)["learning_rate"]
    want = schedules.resolve(alt if hyper == "learning_rate" else KWARGS[name]["learning_rate"], len(GRADS) - 1)
    np.testing.assert_allclose(lr, want, rtol=1e-6)


def test_a_broken_optimizer_fails_the_dtype_property(monkeypatch):
    """The suite can fail: Adam whose updates come back in float32 for bfloat16 params fails
    :func:`test_keeps_dtype` (a cast added to the end of the chain)."""
    broken = optax.chain(optimizers.adam(0.01), optax.stateless(lambda u, p: jax.tree.map(
        lambda x: x.astype(jnp.float32), u)))
    monkeypatch.setitem(globals(), "make", lambda name, **kw: broken)
    with pytest.raises(AssertionError):
        test_keeps_dtype("adam", "bfloat16")
    test_keeps_dtype("adam", "float32")  # the same optimizer is fine where the cast changes nothing
