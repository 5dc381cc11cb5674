"""with_quantized_state around fused=True optimizers: the 8-bit kernels (kernels/quantized.h) on the CPU.

Each kernel is held against the unfused quantized path (``with_quantized_state(opt(fused=False))``,
XLA's dequantize -> update -> quantize) step by step, both from the same state at every step:
the codes are the same but at rounding ties, the scales, float32 state, updates and params within
float32 roundings. Also: mixed trees (small, masked and empty leaves), non-finite gradients,
in-place donated steps, schedules, checkpoints, and where the generic path runs instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close

import optimizers
from optimizers import checkpoint
from optimizers.wrappers.quantized import blockwise as _blockwise

# Leaves above min_size in blocks of 256, each with a partial last block: 960 elements, and 66,000
# (across the kernels' 65,536-element chunks); leaves that keep float32 state: under min_size,
# masked out, an empty one.
SHAPES = {"w": (24, 40), "big": (66000,), "small": (10,), "masked": (300,), "empty": (0,)}
QUANTIZED = ("w", "big")
MASKED_DECAY = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
KERNELS = {
    "adamw": (lambda f: optimizers.adamw(1e-2, weight_decay=0.1, mask=MASKED_DECAY, fused=f), "adam"),
    "adam schedule": (lambda f: optimizers.adam(optax.cosine_decay_schedule(1e-2, 10), b1=lambda t: 0.9 - 0.01 * t,
                                                fused=f), "adam"),
    "amsgrad": (lambda f: optimizers.amsgrad(1e-2, fused=f), "amsgrad"),
    "adamax": (lambda f: optimizers.adamax(1e-2, fused=f), "adamax"),
    "nadam": (lambda f: optimizers.nadam(1e-2, fused=f), "nadam"),
    "radam": (lambda f: optimizers.radam(1e-2, fused=f), "radam"),
    "adax": (lambda f: optimizers.adax(1e-2, fused=f), "adax"),
    "lion": (lambda f: optimizers.lion(1e-3, weight_decay=0.1, fused=f), "lion"),
    "sgd momentum": (lambda f: optimizers.sgd(0.05, momentum=0.9, fused=f), "sgd"),
    "sgd nesterov decay": (lambda f: optimizers.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01, fused=f),
                           "sgd"),
    "rprop": (lambda f: optimizers.rprop(0.01, fused=f), "rprop"),
    "adagrad": (lambda f: optimizers.adagrad(0.1, initial_accumulator_value=0.1, fused=f), "adagrad"),
    "adadelta": (lambda f: optimizers.adadelta(1.0, fused=f), "adadelta"),
    "rmsprop centered momentum": (lambda f: optimizers.rmsprop(0.01, centered=True, momentum=0.9, fused=f), "rmsprop"),
}
STEPS = 6  # RAdam (threshold 4) rectifies from its 5th step


@pytest.fixture(autouse=True)
def _whole(monkeypatch):
    """The unfused path runs its update whole, not in its block-wise loop (the same numbers,
    test_quantized.py; a third of the compile time)."""
    monkeypatch.setattr(_blockwise, "MIN_BLOCKS", 1 << 40)


SMALL = {"w": SHAPES["w"], "small": SHAPES["small"]}  # the other kernels: their update, on both kinds of leaves


def _tree(seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=s) * 10.0 ** rng.uniform(-3, 0, s)).astype(np.float32) for k, s in shapes.items()}


def _is_coded(x):
    return isinstance(x, optimizers.QuantizedBuffer)


def _quantized(tx, **kw):
    return optimizers.with_quantized_state(tx, min_size=256, mask=lambda p: {k: k != "masked" for k in p}, **kw)


def _both(name, **kw):
    make, target = KERNELS[name]
    return _quantized(make(True), **kw), _quantized(make(False), **kw), f"optimizers_{target}_q8"


def _compiled(fused, plain, params, state):
    """One compiled function of (grads, state, params): the kernel's updates and update_and_apply step,
    the unfused path's updates (its update_and_apply is update, then apply: test_quantized.py)."""
    def both(g, s, p):
        return fused.update(g, s, p), plain.update(g, s, p), optimizers.update_and_apply(fused, g, s, p)

    return jax.jit(both).lower(params, state, params).compile()


