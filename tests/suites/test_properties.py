"""Property-based tests (hypothesis): every optimizer, random pytrees, random valid hyperparameters.

For every name in the conformance suite's ``NAMES`` (aliases and wrapped optimizers), with
hyperparameters drawn inside their documented ranges (a learning rate may be a schedule; a
wrapper's own hyperparameters are drawn too), and ``STEPS`` updates with finite gradients and
fixed params of moderate size (magnitudes 1e-3 to 10, with exact zeros, whole zero leaves
and a gradient repeated at every step) on random pytrees (nested dicts, lists and tuples of
depth 0-3; scalar, zero-size, vector, matrix and 3-d leaves, a few large enough for
Adafactor's default factoring, small ones factored at a lower threshold; float32 and
bfloat16 mixed; ``None`` leaves):

1. ``update`` returns updates with the params' tree, shapes and dtypes, and a state with the
   same tree, shapes, dtypes and weak types as ``init``'s, so a jitted train step never
   retraces;
2. updates and states stay finite;
3. ``jax.jit(update)`` gives the eager results.

Runs are deterministic (``derandomize``, no example database). Compilation dominates the
time: every example builds a new optimizer, so its ``update`` compiles once; leaf shapes come
from a small pool, so the eager runs reuse their compiled primitives.
"""

import dataclasses
import inspect
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from registry import NAMES, make

import optimizers
import schedules

