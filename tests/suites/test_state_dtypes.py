"""State-dtype keywords (``mu_dtype``, ``nu_dtype``, ``accumulator_dtype``) on every factory that
takes one, and the state trees under ``optax.inject_hyperparams`` (defaults that mean "off" are None).

Enrolled automatically: every name in ``optimizers.__all__`` with one of the keywords. ``ARGS``
gives what a factory needs (its required arguments, or options that create the buffer a keyword
sets); the tests never branch on a name. Shapes and dtypes come from ``jax.eval_shape``: nothing
is compiled.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import ALIASES, KWARGS

import optimizers

KEYWORDS = ("mu_dtype", "nu_dtype", "accumulator_dtype")
TAKERS = sorted(n for n in optimizers.__all__ if callable(getattr(optimizers, n))
                and set(KEYWORDS) & set(inspect.signature(getattr(optimizers, n)).parameters))
ARGS = {  # required arguments, and options that make the buffers a keyword sets
    **KWARGS,
    "adafactor": dict(learning_rate=0.1, b1=0.9),
    "amos": dict(learning_rate=0.1, eta=1.0, momentum=0.9),
    "ema": dict(decay=0.9),
    "rmsprop": dict(learning_rate=0.1, centered=True, momentum=0.9),
    "scale_by_amos": dict(xi=0.1, eta=1.0),
    "scale_by_rms": dict(centered=True),
    "scale_by_sm3": dict(b1=0.9),
    "sm3": dict(learning_rate=0.1, momentum=0.9),
    # Sophia's update needs its Hessian estimator's arguments (Hutchinson's: obj_fn=); an estimator of
    # the gradient's square needs none, so the suite's update(grads, state, params) runs it.
    "scale_by_sophia": dict(hessian_diagonal_fn=optax.stateless(lambda g, p=None: jax.tree.map(jnp.square, g))),
    "sophia": dict(learning_rate=0.1,
                   hessian_diagonal_fn=optax.stateless(lambda g, p=None: jax.tree.map(jnp.square, g))),
}
PARAMS = {"w": (3, 4), "b": (5,)}
# The params' dtype, and the (different) state dtype asked for.
CASES = [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16), (jnp.complex64, jnp.bfloat16)]


def _build(name, **dtypes):
    return getattr(optimizers, name)(**ARGS.get(name, {}), **dtypes)


def _shapes(tx, dtype):
    params = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in PARAMS.items()}
    try:
        state = jax.eval_shape(tx.init, params)
    except TypeError as e:  # a rule that refuses complex params (Lion)
        if "complex params are not supported" in str(e):
            pytest.skip(str(e))
        raise
    updates, new_state = jax.eval_shape(tx.update, params, state, params)
    return state, updates, new_state


def _expected(leaf_dtype, state_dtype):
    return jnp.promote_types(state_dtype, jnp.complex64) if jnp.iscomplexobj(jnp.zeros((), leaf_dtype)) else state_dtype


def _buffers(state):
    return [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]


def test_every_taker_is_found():
    assert {"adam", "adamw", "amsgrad", "sgd", "trace", "lion", "rmsprop", "adafactor", "ema", "weight_ema"} <= set(TAKERS)


@pytest.mark.parametrize("params_dtype, state_dtype", CASES, ids=["bfloat16", "float32", "complex64"])
@pytest.mark.parametrize("name", TAKERS)
def test_state_dtypes_are_set_exactly(name, params_dtype, state_dtype):
    """All keywords at once: every per-parameter buffer in the state dtype (complex leaves: its complex
    form); each keyword alone: what it changes is in that dtype, and it changes something; the updates
    in the params' dtype; the state keeps its dtypes through an update."""
    taken = [k for k in KEYWORDS if k in inspect.signature(getattr(optimizers, name)).parameters]
    plain, _, _ = _shapes(_build(name), params_dtype)
    state, updates, new_state = _shapes(_build(name, **{k: state_dtype for k in taken}), params_dtype)
    shapes = set(PARAMS.values())
    for x in _buffers(state):
        if x.shape in shapes:
            assert x.dtype in (state_dtype, _expected(params_dtype, state_dtype)), (x, state_dtype)
    assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(params_dtype)}
    assert [x.dtype for x in jax.tree.leaves(new_state)] == [x.dtype for x in jax.tree.leaves(state)]
    for k in taken:
        alone, _, _ = _shapes(_build(name, **{k: state_dtype}), params_dtype)
        assert jax.tree.structure(alone) == jax.tree.structure(plain)
        changed = [(a, b) for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(alone)) if a.dtype != b.dtype]
        assert changed or params_dtype == jnp.complex64, f"{k} changed no buffer"
        for old, new in changed:
            assert new.dtype == _expected(old.dtype, state_dtype), (k, old, new)