def _assert_states_match(got, want):
    """Codes equal but at rounding ties (off by one, rare); scales (the absmax of the same new values)
    within 1e-6; float32 state and hyperparameters within 1e-6 of each leaf's scale; counts exactly.

    The ties: XLA contracts some of the update's multiply-adds (the kernels do not), so a new value,
    and with it a block's scale, can be a rounding off; the signed code's stochastic rounding then
    draws another dither for the values whose top 20 bits it moves (measured: up to 0.2% of the
    codes, each off by one), the unsigned code's nearest rounding only moves exact ties."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got, is_leaf=_is_coded), jax.tree.leaves(want, is_leaf=_is_coded)):
        if _is_coded(a):
            codes, want_codes = np.asarray(a.codes, np.int32), np.asarray(b.codes, np.int32)
            diff = np.abs(codes - want_codes)
            assert a.codes.dtype == b.codes.dtype and diff.max(initial=0) <= 1 and np.mean(diff > 0) < 5e-3
            np.testing.assert_allclose(a.scales, b.scales, rtol=1e-6, atol=0)
        elif a.dtype == jnp.float32:  # (non-finite at the same elements: a float32 moment of a NaN gradient)
            a, b = np.asarray(a), np.asarray(b)
            finite = np.isfinite(b)
            np.testing.assert_array_equal(np.isfinite(a), finite)
            assert_close(np.where(finite, a, 0.0), np.where(finite, b, 0.0), rtol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", KERNELS)
def test_the_kernel_equals_the_unfused_quantized_path(name):
    """Step by step from the unfused path's state: the kernel's codes, scales and float32 state
    are the unfused path's; its updates and new params within 1e-6 of each leaf's scale (the same
    float32 formulas; XLA contracts some products into FMAs, the kernels do not, so a rounding
    or two apart), through ``tx.update`` and :func:`update_and_apply` alike."""
    fused, plain, target = _both(name)
    shapes = SHAPES if name == "adamw" else SMALL  # the leaf kinds and sizes, once; the other kernels' own code
    params = _tree(0, shapes)
    state = plain.init(params)
    coded = [x for x in jax.tree.leaves(state, is_leaf=_is_coded) if _is_coded(x)]
    assert coded and all(x.codes.shape in [SHAPES[k] for k in QUANTIZED] for x in coded)
    step = _compiled(fused, plain, params, state)
    assert step.as_text().count(f'custom_call_target="{target}"') >= 2  # update and step
    for t in range(STEPS):
        grads = _tree(10 + t, shapes)
        (u_f, s_f), (u_p, s_p), (p_f, sp_f) = step(grads, state, params)
        p_p = optax.apply_updates(params, u_p)
        for got, want in [(u_f, u_p), (p_f, p_p)]:
            for k in shapes:
                assert_close(got[k], want[k], rtol=1e-6)
        _assert_states_match(s_f, s_p), _assert_states_match(sp_f, s_p)
        state, params = s_p, p_p


@pytest.mark.parametrize("block_size", [64, 2048])
def test_other_block_sizes(block_size):
    """Blocks smaller than the kernel's tile of 1,024 elements, and larger (a tile of one block)."""
    fused, plain, _ = _both("adamw", block_size=block_size)
    shapes = {"w": SHAPES["w"], "big": SHAPES["big"]}
    params = _tree(0, shapes)
    state = plain.init(params)
    step = jax.jit(lambda g, s, p: (fused.update(g, s, p), plain.update(g, s, p)))
    for t in range(3):
        (u_f, s_f), (u_p, s_p) = step(_tree(10 + t, shapes), state, params)
        for k in shapes:
            assert_close(u_f[k], u_p[k], rtol=1e-6)
        _assert_states_match(s_f, s_p)
        state = s_p