STEPS = 3
# 4 examples per optimizer and property by default (each example compiles an update and runs
# it eagerly: at 30 this file was a fifth of the suite's time, and the suite grows with every
# optimizer); PROPERTY_EXAMPLES=300 searches longer (the derandomized search draws the same examples
# first, so more examples only add cases).
SETTINGS = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "3")), deadline=None, derandomize=True,
                    database=None, phases=[Phase.generate, Phase.shrink],  # no slow "explain" phase
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUSED_SETTINGS = settings(SETTINGS, max_examples=max(1, SETTINGS.max_examples // 2))


# ---------------------------------------------------------------- hyperparameters


def _floats(low, high, **kwargs):
    """Numbers in [low, high] as float32 holds them (the state stores them so): 0 or at least 1e-6.

    No one sets a momentum of 1e-38; such a value takes the products it enters below
    float32's smallest normal number, which compiled code flushes to 0 and eager code may not.
    """
    low, high = float(np.float32(low)), float(np.float32(high))
    return st.floats(low, high, width=32, **kwargs).filter(lambda v: v == 0 or abs(v) >= 1e-6)


def _log_uniform(low, high):
    return st.floats(math.log10(low), math.log10(high)).map(lambda e: float(np.float32(10.0**e)))


@dataclasses.dataclass(frozen=True)
class Cosine:
    """A learning-rate schedule with a readable repr in hypothesis' reports."""

    peak: float

    def __call__(self, step):
        return schedules.cosine(self.peak, decay_steps=STEPS + 1)(step)


UNIT = _floats(0.0, 0.999)  # decays and momenta, documented in [0, 1)
EPS = _log_uniform(1e-10, 1e-3)
DECAY = _floats(0.0, 0.1)
_LR = _log_uniform(1e-5, 1.0)
LR = st.one_of(st.just(0.0), _LR, _LR.map(Cosine))


def _kwargs(**strategies):
    return st.fixed_dictionaries(strategies)


ADAM = {"learning_rate": LR, "b1": UNIT, "b2": UNIT, "eps": EPS}


@st.composite
def _lamb(draw):
    low = draw(_floats(0.0, 1.0))
    high = draw(st.one_of(st.just(math.inf), _log_uniform(1e-3, 10.0).map(lambda d: low + d)))
    return draw(_kwargs(**ADAM, weight_decay=DECAY, min_param_norm=st.just(low), max_param_norm=st.just(high)))


@st.composite
def _sgd(draw):
    momentum = draw(st.one_of(st.none(), st.just(0.0), UNIT))
    nesterov = draw(st.booleans()) if momentum else False
    return draw(_kwargs(learning_rate=LR, momentum=st.just(momentum), nesterov=st.just(nesterov),
                        weight_decay=DECAY))


@st.composite
def _rmsprop(draw):
    momentum = draw(st.one_of(st.just(0.0), UNIT))
    nesterov = draw(st.booleans()) if momentum else False
    return draw(_kwargs(learning_rate=LR, decay=UNIT, eps=EPS, initial_scale=_floats(0.0, 1.0),
                        eps_in_sqrt=st.booleans(), centered=st.booleans(), momentum=st.just(momentum),
                        nesterov=st.just(nesterov)))


@st.composite
def _muon(draw, **extra):
    form = draw(st.sampled_from(["reference", "optax"]))
    steps = draw(st.integers(1, 6))
    # optax's form takes at most ns_steps triples of a sequence; the reference form any number
    coeffs = st.sampled_from(["standard", "dion", "polar_express"] if form == "reference" else
                             ["standard"] + (["dion"] if steps >= 5 else []))
    return draw(_kwargs(learning_rate=LR, beta=UNIT, weight_decay=DECAY, nesterov=st.booleans(),
                        ns_steps=st.just(steps), ns_coeffs=coeffs, form=st.just(form),
                        consistent_rms=st.one_of(st.none(), _floats(0.1, 1.0)), adam_b1=UNIT, adam_b2=UNIT,
                        preconditioning=st.sampled_from(["frobenius", "spectral", "aol", "schatten"]), **extra))


AMOS = dict(learning_rate=LR, eta=_log_uniform(1e-2, 2.0), beta=UNIT, c_coef=_floats(0.0, 1.0),
            d_coef=_floats(0.0, 1.0), momentum=st.one_of(st.just(0.0), UNIT), eps=_log_uniform(2.0**-125, 1e-8))
HYPERPARAMETERS = {
    "adabelief": _kwargs(**ADAM, eps_root=st.one_of(st.none(), EPS), nesterov=st.booleans()),
    "adadelta": _kwargs(learning_rate=LR, rho=UNIT, eps=EPS),
    "adafactor": _kwargs(
        learning_rate=LR, b1=st.one_of(st.none(), UNIT), decay_rate=_floats(0.0, 1.0),
        eps=_log_uniform(1e-30, 1e-3), clipping_threshold=st.one_of(st.none(), _floats(1.0, 10.0)),
        min_scale=_log_uniform(1e-5, 1e-1), min_dim_size_to_factor=st.sampled_from([128, 1, 2, 3]),
        factored=st.booleans(), multiply_by_parameter_scale=st.booleans(), relative_step=st.booleans()),
    "adagrad": _kwargs(learning_rate=LR, initial_accumulator_value=_floats(0.0, 1.0), eps=EPS),
    "adam": _kwargs(**ADAM),
    "adamax": _kwargs(**ADAM),
    "adamw": _kwargs(**ADAM, weight_decay=DECAY),
    "adan": _kwargs(learning_rate=LR, b1=UNIT, b2=UNIT, b3=UNIT, eps=EPS, eps_root=st.one_of(st.none(), EPS),
                    weight_decay=DECAY, form=st.sampled_from(["paper", "optax"]), no_prox=st.booleans()),
    "adax": _kwargs(learning_rate=LR, b1=UNIT, b2=_log_uniform(1e-6, 0.999), eps=EPS,
                    eps_on_raw_sqrt=st.booleans()),
    "amos": _kwargs(**AMOS, granularity=st.sampled_from(["element", "leaf", "last_axis"])),
    "amsgrad": _kwargs(**ADAM, max_over=st.sampled_from(["corrected", "raw"])),
    # gamma_p * m * g is at most 1 per step; gamma_s multiplies a dot product over every
    # parameter (up to ~2e4 here), so it is kept smaller (documented: set for the problem).
    "funnelled_sgdm": _kwargs(learning_rate=LR, momentum=UNIT, beta=UNIT, gamma_p=_floats(0.0, 1e-2),
                              gamma_s=_floats(0.0, 1e-5)),
    "lamb": _lamb(),
    "lars": _kwargs(learning_rate=LR, weight_decay=DECAY, trust_coefficient=_log_uniform(1e-4, 1.0),
                    eps=st.one_of(st.none(), EPS), momentum=UNIT, nesterov=st.booleans()),
    "lion": _kwargs(learning_rate=LR, b1=UNIT, b2=UNIT, weight_decay=_floats(0.0, 1.0)),
    "muon": _muon(),
    "normuon": _muon(beta2=UNIT),
    "nadam": _kwargs(**ADAM, momentum_decay=_floats(0.0, 0.1)),
    "nadamw": _kwargs(**ADAM, momentum_decay=st.one_of(st.none(), _floats(0.0, 0.1)), weight_decay=DECAY),
    "novograd": _kwargs(**ADAM, weight_decay=DECAY),
    "radam": _kwargs(**ADAM, threshold=_floats(4.0, 10.0), eps_on_raw_sqrt=st.booleans()),
    "rmsprop": _rmsprop(),
    "rprop": _kwargs(learning_rate=LR, eta_plus=_floats(1.0, 2.0, exclude_min=True),
                     eta_minus=_floats(0.0, 1.0, exclude_min=True, exclude_max=True),
                     min_scale=_log_uniform(1e-6, 1.0), max_scale=_floats(1.0, 1e4),
                     form=st.sampled_from(["table", "torch"])),
    "scale_by_learning_rate": _kwargs(learning_rate=LR, flip_sign=st.booleans()),
    "scale_by_relative_step": _kwargs(learning_rate=LR),
    "schedule_free_adamw": _kwargs(learning_rate=LR, warmup_steps=st.sampled_from([None, 0, 1, 5]),
                                   b1=_floats(0.05, 0.999), b2=UNIT, eps=EPS, weight_decay=DECAY,
                                   weight_lr_power=_floats(0.0, 3.0), r=_floats(0.0, 2.0)),
    "schedule_free_sgd": _kwargs(learning_rate=LR, warmup_steps=st.sampled_from([None, 0, 1, 5]),
                                 b1=_floats(0.05, 0.999), weight_decay=st.one_of(st.none(), DECAY),
                                 weight_lr_power=_floats(0.0, 3.0), r=_floats(0.0, 2.0)),
    "sgd": _sgd(),
    "yogi": _kwargs(**ADAM, eps_root=st.one_of(st.none(), EPS), initial_accumulator_value=_floats(0.0, 1.0),
                    form=st.sampled_from(["paper", "optax"])),
    "sm3": _kwargs(learning_rate=LR, momentum=st.one_of(st.none(), UNIT), eps_root=st.one_of(st.just(0.0), EPS),
                   variant=st.sampled_from(["I", "II"])),
    "shampoo": _kwargs(learning_rate=LR, b1=UNIT, b2=_floats(1e-3, 1.0), eps=_log_uniform(0.1, 1.0),
                       weight_decay=DECAY, grafting=st.sampled_from(["adam", "adagrad", "rmsprop", "sgd", None]),
                       graft_b2=UNIT, graft_eps=EPS, precondition_frequency=st.integers(1, 3),
                       start_preconditioning_step=st.integers(0, 2),
                       block_size=st.one_of(st.none(), st.integers(1, 3))),
}


def _chained(wrapper):
    """A wrapper that goes last in a chain (the weight averages)."""
    return lambda inner, **kwargs: optax.chain(inner, wrapper(**kwargs))


WRAPPERS = {"weight_ema": _chained(optimizers.weight_ema), "swa": _chained(optimizers.swa), "lookahead": optimizers.lookahead}
WRAPPER_HYPERPARAMETERS = {
    "weight_ema": _kwargs(decay=_floats(0.0, 1.0), bias_correction=st.booleans()),
    "swa": _kwargs(start_step=st.integers(0, STEPS - 1), every=st.integers(1, STEPS)),
    "lookahead": _kwargs(sync_period=st.integers(1, STEPS), slow_step_size=_floats(0.0, 1.0),
                         reset_state=st.booleans()),
    "fused": _kwargs(),  # not a wrapper: the alias built with fused=True
}
# fused=True where its kernel takes fewer forms than the alias (Amos: a slot per entry).
FUSED_HYPERPARAMETERS = {"amos": _kwargs(**AMOS, granularity=st.just("element"))}


def _split_name(name):
    """``"lookahead(adam)"`` -> ``("lookahead", "adam")``; an alias -> ``(None, name)``."""
    if "(" not in name:
        return None, name
    wrapper, inner = name.rstrip(")").split("(")
    return wrapper, inner


# By parameter name, for an optimizer without an entry above (as test_errors.py's BAD): every
# number-or-schedule hyperparameter of a new rule is drawn in its documented range; options stay
# at their defaults until an entry draws them too.
BY_NAME = {"learning_rate": LR, "b1": UNIT, "b2": UNIT, "b3": UNIT, "beta": UNIT, "momentum": UNIT, "decay": UNIT,
           "rho": UNIT, "eps": EPS, "eps_root": EPS, "weight_decay": DECAY,
           "lambd": DECAY, "alpha": _floats(0.0, 1.0),  # asgd's power, ademamix's mixing weight, OGD's
           "optimism": DECAY, "eta": DECAY, "gamma": _floats(0.0, 1.0), "shampoo_beta": UNIT}


def _scheduled(name):
    return [k for k, p in inspect.signature(getattr(optimizers, name)).parameters.items()
            if "ScalarOrSchedule" in str(p.annotation)]


def _alias_hyperparameters(name):
    if name in HYPERPARAMETERS:
        return HYPERPARAMETERS[name]
    return _kwargs(**{k: BY_NAME[k] for k in _scheduled(name)})


def _hyperparameters(name):
    wrapper, inner = _split_name(name)
    if wrapper is None:
        return _alias_hyperparameters(name)
    own = FUSED_HYPERPARAMETERS if wrapper == "fused" else {}
    return _kwargs(inner=own.get(inner, _alias_hyperparameters(inner)), wrapper=WRAPPER_HYPERPARAMETERS[wrapper])


def build(name, kwargs):
    """The optimizer ``name`` with drawn hyperparameters (the wrapper's too, for a wrapped one)."""
    wrapper, inner = _split_name(name)
    if wrapper is None:
        return make(name, **kwargs)
    if wrapper == "fused":
        return make(inner, fused=True, **kwargs["inner"])
    return WRAPPERS[wrapper](make(inner, **kwargs["inner"]), **kwargs["wrapper"])


def test_every_optimizer_has_hyperparameter_strategies():
    """A new optimizer (or wrapper) fails here until each of its number-or-schedule hyperparameters has
    a strategy: its own entry in HYPERPARAMETERS, or its parameter name in BY_NAME."""
    assert set(HYPERPARAMETERS) <= set(NAMES)
    missing = {(n, k) for n in NAMES if "(" not in n and n not in HYPERPARAMETERS for k in _scheduled(n)
               if k not in BY_NAME}
    assert not missing, "give these a strategy"
    for name in NAMES:
        wrapper, inner = _split_name(name)
        assert wrapper is None or (wrapper in WRAPPER_HYPERPARAMETERS and inner in HYPERPARAMETERS), name


# ---------------------------------------------------------------- pytrees and values

BIG = (128, 130)  # both dims >= 128: Adafactor factors it at the default threshold
SHAPES = [(), (1,), (5,), (0,), (3, 0), (0, 3), (4, 3), (3, 5), (2, 2, 3)]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """What one leaf holds: its shape and dtype, and how its params and gradients are drawn.

    ``params``: ``random`` (every entry nonzero), ``sparse`` (about half exact zeros) or
    ``zeros``; ``grads`` the same or ``repeat`` (one random gradient at every step).
    """

    shape: tuple
    dtype: str
    params: str
    grads: str


LEAVES = st.builds(
    Leaf,
    shape=st.sampled_from(SHAPES * 3 + [BIG]),  # BIG in 1 leaf in 28
    dtype=st.sampled_from(["float32", "bfloat16"]),
    params=st.sampled_from(["random", "sparse", "zeros"]),
    grads=st.sampled_from(["random", "sparse", "zeros", "repeat"]),
)
KEYS = st.sampled_from(["a", "b", "c", "d"])


def _trees(depth):
    """Leaves, ``None``, and dicts, lists and tuples of up to 4 subtrees, nested ``depth`` deep."""
    if depth == 0:
        return st.one_of(LEAVES, st.none())
    sub = _trees(depth - 1)
    return st.one_of(
        LEAVES,
        st.dictionaries(KEYS, sub, max_size=4),
        st.lists(sub, max_size=4),
        st.lists(sub, max_size=4).map(tuple),
    )


TREES = _trees(3)
SEEDS = st.integers(0, 2**32 - 1)


def _random(rng, shape, kind):
    """Entries of magnitude 1e-3 to 10 with random signs; ``sparse``: about half set to 0."""
    x = rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-3, 1, shape)
    if kind == "sparse":
        x = np.where(rng.random(shape) < 0.5, 0.0, x)
    return np.zeros(shape) if kind == "zeros" else x


def _is_leaf(x):
    return isinstance(x, Leaf)


def inputs(spec, seed):
    """The params and ``STEPS`` gradient trees of a tree of :class:`Leaf` specs."""
    rng = np.random.default_rng(seed)

    def fresh(kind):
        return jax.tree.map(lambda s: _random(rng, s.shape, kind(s)), spec, is_leaf=_is_leaf)

    def again(first):
        """The next step's gradients: a ``repeat`` leaf keeps the first ones."""
        return jax.tree.map(lambda s, g: g if s.grads == "repeat" else _random(rng, s.shape, s.grads), spec, first,
                            is_leaf=_is_leaf)

    def cast(tree):
        return jax.tree.map(lambda s, x: jnp.asarray(x, s.dtype), spec, tree, is_leaf=_is_leaf)

    params = fresh(lambda s: s.params)
    first = fresh(lambda s: "random" if s.grads == "repeat" else s.grads)
    grads = [first] + [again(first) for _ in range(STEPS - 1)]
    return cast(params), [cast(g) for g in grads]


# ---------------------------------------------------------------- properties


def _draw(name, data):
    """An optimizer with drawn hyperparameters, and drawn params and gradients for it."""
    tx = build(name, data.draw(_hyperparameters(name), label="hyperparameters"))
    params, grads = inputs(data.draw(TREES, label="tree"), data.draw(SEEDS, label="seed"))
    return tx, params, grads


def _avals(tree):
    """Shape, dtype and weak type of every leaf: what a jit cache key holds."""
    return jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype), x.weak_type), tree)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_update_keeps_tree_shapes_and_dtypes(name, data):
    """Property 1 at every step, abstractly (``jax.eval_shape``: nothing compiled or run)."""
    tx, params, grads = _draw(name, data)
    state = jax.eval_shape(tx.init, params)
    for g in grads:
        updates, new_state = jax.eval_shape(tx.update, g, state, params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        assert _avals(updates) == _avals(params)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert _avals(new_state) == _avals(state)
        state = new_state


def _assert_finite(tree, what):
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(x.dtype, jnp.floating):
            assert np.all(np.isfinite(np.asarray(x, np.float32))), f"{what}{jax.tree_util.keystr(path)}: {x}"


# jit fuses a step's float32 operations (FMA contraction, rsqrt for 1/sqrt, reduction order):
# a few roundings of 6e-8 per operation, a few dozen operations over 3 steps, far below 1e-5
# of a leaf's largest magnitude. A bfloat16 result (update or buffer) is the float32 value
# rounded to 8 significant bits, a spacing of up to 2^-7 of the value: a tiny float32
# difference can move it across a rounding boundary by one spacing, and a buffer's difference
# carries into the next steps: 2 spacings, 2^-6. Integer leaves (counts) must be equal.
RTOL = {jnp.dtype("float32"): 1e-5, jnp.dtype("bfloat16"): 2.0**-6}
# A value that is a difference of param-sized numbers (Lookahead's update, slow - theta; a
# weight average of params that nearly cancel their update) keeps their absolute rounding,
# half a spacing of |theta| per operation whatever its own size: 4 spacings of the param's
# largest magnitude are allowed on top (found by hypothesis: b2 = 0 Adam under Lookahead and
# SWA, 0.5 and 1 spacing of theta apart).
PARAM_ULPS = 4


def _param_scales(params):
    """The largest |theta| of each params leaf, by its path."""
    return {jax.tree_util.keystr(p): float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))
            for p, x in jax.tree_util.tree_leaves_with_path(params)}


