"""Step counts saturate at 2**31 - 1: past it, counters do not wrap and everything stays finite."""

import inspect

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import check_reference, random_tree
from registry import NAMES, make

import optimizers
import schedules

MAX = 2**31 - 1
START = MAX - 2  # two steps below the maximum, then three past it


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


PARAMS = _f32(random_tree(np.random.default_rng(0)))
GRADS = [_f32(random_tree(np.random.default_rng(k + 1))) for k in range(5)]


def _is_counter(x):
    return x.dtype == jnp.int32 and x.shape == ()


def _near_max(state):
    """``state`` with every int32 scalar leaf (the step counts, SWA's number averaged) at START."""
    return jax.tree.map(lambda x: jnp.full_like(x, START) if _is_counter(x) else x, state)


def _counters(state):
    return {jax.tree_util.keystr(k): int(x) for k, x in jax.tree_util.tree_flatten_with_path(state)[0]
            if _is_counter(x)}


# SWA in the conformance list averages every second step; averaging every step takes its
# number of averaged weights past the maximum too.
EXTRA = {"swa(sgd) every step": lambda: optax.chain(optimizers.sgd(0.1, momentum=0.9), optimizers.swa(0, 1))}


@pytest.mark.parametrize("name", NAMES + sorted(EXTRA))
def test_counts_saturate_and_updates_stay_finite(name):
    tx = EXTRA[name]() if name in EXTRA else make(name)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    params, state = PARAMS, _near_max(tx.init(PARAMS))
    previous = _counters(state)
    for g in GRADS:
        params, state, updates = step(params, state, g)
        counters = _counters(state)
        assert all(previous[k] <= v <= MAX for k, v in counters.items()), f"{previous} -> {counters}"
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((params, updates)))
        previous = counters
    assert {v for k, v in counters.items() if k.endswith("count")} == {MAX}
    assert all(v > START for v in counters.values())  # every counter moved: none was left out


def _adam_limit(grads, b1=0.9, b2=0.999, eps=1e-8):
    m = v = np.zeros_like(grads[0])
    for g in grads:
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        yield m / (np.sqrt(v) + eps)  # 1 - b^t = 1


def _amsgrad_limit(grads, b1=0.9, b2=0.999, eps=1e-8):
    m = v = v_max = np.zeros_like(grads[0])
    for g in grads:
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        yield m / (np.sqrt(v_max) + eps)


def _adamax_limit(grads, b1=0.9, b2=0.999, eps=1e-8):
    m = u = np.zeros_like(grads[0])
    for g in grads:
        m, u = b1 * m + (1 - b1) * g, np.maximum(b2 * u, np.abs(g) + eps)
        yield m / u


def _nadam_limit(grads, b1=0.9, b2=0.999, eps=1e-8):
    m = v = np.zeros_like(grads[0])
    product = 1.0  # the state's product of the mu_i, from init
    for g in grads:
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        product *= b1  # mu_t = b1 (1 - 0.96^(t psi) / 2) = b1
        yield ((1 - b1) * g / (1 - product) + b1 * m / (1 - product * b1)) / (np.sqrt(v) + eps)


# RAdam's rectification r_t tends to 1 (rho_t -> rho_inf): its limit is Adam's.
LIMITS = {"scale_by_adam": _adam_limit, "scale_by_radam": _adam_limit, "scale_by_amsgrad": _amsgrad_limit,
          "scale_by_adamax": _adamax_limit, "scale_by_nadam": _nadam_limit}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_bias_corrections_reach_their_limit(name):
    tx = getattr(optimizers, name)()
    state, update, got = _near_max(tx.init(PARAMS)), jax.jit(tx.update), []
    for g in GRADS:
        u, state = update(g, state, PARAMS)
        got.append(jax.tree.map(lambda x: np.asarray(x, np.float64), u))
    grads = [jax.tree.map(lambda x: np.asarray(x, np.float64), g) for g in GRADS]
    check_reference(got, grads, LIMITS[name])


def _sgdr_value(t, first=4, mult=2):
    start, length = 0, first
    while t >= start + length:
        start, length = start + length, length * mult
    return 0.5 * (1 + np.cos(np.pi * (t - start) / length))


def _triangle_value(t, low=0.1, high=1.0, half=3):
    pos = t % (2 * half)
    return low + (high - low) * (pos if pos <= half else 2 * half - pos) / half


# Each schedule with its value (float64) at steps near 2**31 - 1.
EXAMPLES = {
    "constant": (schedules.constant(0.3), lambda t: 0.3),
    "factor": (schedules.factor(1.0, 0.9, 0.1), lambda t: 0.1),
    "multi_factor": (schedules.multi_factor(1.0, 0.5, [3, 7]), lambda t: 0.25),
    "polynomial": (schedules.polynomial(1.0, 0.1, 2.0, 10), lambda t: 0.1),
    "cosine": (schedules.cosine(1.0, 10, 0.1), lambda t: 0.1),
    "sgdr": (schedules.sgdr(1.0, 4, 0.0, 2), _sgdr_value),
    "cyclical": (schedules.cyclical(0.1, 1.0, 3), _triangle_value),
    "one_cycle": (schedules.one_cycle(20, 1.0), lambda t: 1.0 / 25 / 1e4),
    "lr_range": (schedules.lr_range(1e-3, 1.0, 10), lambda t: 1.0),
    "swa_lr": (schedules.swa_lr(1.0, 0.1, 5), lambda t: 0.1),
    "warmup": (schedules.warmup(schedules.cosine(1.0, 10), 3), lambda t: 0.0),
    "join": (schedules.join([schedules.constant(1.0), schedules.cosine(0.5, 5)], [4]), lambda t: 0.0),
    "wsd": (schedules.wsd(1.0, 20, 3, 0.25, end_value=0.05), lambda t: 0.05),
}
MAKERS = sorted(n for n in schedules.__all__ if inspect.isfunction(getattr(schedules, n))
                and inspect.signature(getattr(schedules, n)).return_annotation == "Schedule")


def test_every_schedule_is_enrolled():
    assert sorted(EXAMPLES) == MAKERS


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_schedules_near_the_maximum_step(name):
    schedule, want = EXAMPLES[name]
    at = jax.jit(schedule)
    steps = range(MAX - 4, MAX + 1)  # the sgdr example restarts at MAX - 3
    got = np.array([float(at(jnp.int32(t))) for t in steps])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, [want(t) for t in steps], rtol=1e-6, atol=1e-12)  # float32 evaluation


class _WrappingCountState(NamedTuple):
    count: jax.Array


def _wrapping_count():
    """A step count incremented with a plain ``+ 1``: it wraps to a negative number at the maximum."""
    return optax.GradientTransformation(lambda params: _WrappingCountState(jnp.zeros([], jnp.int32)),
                                        lambda u, s, p=None: (u, _WrappingCountState(s.count + 1)))


def test_a_broken_optimizer_fails_the_saturation_property(monkeypatch):
    """The suite can fail: a count that wraps around instead of saturating."""
    monkeypatch.setitem(globals(), "make", lambda name, **kw: optax.chain(optimizers.adam(0.01), _wrapping_count()))
    with pytest.raises(AssertionError):
        test_counts_saturate_and_updates_stay_finite("adam")
