"""A jit-compiled train step compiles once over 100 steps with every hyperparameter a schedule (with
numbers: ``test_optax_contract.py``'s convergence test owns that).

A second compilation happens when a state leaf comes out of ``update`` with another dtype,
shape or weak type than ``init`` gave it (a Python scalar mixed into an int32 count, a
float64 constant): the test counts traces, so such a leaf fails it.
"""

import inspect

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import jit_traced_once, random_tree
from registry import KWARGS, NAMES, other_value, scheduled_names, make

import optimizers
import schedules

STEPS = 100
MLP = {"hidden": {"w": (3, 8), "b": (1, 8)}, "out": {"w": (8, 2), "b": (1, 2)}}  # (1, n) biases: rank promotion raises


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


PARAMS = _f32(random_tree(np.random.default_rng(0), MLP, scale=0.5))
BATCHES = [_f32((rng.normal(size=(16, 3)), rng.normal(size=(16, 2)))) for rng in map(np.random.default_rng, range(4))]


def _loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return jnp.mean((h @ params["out"]["w"] + params["out"]["b"] - y) ** 2)


def _learning_rate(name):
    """Warm-up for 10 steps to the conformance learning rate's first value (Adam's for the wrapped
    optimizers), then cosine to 0."""
    peak = float(schedules.resolve(KWARGS.get(name, KWARGS["adam"])["learning_rate"], 0))
    return schedules.warmup(schedules.cosine(peak, STEPS - 10), 10)


def _switch(value):
    """``value`` for the first half of the steps, another value in its range after (as conformance)."""
    other = other_value(value)
    return lambda t: jnp.where(t < STEPS // 2, schedules.resolve(value, t), schedules.resolve(other, t))


def _scheduled(name):
    """``name`` with its learning rate and every other number-or-schedule hyperparameter scheduled
    (the wrapped optimizers: the learning rate)."""
    overrides = {"learning_rate": _learning_rate(name)}
    for hyper in scheduled_names(name) if name in KWARGS else []:
        if hyper != "learning_rate":
            default = inspect.signature(getattr(optimizers, name)).parameters[hyper].default
            value = KWARGS[name].get(hyper, default)
            overrides[hyper] = _switch(0.0 if value is None else value)
    return make(name, **overrides), overrides


def _train(tx):
    traces = []

    # What is counted is tracing and caching, which do not depend on how well XLA optimises
    # the code; its lowest optimisation level takes a third off the compile time.
    def step(params, state, batch):
        traces.append(1)  # runs when the step is traced, not when it runs
        loss, grads = jax.value_and_grad(_loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jit_traced_once(step, compiler_options={"xla_backend_optimization_level": 0})
    params, state = PARAMS, tx.init(PARAMS)
    for k in range(STEPS):
        params, state, loss = step(params, state, BATCHES[k % len(BATCHES)])
    assert np.isfinite(float(loss))
    assert len(traces) == 1, f"{len(traces)} traces"
    return state


@pytest.mark.parametrize("name", NAMES)
def test_compiles_once_with_schedules(name):
    tx, overrides = _scheduled(name)
    state = _train(tx)
    # The schedule advanced inside the one compiled step: the last update used step 99's value.
    lr = optimizers.get_hyperparams(state)["learning_rate"]
    np.testing.assert_allclose(lr, overrides["learning_rate"](STEPS - 1), rtol=1e-6)


class _DriftingState(NamedTuple):
    total: jax.Array


def _drifting_weak_type():
    """A transform whose state leaf is weakly typed at init and strongly typed after an update."""
    return optax.GradientTransformation(lambda params: _DriftingState(jnp.asarray(0.0)),
                                        lambda u, s, p=None: (u, _DriftingState(s.total + jnp.float32(1))))


def test_a_broken_optimizer_fails_the_compile_once_property():
    """The suite can fail: a state leaf whose weak type changes retraces the step."""
    with pytest.raises(AssertionError):
        _train(optax.chain(make("adam"), _drifting_weak_type()))
