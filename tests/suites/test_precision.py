"""Low-precision params (bfloat16, float16): finite updates over the whole gradient range, the
float32-state option (``with_state_dtype``), and the drift of bfloat16 params from a float32 run.

Every optimizer of the conformance suite is enrolled; none is special-cased except through
its keyword arguments (Funnelled SGDM's rates, which have the units of :math:`g^2`).
``python tests/suites/test_precision.py`` prints the drift table, float16 included.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import CHAIN_NAMES, make

import optimizers

LOW = ["bfloat16", "float16"]
SHAPES = {"w": (8, 6), "s": ()}
# Funnelled SGDM's exponents gamma * m * g grow with g^2 (its docstring: set them for the
# problem); the default 1e-3 overflows even float64 at |g| = 1e4. Rates for that scale:
WIDE_RANGE_KWARGS = {"funnelled_sgdm": dict(gamma_p=1e-11, gamma_s=1e-11)}


def _tree(f):
    return jax.tree.map(f, SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _wide_range_grads(steps, rng):
    """Magnitudes log-uniform in [1e-8, 1e4] with random signs, 10% exact zeros; leaves stacked over steps."""
    def leaf(shape):
        size = (steps, *shape)
        g = 10.0 ** rng.uniform(-8, 4, size=size) * rng.choice([-1.0, 1.0], size=size)
        return np.where(rng.random(size=size) < 0.1, 0.0, g)

    return _tree(leaf)


_RNG = np.random.default_rng(0)
PARAMS = _tree(lambda s: _RNG.normal(size=s))
GRADS = _wide_range_grads(20, _RNG)


# These programs run for milliseconds; compiling them (one per optimizer and test) is what this
# file spends, and XLA's LLVM optimisations double it. Without them float32 results differ in the
# last bits (other instruction choices), far below the tolerances and the pinned drifts' margins.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _steps(tx, params, grads):
    """``(params, state), updates`` after one step per gradient (leaves stacked over steps)."""
    def step(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), u

    return jax.lax.scan(step, (params, tx.init(params)), grads)


@functools.cache
def _wide_range_run(name):
    """Per low-precision dtype, its run's ``(params, state), updates`` and the float32 first update
    on the same (rounded) inputs; one program for all."""
    tx = make(name, **WIDE_RANGE_KWARGS.get(name, {}))

    def first_update(params, grads):
        return tx.update(jax.tree.map(lambda g: g[0], grads), tx.init(params), params)[0]

    def run(inputs):
        return {d: (_steps(tx, p, g), first_update(_cast(p, jnp.float32), _cast(g, jnp.float32)))
                for d, (p, g) in inputs.items()}

    return jax.jit(run, compiler_options=FAST_COMPILE)


def _all_finite(tree):
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in floats)


@pytest.mark.parametrize("name", CHAIN_NAMES)
def test_finite_on_gradients_from_1e_8_to_1e4(name):
    results = _wide_range_run(name)({d: (_cast(PARAMS, d), _cast(GRADS, d)) for d in LOW})
    for dtype, (((new, state), updates), want) in results.items():
        assert _all_finite(updates), f"{dtype}: a non-finite update"
        assert _all_finite(new) and _all_finite(state), f"{dtype}: non-finite params or state"
        assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(state) if x.shape != ())  # the default
        assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(updates))
        # The first update is the float32 one on the same inputs, rounded once per link of the chain:
        # the rules compute in float32. (The links pass directions on in the params' dtype, so the
        # errors are relative to the leaf's largest entry, and at least float16's subnormal spacing.)
        info = jnp.finfo(dtype)
        for got, w in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
            got, w = np.asarray(got[0], np.float64), np.asarray(w, np.float64)
            rtol = 4 * float(info.eps)
            atol = rtol * np.max(np.abs(w)) + 2 * float(info.smallest_subnormal)
            np.testing.assert_allclose(got, w, rtol=rtol, atol=atol, err_msg=dtype)


# --- float32 state: with_state_dtype ----------------------------------------------------------

@pytest.mark.parametrize("name", ["adam", "adafactor", "sm3", "lookahead(adam)"])
def test_with_state_dtype_is_the_optimizer_run_in_float32(name):
    """Bit for bit: the inner optimizer on the float32 casts of bfloat16 params and grads, updates rounded back."""
    params = {**_cast(PARAMS, jnp.bfloat16), "step": jnp.arange(3, dtype=jnp.int32), "none": None}
    tx, inner = optimizers.with_state_dtype(make(name)), make(name)
    state, ref_state = tx.init(params), inner.init(_cast(_cast(PARAMS, jnp.bfloat16), jnp.float32))
    update, ref_update = jax.jit(tx.update), jax.jit(inner.update)
    for k in range(5):
        grads = {**_cast(jax.tree.map(lambda g: g[k], GRADS), jnp.bfloat16),
                 "step": np.zeros(3, jax.dtypes.float0), "none": None}  # an integer param's gradient: float0
        u, state = update(grads, state, params)
        floats = {key: params[key] for key in SHAPES}
        want, ref_state = ref_update(_cast({key: grads[key] for key in SHAPES}, jnp.float32), ref_state,
                                     _cast(floats, jnp.float32))
        assert u["none"] is None and u["step"].dtype == jax.dtypes.float0  # zero updates, passed through
        for got, w in zip(jax.tree.leaves({key: u[key] for key in SHAPES}), jax.tree.leaves(want), strict=True):
            assert got.dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(w.astype(jnp.bfloat16), np.float32))
        for got, w in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
            assert got.dtype == w.dtype and np.array_equal(got, w)
        params = {**params, **optax.apply_updates(floats, {key: u[key] for key in SHAPES})}
    buffers = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert buffers and all(x.dtype == jnp.float32 for x in buffers)


def test_with_state_dtype_keeps_float32_params_unchanged():
    params, grads = _cast(PARAMS, jnp.float32), _cast(jax.tree.map(lambda g: g[0], GRADS), jnp.float32)
    got, _ = optimizers.with_state_dtype(make("adam")).update(grads, make("adam").init(params), params)
    want, _ = make("adam").update(grads, make("adam").init(params), params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


# --- drift from a float32 run -----------------------------------------------------------------

_DATA = np.random.default_rng(1)
X = _DATA.normal(size=(32, 6)).astype(np.float32)
Y = (X @ _DATA.normal(size=(6, 4)) + 0.1 * _DATA.normal(size=(32, 4))).astype(np.float32)
INIT = {"w": 0.5 * _DATA.normal(size=(6, 4))}
STEPS = 100


def _loss(p):
    """Least squares, always evaluated in float32: the drift measured is the optimizer's, not the model's."""
    return 0.5 * jnp.mean(jnp.sum((X @ p["w"].astype(jnp.float32) - Y) ** 2, axis=-1))


def _trajectory(tx, params, noise=0.0):
    """The params after ``STEPS`` steps of ``tx`` on :func:`_loss` (grads in the params' dtype), each
    gradient entry times ``1 + noise * (+-1)`` (random signs, the same in every run)."""
    def step(carry, key):
        p, s = carry
        g = jax.grad(_loss)(p)["w"]
        g = {"w": (g * (1 + noise * jax.random.rademacher(key, g.shape, g.dtype))).astype(p["w"].dtype)}
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (params, tx.init(params)), jax.random.split(jax.random.key(0), STEPS))[0][0]


@functools.cache
def _drift_runs(name):
    """From a start in a low-precision dtype: the float32 runs (exact, and with relative errors of the
    dtype's rounding on the gradients), the run with the default state and the one with float32
    state. One program."""
    tx, wide = make(name), optimizers.with_state_dtype(make(name))

    def run(start):
        f32 = _cast(start, jnp.float32)
        roundoff = float(jnp.finfo(start["w"].dtype).eps) / 2
        refs = jax.vmap(lambda noise: _trajectory(tx, f32, noise))(jnp.asarray([0.0, roundoff]))
        exact, noisy = (jax.tree.map(lambda r, i=i: r[i], refs) for i in range(2))
        return exact, noisy, _trajectory(tx, start), _trajectory(wide, start)

    return jax.jit(run, compiler_options=FAST_COMPILE)


def _norm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree))))


def _diff(a, b):
    return jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)


def measure(name, dtype):
    """The drift of ``dtype`` params from the float32 run, with the default state and with float32 state,
    and the noise: ``||.||`` over the tree divided by the float32 run's movement ``||x_100 - x_0||``.

    The float32 run starts from the same (rounded) params. The noise is the larger of the float32
    run's end point rounded to ``dtype`` (the error of merely holding the result in it) and the
    drift of a float32 run whose gradients carry random relative errors of ``dtype``'s rounding
    (what rounding does to a run of this optimizer on this problem, whatever the state holds).
    """
    start = _cast(INIT, dtype)
    exact, noisy, default, wide = _drift_runs(name)(start)
    movement = _norm(_diff(exact, start))
    noise = max(_norm(_diff(_cast(exact, dtype), exact)), _norm(_diff(noisy, exact)))
    return tuple(x / movement for x in (_norm(_diff(default, exact)), _norm(_diff(wide, exact)), noise))


# Measured on the CPU development machine (jax 0.10.2), bfloat16 params: drift after 100 steps
# relative to the float32 run's movement, (default bfloat16 state, float32 state). Most are 5 to 100
# times the noise: the params' own rounding (updates below half a bfloat16 step of the params are
# lost), which float32 moments cannot help. LARS and Amos at these learning rates amplify any
# rounding (their noise is about their drift).
# A name not yet measured is held to the loosest pinned drift (RAdam's) until it is pinned.
UNPINNED = (2.6e-01, 2.6e-01)
PINNED = {
    "adabelief": (1.03e-02, 1.04e-02),
    "adadelta": (1.29e-01, 1.29e-01),
    "adafactor": (7.01e-03, 4.75e-03),
    "adagrad": (3.74e-02, 3.74e-02),
    "adam": (2.00e-02, 1.96e-02),
    "adamax": (4.46e-02, 3.32e-02),
    "adamaxw": (4.46e-02, 3.33e-02),
    "adamw": (2.00e-02, 1.96e-02),
    "adan": (2.30e-02, 2.14e-02),
    "adax": (2.26e-02, 2.03e-02),
    "amos": (3.98e-02, 1.61e-02),
    "amsgrad": (4.04e-02, 3.90e-02),
    "dadapt_adamw": (1.05e-02, 9.54e-03),
    # x moves (1-β) of the way to z = x0 - s each step (β = 0.9 here): bfloat16 params lose the small
    # moves, with any state (float32 state drifts as much); the estimate d then grows from other gradients.
    "dadapt_sgd": (4.78e-01, 4.86e-01),
    "dog": (1.65e-02, 1.65e-02),
    "funnelled_sgdm": (2.43e-02, 1.97e-02),
    "lamb": (6.33e-02, 6.08e-02),
    "lars": (2.12e-02, 4.32e-02),
    "lion": (2.05e-01, 2.05e-01),
    "muon": (4.81e-02, 2.52e-02),
    "normuon": (3.27e-02, 2.13e-02),
    "nadam": (1.84e-01, 1.84e-01),
    "nadamw": (1.84e-01, 1.84e-01),
    "novograd": (4.89e-03, 4.36e-03),
    "prodigy": (4.97e-03, 3.90e-03),
    "radam": (2.56e-01, 2.43e-01),
    "rmsprop": (2.35e-01, 2.35e-01),
    "rprop": (3.13e-03, 2.81e-03),
    "scale_by_learning_rate": (2.25e-01, 2.25e-01),
    "scale_by_relative_step": (2.25e-01, 2.25e-01),
    "sgd": (2.66e-02, 2.66e-02),
    "sign_sgd": (2.62e-02, 2.62e-02),
    "signum": (2.04e-01, 2.04e-01),
    "sm3": (3.76e-02, 3.78e-02),
    "yogi": (1.70e-02, 1.73e-02),
    "weight_ema(adam)": (2.00e-02, 1.96e-02),
    "lookahead(adam)": (3.78e-02, 2.96e-02),
    "lookahead(sgd)": (2.01e-02, 1.58e-02),
    "swa(adam)": (2.00e-02, 1.96e-02),
}


@pytest.mark.parametrize("name", CHAIN_NAMES)
def test_bfloat16_drift_from_float32_is_pinned(name):
    default, wide, noise = measure(name, "bfloat16")
    print(f"{name}: bfloat16 state {default:.3g}, float32 state {wide:.3g}, noise {noise:.3g}")
    pinned = PINNED.get(name, UNPINNED)
    assert default <= 1.5 * pinned[0] + noise and wide <= 1.5 * pinned[1] + noise, pinned
    # float32 moments are not worse than bfloat16 ones beyond the noise.
    assert wide <= default + 3 * noise


if __name__ == "__main__":  # the table of the closing note, float16 too
    print("| optimizer | bf16 state | f32 state | noise | fp16: fp16 state | f32 state | noise |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in CHAIN_NAMES:
        cells = [f"{x:.2e}" for d in LOW for x in measure(n, d)]
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


def test_a_broken_optimizer_fails_the_wide_range_property(monkeypatch):
    """The suite can fail: Adam fed the gradients' cubes in their own dtype (float16 overflows at 1e4)."""
    broken = optax.chain(optax.stateless(lambda u, p: jax.tree.map(lambda x: x * x * x, u)), optimizers.adam(0.01))
    monkeypatch.setitem(globals(), "make", lambda name, **kw: broken)
    _wide_range_run.cache_clear()
    try:
        with pytest.raises(AssertionError):
            test_finite_on_gradients_from_1e_8_to_1e4("broken adam")
    finally:
        _wide_range_run.cache_clear()