def _param_scale(key, scales):
    """The scale of the params leaf that the state or update leaf at ``key`` mirrors (longest path suffix)."""
    matches = [k for k in scales if key.endswith(k)]
    return scales[max(matches, key=len)] if matches else 0.0


def _assert_close(got, want, what, params):
    scales = _param_scales(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        rtol = RTOL.get(jnp.dtype(b.dtype), 0.0)
        key = jax.tree_util.keystr(path)
        floor = PARAM_ULPS * float(jnp.finfo(b.dtype).eps) * _param_scale(key, scales) if rtol else 0.0
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.max(np.abs(b), initial=0.0))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=max(rtol * scale, floor), err_msg=f"{what}{key}")


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("fused(")])
@SETTINGS
@given(data=st.data())
def test_finite_and_jit_matches_eager(name, data):
    """Properties 2 and 3: eager steps stay finite, and the jitted update gives the same values."""
    _check_finite_and_jit(name, data)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("fused(")])
@FUSED_SETTINGS
@given(data=st.data())
def test_fused_finite_and_jit_matches_eager(name, data):
    """The same for the fused aliases, with half the examples: their kernel's branches are few
    booleans, and test_fused checks each against the unfused chain step by step."""
    _check_finite_and_jit(name, data)


def _check_finite_and_jit(name, data):
    tx, params, grads = _draw(name, data)
    eager = jit = tx.init(params)
    update = jax.jit(tx.update)
    for step, g in enumerate(grads):
        u_eager, eager = tx.update(g, eager, params)
        _assert_finite(u_eager, f"step {step}: updates")
        _assert_finite(eager, f"step {step}: state")
        u_jit, jit = update(g, jit, params)
        _assert_close(u_jit, u_eager, f"step {step}: updates", params)
        _assert_close(jit, eager, f"step {step}: state", params)


def test_a_broken_optimizer_fails_the_finite_property(monkeypatch):
    """The suite can fail: Adam followed by a step that divides each update by itself minus itself
    (0/0: NaN) is caught on its first drawn example."""
    real = build
    broken = optax.stateless(lambda u, p: jax.tree.map(lambda x: x / (x - x), u))
    monkeypatch.setitem(globals(), "build", lambda name, hyper: optax.chain(real(name, hyper), broken))
    with pytest.raises(AssertionError):
        test_finite_and_jit_matches_eager("adam")
