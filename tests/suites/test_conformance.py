"""Every optimizer in the package x every shared property.

Every declared optimizer (``tests/registry.py``: the rules' ``@declare_optimizer``, the wrappers
and the fused forms) is enrolled; the tests never branch on a name.
"""

import functools
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
from registry import ALIASES, CHAIN_NAMES, KWARGS, NAMES, UNDECLARED, make, other_value, scheduled_names

import optimizers
import schedules

def test_every_optimizer_is_enrolled():
    """Every public function whose first parameter is ``learning_rate`` is declared (so it joins the suites)."""
    takes_lr = sorted(n for n in optimizers.__all__ if not n.startswith("scale_by_")  # transforms: optax's order
                      if next(iter(inspect.signature(getattr(optimizers, n)).parameters), None) == "learning_rate")
    assert not set(takes_lr) - set(ALIASES) - set(UNDECLARED), "declare these with @declare_optimizer"
    assert not set(UNDECLARED) & set(ALIASES)
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


def _stacked(grads):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *grads)


def _scan_steps(tx, params, grads):
    """``(params, state)`` after a step of ``tx`` per gradient of the stacked ``grads`` (traceable)."""
    def body(carry, g):
        return _apply(tx, g, carry[1], carry[0]), None

    return jax.lax.scan(body, (params, tx.init(params)), grads)[0]


@functools.cache
def _compiled_run(name):
    """``name``'s whole run on PARAMS's tree as one compiled program, built once for every test here
    that runs ``make(name)`` on it (its gradients are an argument)."""
    tx = make(name)
    return jax.jit(lambda grads: _scan_steps(tx, PARAMS, grads))


@pytest.mark.parametrize("name", NAMES)
def test_float32_run_stays_float32_and_moves(name):
    """The compiled run keeps float32 updates and state for float32 params, and moves the params
    (the other dtypes: :func:`test_keeps_dtype`; compiled against eager on drawn trees:
    ``test_properties.py``'s ``test_finite_and_jit_matches_eager``)."""
    jitted, state = _compiled_run(name)(_stacked(GRADS))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(jitted))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state) if x.shape != ())
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jitted))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(PARAMS)))


@pytest.mark.parametrize("name", NAMES)
def test_inside_chain_with_clipping(name):
    def clip(g):
        norm = np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(g)))
        return jax.tree.map(lambda x: x * np.float32(min(1.0, 0.5 / norm)), g)

    chained, _ = _steps(optax.chain(optax.clip_by_global_norm(0.5), make(name)), PARAMS, GRADS)
    manual, _ = _compiled_run(name)(_stacked([clip(g) for g in GRADS]))
    for a, b in zip(jax.tree.leaves(chained), jax.tree.leaves(manual)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


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

    tx = make(name)

    @jax.jit  # both runs in one program: one compilation
    def run(params):
        state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
        manual, opt_state = params, tx.init(params)
        for _ in range(3):
            state = state.apply_gradients(grads=jax.grad(loss)(state.params))
            manual, opt_state = _apply(tx, jax.grad(loss)(manual), opt_state, manual)
        return state, manual

    state, manual = run(params)
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


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])  # float32: test_float32_run_stays_float32_and_moves
@pytest.mark.parametrize("name", CHAIN_NAMES)  # a fused transform runs its chain in these dtypes
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


SCHEDULED = [n for n in ALIASES if scheduled_names(n)]


def _schedule_values(name):
    """Each schedulable hyperparameter of ``name``: (its test value, another value in its range)."""
    values = {}
    for hyper in scheduled_names(name):
        v = KWARGS[name].get(hyper, inspect.signature(getattr(optimizers, name)).parameters[hyper].default)
        v = 0.0 if v is None else v
        values[hyper] = (v, other_value(v))
    return values


def _switched_run(name, values):
    """One program for every hyperparameter of ``name``: each is a schedule that gives its test value
    before step ``switch[i]`` and the other value from it on; ``switch`` is an argument, so
    moving one hyperparameter's switch reruns the same compiled program."""

    def run(switch):
        def schedule(i, v, alt):
            return lambda t: jnp.where(t < switch[i], schedules.resolve(v, t), schedules.resolve(alt, t))

        return _updates(make(name, **{h: schedule(i, v, alt) for i, (h, (v, alt)) in enumerate(values.items())}))

    return jax.jit(run)


def _updates(tx):
    """``(final state, the update of each step)`` over GRADS, params fixed at PARAMS."""

    def body(state, g):
        u, state = tx.update(g, state, PARAMS)
        return state, u

    return jax.lax.scan(body, tx.init(PARAMS), _stacked(GRADS))


@pytest.mark.parametrize("name", SCHEDULED)
def test_every_hyperparameter_can_be_a_schedule(name):
    """Every hyperparameter that takes a schedule follows it, at the step it is evaluated: switching
    one of them at step 2 leaves steps 0 and 1 bit for bit and changes a later one (RAdam ignores
    b2 and eps until it rectifies, at step 5); a schedule evaluated a step early or late, or
    ignored, fails. One compiled program serves every hyperparameter (the switch steps are its
    argument)."""
    values = _schedule_values(name)
    run = _switched_run(name, values)
    never = jnp.full(len(values), len(GRADS) + 1)
    _, u_base = run(never)
    for i, hyper in enumerate(values):
        s_sched, u_sched = run(never.at[i].set(2))
        same = [all(np.array_equal(a[k], b[k]) for a, b in zip(jax.tree.leaves(u_base), jax.tree.leaves(u_sched)))
                for k in range(len(GRADS))]
        assert same[:2] == [True, True] and not all(same), f"{hyper}: steps equal to the constant's: {same}"
        lr = optimizers.get_hyperparams(s_sched)["learning_rate"]
        v_lr, alt_lr = values["learning_rate"]
        want = schedules.resolve(alt_lr if hyper == "learning_rate" else v_lr, len(GRADS) - 1)
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