@pytest.mark.parametrize("name", TAKERS)
def test_bad_state_dtype_is_a_value_error(name):
    for k in KEYWORDS:
        if k in inspect.signature(getattr(optimizers, name)).parameters:
            with pytest.raises(ValueError, match=k):
                _build(name, **{k: jnp.int32})


def _state_bytes_per_parameter(tx, n=4096):
    state = jax.eval_shape(tx.init, jnp.zeros((n,), jnp.float32))
    per_parameter = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if x.size == n) / n
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / n
    return per_parameter, total


def test_adam_state_bytes_per_parameter():
    """float32 params: Adam keeps 8 bytes a parameter; 6 with a bfloat16 first moment; 4 with both."""
    assert _state_bytes_per_parameter(optimizers.adam(1e-3))[0] == 8
    assert _state_bytes_per_parameter(optimizers.adam(1e-3, mu_dtype=jnp.bfloat16))[0] == 6
    assert _state_bytes_per_parameter(optimizers.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16))[0] == 4


def test_none_keeps_the_default_state_bit_for_bit():
    """``None`` state dtypes: the same state and updates as without the keywords."""
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.bfloat16)}
    grads = jax.tree.map(lambda p: p * 3 + 1, params)
    for a, b in [(optimizers.adam(0.1), optimizers.adam(0.1, mu_dtype=None, nu_dtype=None)),
                 (optimizers.sgd(0.1, 0.9), optimizers.sgd(0.1, 0.9, accumulator_dtype=None))]:
        ua, sa = a.update(grads, a.init(params), params)
        ub, sb = b.update(grads, b.init(params), params)
        jax.tree.map(np.testing.assert_array_equal, (ua, sa), (ub, sb))


@pytest.mark.parametrize("name", ALIASES)
def test_inject_hyperparams_builds_the_same_state_tree(name):
    """``inject_hyperparams`` turns every numeric default into an array: a default of 0 that means "off"
    would switch a link on. With "off" as None the injected inner state has the plain one's tree."""
    factory = getattr(optimizers, name)
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(5)}  # init eagerly, as a user does (Adafactor's int
    plain = jax.eval_shape(factory(**KWARGS[name]).init, params)  # hyperparameters are arrays there)
    injected = optax.inject_hyperparams(factory)(**KWARGS[name]).init(params).inner_state
    assert jax.tree.structure(injected) == jax.tree.structure(plain)
    required = {k: v for k, v in KWARGS[name].items()
                if inspect.signature(factory).parameters[k].default is inspect.Parameter.empty}
    plain = jax.eval_shape(factory(**required).init, params)
    injected = optax.inject_hyperparams(factory)(**required).init(params).inner_state
    assert jax.tree.structure(injected) == jax.tree.structure(plain)


def test_sgd_and_rmsprop_under_inject_hyperparams():
    """The issue's two cases: no decay link for sgd, no momentum buffer for rmsprop."""
    params = jnp.zeros(3)
    for factory, kwargs in [(optimizers.sgd, dict(learning_rate=1e-3, momentum=0.9)),
                            (optimizers.rmsprop, dict(learning_rate=5e-3))]:
        injected = optax.inject_hyperparams(factory)(**kwargs).init(params).inner_state
        assert jax.tree.structure(injected) == jax.tree.structure(factory(**kwargs).init(params))
        assert not any(isinstance(x, optimizers.AddDecayedWeightsState) for x in injected)
    assert not any(isinstance(x, optimizers.TraceState)
                   for x in optimizers.rmsprop(5e-3).init(params))


def test_a_broken_optimizer_fails_the_state_dtype_property(monkeypatch):
    """The suite can fail: an Adam that takes ``mu_dtype`` and ignores it."""
    real = optimizers.adam
    monkeypatch.setattr(optimizers, "adam", lambda *a, mu_dtype=None, **kw: real(*a, **kw))
    with pytest.raises(AssertionError):
        test_state_dtypes_are_set_exactly("adam", jnp.float32, jnp.bfloat16)