def test_non_finite_gradients_stay_non_finite_at_their_elements():
    fused, plain, _ = _both("adamw")
    params, grads = _tree(0), _tree(1)
    bad = {"w": (3, 7), "big": (65600,), "masked": (0,)}
    for (k, at), value in zip(bad.items(), [np.nan, np.inf, -np.inf]):
        grads[k][at] = value
    state = want = fused.init(params)
    step, plain_step = jax.jit(fused.update), jax.jit(plain.update)
    for _ in range(2):
        updates, state = step(grads, state, params)
        want = plain_step(grads, want, params)[1]
    _assert_states_match(state, want)
    m, v = optimizers.dequantized(state[0].mu), optimizers.dequantized(state[0].nu)
    for k, at in bad.items():
        for x in (m[k], v[k], updates[k]):
            x = np.array(x)
            assert not np.isfinite(x[at])  # NaN from the codes, +-inf or NaN in float32 state
            x[at] = 0.0
            assert np.all(np.isfinite(x))


def test_donated_step_updates_params_and_codes_in_place():
    fused, _, _ = _both("adamw")
    params = jax.tree.map(jnp.asarray, _tree(0))
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), fused.init(params))
    step = jax.jit(lambda p, s, g: optimizers.update_and_apply(fused, g, s, p), donate_argnums=(0, 1))
    text = step.lower(params, state, params).compile().as_text()
    assert "optimizers_adam_q8" in text
    assert not [line for line in text.splitlines() if " copy(" in line and ("f32[66000]" in line or "8[66000]" in line)]
    buffers = lambda p, s: (p["big"].unsafe_buffer_pointer(), s[0].mu["big"].codes.unsafe_buffer_pointer(),  # noqa
                            s[0].nu["big"].scales.unsafe_buffer_pointer())
    before = buffers(params, state)
    params, state = step(params, state, jax.tree.map(jnp.asarray, _tree(1)))
    assert buffers(params, state) == before


def test_checkpoint_round_trip_resumes_bit_for_bit():
    fused, _, _ = _both("adam schedule")
    params, grads = _tree(0), [_tree(10 + t) for t in range(4)]
    step = jax.jit(lambda p, s, g: optimizers.update_and_apply(fused, g, s, p))
    p, s = params, fused.init(params)
    for t, g in enumerate(grads):
        p, s = step(p, s, g)
        if t == 1:
            half = (p, checkpoint.from_bytes(jax.eval_shape(fused.init, params), checkpoint.to_bytes(s)))
    p2, s2 = half
    for g in grads[2:]:
        p2, s2 = step(p2, s2, g)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((p2, s2))):
        np.testing.assert_array_equal(a, b)


def test_where_the_kernel_does_not_apply_the_generic_path_runs():
    """A chain around the fused optimizer, inject_hyperparams, float32 state everywhere: no 8-bit kernel."""
    params = _tree(0)

    def targets(tx):  # (the 8-bit kernel, the float32 one) in the lowered update
        text = jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
        return "@optimizers_adam_q8(" in text, "@optimizers_adam(" in text

    assert targets(_quantized(optimizers.adam(1e-2, fused=True))) == (True, True)  # the small leaves: float32
    # the chain's update is not the kernel's: the generic path, the float32 kernel on the dequantized state
    assert targets(_quantized(optax.chain(optax.clip(1.0), optimizers.adam(1e-2, fused=True)))) == (False, True)
    injected = optax.inject_hyperparams(optimizers.adam, static_args=("fused",))(learning_rate=1e-2, fused=True)
    assert targets(_quantized(injected))[0] is False
    # no leaf large enough: float32 state, the float32 kernel alone
    assert targets(optimizers.with_quantized_state(optimizers.adam(1e-2, fused=True), min_size=1 << 20)) == \
        (False, True)
