"""with_quantized_state: the codes' round trip, Adam step by step against NumPy, memory, composition."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optimizers
from optimizers import checkpoint
from optimizers.wrappers.quantized import blockwise as _blockwise
from optimizers.wrappers.quantized import leafwise as _leafwise
from optimizers.wrappers.quantized import wrapper as _quantized
from optimizers.wrappers.quantized.codes import quantize, table

# The dynamic code from its definition (Dettmers et al. 2022, Section 2.2), in float64: decade e
# of n_e values 10^-e (0.1 + 0.9 j / n_e), j = 1..n_e; 7 decades; signed n_e = 2^(6-e) and both
# signs, unsigned n_e = 2^(7-e); and 0.
def reference_values(signed):
    positive = [10.0**-e * (0.1 + 0.9 * j / n) for e in range(7)
                for n in [2 ** (6 - e + (0 if signed else 1))] for j in range(1, n + 1)]
    values = [0.0] + positive + ([-q for q in positive] if signed else [])
    return np.sort(np.asarray(values))


def reference_dither(y32, position):
    """The signed code's dither: an integer hash of y's float32 bits but the last 12 and of its position."""
    h = (y32.view(np.uint32) >> np.uint32(12)) ^ (position.astype(np.uint32) * np.uint32(0x9E3779B9))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0xC2B2AE35)
    h = h ^ (h >> np.uint32(13))
    return (h >> np.uint32(8)).astype(np.float64) * 2.0**-24


def reference_round_trip(x, signed, block):
    """x / absmax per block of ``block`` (x 1-D, its size a multiple) coded, times absmax. Unsigned: the
    nearest value, at least the smallest positive one for a positive element. Signed: of the two values
    around |y|, the upper one when the fraction of the way to it plus the dither reaches 1 (stochastic
    rounding; y in float32 as the wrapper computes it, for the dither's bits)."""
    values = reference_values(signed)
    blocks = np.asarray(x, np.float64).reshape(-1, block)
    absmax = np.abs(blocks).max(1, keepdims=True)
    y = blocks / np.where(absmax > 0, absmax, 1)
    if not signed:
        nearest = values[np.argmin(np.abs(y[..., None] - values), -1)]
        nearest = np.where((y > 0) & (nearest == 0), values[1], nearest)
        return (nearest * absmax).reshape(np.shape(x))
    f32 = np.abs(blocks.astype(np.float32))
    a32 = f32.max(1, keepdims=True)
    y32 = np.minimum(f32 * np.where(a32 > 0, np.float32(1) / np.where(a32 > 0, a32, 1), 0), np.float32(1))
    magnitudes = values[values >= 0]
    upper = np.minimum(np.searchsorted(magnitudes, np.abs(y)), len(magnitudes) - 1)
    hi, lo = magnitudes[upper], magnitudes[np.maximum(upper - 1, 0)]
    fraction = np.where(hi > lo, (np.abs(y) - lo) / np.where(hi > lo, hi - lo, 1), 1.0)
    up = fraction + reference_dither(y32, np.broadcast_to(np.arange(block), blocks.shape)) >= 1
    return (np.sign(blocks) * np.where(up, hi, lo) * absmax).reshape(np.shape(x))


@jax.jit(static_argnums=(1, 2))
def _round_trip(x, signed, block):
    return optimizers.dequantized(quantize(x, signed, block))


def round_trip(x, signed, block=256):
    return np.asarray(_round_trip(jnp.asarray(x, jnp.float32), signed, block))


def test_tables_are_the_dynamic_code():
    for signed in (True, False):
        t = table(8, signed)
        assert np.isnan(t).sum() == 1
        np.testing.assert_allclose(np.sort(t[np.isfinite(t)]), reference_values(signed), rtol=1e-6, atol=0)


@pytest.mark.parametrize("signed,bound", [(True, 0.9 / 64), (False, 0.45 / 128)])
def test_round_trip_error_bounds_over_magnitudes(signed, bound):
    """A step (signed, stochastic rounding) or half a step (unsigned, nearest) of the top decade, of the
    block's absmax, at every magnitude; the reference's code (but for a few values, one rounding from
    where the dither decides, where the float32 fraction of the way and the float64 one disagree)."""
    rng = np.random.default_rng(0)
    magnitudes = 10.0 ** np.arange(-8, 5)
    x = rng.uniform(-1, 1, (len(magnitudes), 4, 256)) * magnitudes[:, None, None]
    x *= 10.0 ** rng.uniform(-7, 0, x.shape)  # every decade of the code, and below
    x = np.abs(x) if not signed else x
    x[:, 0, :5] = 0.0
    x = np.concatenate([x.reshape(-1), np.zeros(256)]).astype(np.float32)
    got = round_trip(x, signed)
    absmax = np.repeat(np.abs(x).reshape(-1, 256).max(1), 256)
    assert np.all(np.abs(got - x) <= bound * absmax * (1 + 1e-5))
    assert np.all(got[x == 0] == 0) and np.all((got > 0) == (x > 0) if not signed else True)
    top = np.abs(x) >= absmax / 10  # the top decade: 14.1% (signed) or 3.6% (unsigned) of |x|
    assert np.all(np.abs(got - x)[top] <= 10 * bound * np.abs(x)[top] * (1 + 1e-5))
    off = ~np.isclose(got, reference_round_trip(x, signed, 256), rtol=2e-6, atol=0)
    assert off.mean() < 1e-3, off.mean()


def test_signed_rounding_is_unbiased():
    """An average kept in the signed code (m <- 0.99 m + 0.01 g, 600 steps, heavy-tailed g): its stored
    magnitude within 0.5% of the float32 average's; rounding to the nearest code shrinks it (-1.5%)."""
    rng = np.random.default_rng(3)
    m_float, m_coded = np.zeros((32, 256), np.float32), jnp.zeros((32, 256))
    code = jax.jit(lambda m, g: round_trip_jnp(0.99 * m + 0.01 * g))
    for _ in range(600):
        g = (rng.standard_t(3, size=(32, 256)) + 0.3).astype(np.float32)
        m_float = np.float32(0.99) * m_float + np.float32(0.01) * g
        m_coded = code(m_coded, g)
    bias = (np.abs(np.asarray(m_coded)).sum() - np.abs(m_float).sum()) / np.abs(m_float).sum()
    assert abs(bias) < 5e-3, bias


def round_trip_jnp(x):
    return optimizers.dequantized(quantize(x, True, 256))


@pytest.mark.parametrize("signed", [True, False])
def test_non_finite_elements_stay_non_finite(signed):
    x = np.linspace(0.1, 2.0, 256).astype(np.float32)
    x[[3, 100, 200]] = [np.nan, np.inf, -np.inf]
    got = round_trip(x, signed)
    assert np.all(np.isnan(got[[3, 100, 200]]))
    finite = np.isfinite(x)
    assert np.all(np.isfinite(got[finite]))  # the others keep the finite elements' scale
    np.testing.assert_allclose(got[finite], x[finite], rtol=0.15 if signed else 0.08)  # a step, half a step


def test_state_bytes_per_parameter_of_a_1024x1024_leaf():
    params = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}

    def per_param(tx):
        state = jax.eval_shape(optimizers.with_quantized_state(tx).init, params)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / 1024**2

    assert per_param(optimizers.adamw(1e-3)) <= 2.25
    assert per_param(optimizers.sgd(0.1, momentum=0.9)) <= 1.13
    assert per_param(optimizers.lion(1e-4)) <= 1.13


def numpy_adam_step(g, m_q, v_q, t, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, block=256):
    """Dequantized moments -> Adam (float64) -> quantized again, as the wrapper's contract says.

    The betas are float32's (the state keeps them so): 1 - float32(0.999) is 1.3e-5 off 0.001.
    """
    b1, b2 = float(np.float32(b1)), float(np.float32(b2))
    m = b1 * m_q + (1 - b1) * g
    v = b2 * v_q + (1 - b2) * g * g
    u = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return u, reference_round_trip(m, True, block), reference_round_trip(v, False, block)


@pytest.mark.parametrize("min_blocks", [1 << 40, 1], ids=["whole", "block-wise"])
def test_adam_matches_numpy_reference_step_by_step(min_blocks, monkeypatch):
    monkeypatch.setattr(_blockwise, "MIN_BLOCKS", min_blocks)
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(48, 256)).astype(np.float32), "b": rng.normal(size=(8,)).astype(np.float32)}
    tx = optimizers.with_quantized_state(optimizers.adam(1e-2), min_size=1024)
    state = tx.init(params)
    assert isinstance(state[0].mu["w"], optimizers.QuantizedBuffer) and state[0].mu["w"].codes.dtype == jnp.int8
    assert state[0].nu["w"].codes.dtype == jnp.uint8 and state[0].mu["b"].dtype == jnp.float32
    step = jax.jit(tx.update)
    m, v = np.zeros((48, 256)), np.zeros((48, 256))
    for t in range(1, 11):
        g = (rng.normal(size=(48, 256)) * 10.0 ** rng.uniform(-4, 0, (48, 256))).astype(np.float32)
        grads = {"w": g, "b": np.zeros(8, np.float32)}
        u, state = step(grads, state, params)
        want_u, m, v = numpy_adam_step(g.astype(np.float64), m, v, t)
        got = optimizers.dequantized(state[0])
        # float32 moments against float64 ones: a value near a rounding boundary may take the
        # neighbouring code (one step: 1.4% of the block's absmax at most).
        for name, mine, ref in [("m", got.mu["w"], m), ("v", got.nu["w"], v)]:
            off = ~np.isclose(mine, ref, rtol=1e-5, atol=1e-30)
            assert off.mean() < 1e-3, (t, name, off.mean())
            m, v = (np.where(off, mine, m), v) if name == "m" else (m, np.where(off, mine, v))
        np.testing.assert_allclose(u["w"], want_u, rtol=1e-4, atol=1e-9)


def test_peak_temporaries_stay_block_sized():
    """A donated update_and_apply on a 1024 x 1024 leaf: a chunk's float32 temporaries (and the new codes, in
    their own buffer), not the leaf's float32 moments (10 bytes per parameter when the update runs whole)."""
    params = {"w": jnp.zeros((1024, 1024))}
    tx = optimizers.with_quantized_state(optimizers.adamw(1e-3))
    state = tx.init(params)
    compiled = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p),
                       donate_argnums=(0, 1)).lower(params, state, params).compile()
    assert compiled.memory_analysis().temp_size_in_bytes / 1024**2 < 3.1


@functools.lru_cache(maxsize=None)
def runner(tx):
    """``tx``'s steps over stacked grads, compiled once per ``tx``."""
    def body(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.jit(lambda c, gs: jax.lax.scan(body, c, gs)[0])


def run(tx, params, grads, state=None):
    return runner(tx)((params, tx.init(params) if state is None else state), grads)


PARAMS = {"w": jnp.linspace(-1, 1, 2048).reshape(32, 64), "b": jnp.ones(4)}


def grads_of(n, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(n,) + p.shape), jnp.float32), PARAMS)


def quantized(tx, **kw):
    return optimizers.with_quantized_state(tx, min_size=256, **kw)


def test_checkpoint_round_trip_resumes_bit_for_bit(tmp_path):
    """50 steps, a checkpoint (flax msgpack and orbax) restored onto abstract shapes, 50 more: the 100 steps' bits."""
    tx = quantized(optimizers.adamw(optax.cosine_decay_schedule(1e-2, 100)))
    grads = grads_of(100)
    half = lambda k: jax.tree.map(lambda g: g[k * 50:(k + 1) * 50], grads)  # noqa: E731
    straight = run(tx, PARAMS, grads)
    p, s = run(tx, PARAMS, half(0))
    target = jax.eval_shape(tx.init, PARAMS)
    s_bytes = checkpoint.from_bytes(target, checkpoint.to_bytes(s))
    checkpoint.save(tmp_path / "ckpt", s)
    s_orbax = checkpoint.restore(tmp_path / "ckpt", target)
    for restored in (s_bytes, s_orbax):
        assert isinstance(restored[0].mu["w"], optimizers.QuantizedBuffer)
        resumed = run(tx, p, half(1), restored)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)))


def close(a, b, rtol=1e-6, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


def test_composes_with_chain_apply_if_finite_and_inject_hyperparams():
    grads = grads_of(4)
    base = run(quantized(optimizers.adamw(1e-2)), PARAMS, grads)[0]
    # a global clipping inside (not elementwise: the whole update runs) and outside
    clip = run(quantized(optax.chain(optax.clip_by_global_norm(1e9), optimizers.adamw(1e-2))), PARAMS, grads)[0]
    outer = run(optax.chain(optax.clip_by_global_norm(1e9), quantized(optimizers.adamw(1e-2))), PARAMS, grads)[0]
    close(clip, base), close(outer, base)
    injected = optax.inject_hyperparams(lambda learning_rate: quantized(optimizers.adamw(learning_rate)))(
        learning_rate=1e-2)
    close(run(injected, PARAMS, grads)[0], base)
    inner = quantized(optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, weight_decay=0.01))
    close(run(inner, PARAMS, grads)[0], base, rtol=1e-5, atol=1e-6)
    # apply_if_finite outside: a NaN step leaves the quantized state exactly as it was
    tx = optimizers.apply_if_finite(quantized(optimizers.adamw(1e-2)))
    state = tx.init(PARAMS)
    _, state = jax.jit(tx.update)(jax.tree.map(lambda g: g[0], grads), state, PARAMS)
    bad = jax.tree.map(lambda g: g[1].at[0].set(jnp.nan), grads)
    _, skipped = jax.jit(tx.update)(bad, state, PARAMS)
    assert int(skipped.total_skips) == 1
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(skipped.inner_state),
                                                    jax.tree.leaves(state.inner_state)))
    inside = quantized(optimizers.apply_if_finite(optimizers.adamw(1e-2)))
    close(run(inside, PARAMS, grads)[0], base)


def test_hyperparams_lookahead_ema_and_dequantized():
    tx = quantized(optimizers.adamw(1e-2))
    state = optimizers.set_hyperparams(tx.init(PARAMS), learning_rate=5e-3)
    assert float(optimizers.get_hyperparams(state)["learning_rate"]) == pytest.approx(5e-3)
    la = quantized(optimizers.lookahead(optimizer=optimizers.adam(1e-2), sync_period=2))
    p, s = run(la, PARAMS, grads_of(4))
    assert isinstance(s.slow["w"], optimizers.QuantizedBuffer)
    np.testing.assert_allclose(optimizers.slow_params(optimizers.dequantized(s))["w"], p["w"], rtol=0.02, atol=0.02)
    ema = quantized(optax.chain(optimizers.sgd(0.1, momentum=0.9), optimizers.weight_ema(0.5)))
    p, s = run(ema, PARAMS, grads_of(3))
    assert isinstance(s[1].average["w"], optimizers.QuantizedBuffer)
    assert optimizers.averaged_params(optimizers.dequantized(s))["w"].shape == (32, 64)


def test_update_and_apply_and_fused_fallback_match_update():
    grads = jax.tree.map(lambda g: g[0], grads_of(1))
    tx = quantized(optimizers.adamw(1e-2))
    state = tx.init(PARAMS)
    u, s1 = jax.jit(tx.update)(grads, state, PARAMS)
    p2, s2 = jax.jit(lambda g, s, p: optimizers.update_and_apply(tx, g, s, p))(grads, state, PARAMS)
    close(optax.apply_updates(PARAMS, u), p2), close(s1, s2)
    fused = quantized(optimizers.adamw(1e-2, fused=True))
    u3, s3 = jax.jit(fused.update)(grads, fused.init(PARAMS), PARAMS)
    close(u3, u, rtol=1e-5, atol=1e-8)


def test_state_shardings_split_codes_and_scales_like_their_params():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    params = {"a": jnp.ones((32, 1024)), "conv": jnp.ones((3, 3, 8, 32)), "v": jnp.ones((4096,))}
    param_sh = {"a": NamedSharding(mesh, P(None, "model")), "conv": NamedSharding(mesh, P(None, None, None, "model")),
                "v": NamedSharding(mesh, P("model"))}
    tx = optimizers.with_quantized_state(optimizers.adamw(1e-2), min_size=256)
    sh = optimizers.state_shardings(tx, params, param_sh)
    mu = sh[0].mu
    assert mu["a"].codes.spec == P(None, "model") and mu["a"].scales.spec == P(None, "model")  # 1 block a device
    assert mu["conv"].codes.spec == P(None, None, None, "model") and mu["conv"].scales.spec == P(None, None, None)
    assert mu["v"].scales.spec == P("model")
    state = jax.jit(tx.init, out_shardings=sh)(params)
    grads = jax.tree.map(lambda p: p * 0.5, params)
    u, new = jax.jit(tx.update, out_shardings=(None, sh))(grads, state, params)
    u0, new0 = jax.jit(tx.update)(grads, tx.init(params), params)
    close(u, u0, rtol=0, atol=0), close(new, new0, rtol=0, atol=0)


def test_pmap_equals_one_device():
    tx = quantized(optimizers.adamw(1e-2))
    grads = jax.tree.map(lambda g: g[:2], grads_of(2))  # one gradient per device, averaged

    def step(g, s, p):
        g = jax.lax.pmean(g, "i")
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    rep = lambda t: jax.tree.map(lambda x: jnp.stack([x, x]), t)  # noqa: E731
    p, s = jax.pmap(step, axis_name="i")(grads, rep(tx.init(PARAMS)), rep(PARAMS))
    mean = jax.tree.map(lambda g: g.mean(0), grads)
    u, s1 = jax.jit(tx.update)(mean, tx.init(PARAMS), PARAMS)
    close(jax.tree.map(lambda x: x[0], p), optax.apply_updates(PARAMS, u), rtol=1e-6, atol=1e-7)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="bits"):
        optimizers.with_quantized_state(optimizers.adam(1e-3), bits=4)
    for bad in (0, -1, 3, 2.0):
        with pytest.raises(ValueError, match="block_size"):
            optimizers.with_quantized_state(optimizers.adam(1e-3), block_size=bad)
    with pytest.raises(ValueError, match="min_size"):
        optimizers.with_quantized_state(optimizers.adam(1e-3), min_size=0)
    with pytest.raises(ValueError, match="optimizer"):
        optimizers.with_quantized_state(optimizers.sgd(0.1)).init(PARAMS)
    with pytest.raises(ValueError, match="fields"):
        optimizers.register_nonnegative(optimizers.ScaleByAdamState, "sigma")


def _steps(tx, params, grads):
    """``update_and_apply`` over ``grads`` (a list), one compiled step."""
    step = jax.jit(lambda g, s, p: optimizers.update_and_apply(tx, g, s, p))
    p, s = params, tx.init(params)
    for g in grads:
        p, s = step(g, s, p)
    return p, s


LEAVES = {k: jnp.asarray(np.random.default_rng(i).normal(size=s), jnp.float32)
          for i, (k, s) in enumerate({"a": (40, 128), "b": (3, 50, 40), "c": (30,)}.items())}


@pytest.mark.parametrize("make", [lambda: optimizers.lamb(1e-2), lambda: optimizers.adafactor(1e-2)],
                         ids=["lamb", "adafactor"])
def test_leaf_by_leaf_equals_the_whole_update(make, monkeypatch):
    """Per-leaf rules run leaf by leaf: the same operations as the whole update, so the same numbers up to
    float32 rounding (XLA fuses, and so contracts multiply-adds and orders the norms' sums, differently)."""
    rng = np.random.default_rng(1)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), LEAVES) for _ in range(2)]
    tx = optimizers.with_quantized_state(make(), min_size=1024)
    ran = []
    real = _quantized.run_leafwise
    monkeypatch.setattr(_quantized, "run_leafwise", lambda *a, **k: ran.append(real(*a, **k)) or ran[-1])
    p1, s1 = _steps(tx, LEAVES, grads)
    assert ran and ran[-1] is not None
    monkeypatch.setattr(_quantized, "run_leafwise", lambda *a, **k: None)
    p2, s2 = _steps(tx, LEAVES, grads)
    close(p1, p2, rtol=1e-4, atol=1e-6)
    close(optimizers.dequantized(s1), optimizers.dequantized(s2), rtol=1e-5, atol=1e-7)


def test_leaf_by_leaf_peak_and_global_rules_stay_whole(monkeypatch):
    """LAMB on eight leaves: the groups run one after another, so the step's temporaries are well under the
    whole update's (14 bytes per parameter); a global norm clipping reads every leaf, so the dataflow check
    sends it to the whole update."""
    params = {k: jax.ShapeDtypeStruct((32, 256), jnp.float32) for k in "abcdefgh"}
    ran = []
    real = _quantized.run_leafwise
    monkeypatch.setattr(_quantized, "run_leafwise", lambda *a, **k: ran.append(real(*a, **k)) or ran[-1])
    clipped = optimizers.with_quantized_state(optax.chain(optax.clip_by_global_norm(1.0), optimizers.lamb(1e-3)))
    jax.eval_shape(clipped.update, params, jax.eval_shape(clipped.init, params), params)
    assert ran[-1] is None
    tx = optimizers.with_quantized_state(optimizers.lamb(1e-3))
    state = jax.eval_shape(tx.init, params)
    compiled = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p),
                       donate_argnums=(0, 1)).lower(params, state, params).compile()
    assert ran[-1] is not None
    assert compiled.memory_analysis().temp_size_in_bytes / (8 * 32 * 256) < 10.0


@pytest.mark.parametrize("make", [lambda **k: optimizers.lamb(1e-2, **k), lambda **k: optimizers.adafactor(1e-2, **k)],
                         ids=["lamb", "adafactor"])
def test_composes_with_layer_axes(make):
    """A stacked (3, 16, 64) leaf with ``layer_axes=1`` against its layers as three (16, 64) leaves, both 8-bit:
    a layer's 1024 elements are 4 blocks of 256 either way (the scales follow the leading axis), so the
    updates and the dequantized state agree slice for slice."""
    rng = np.random.default_rng(2)
    stacked = {"w": jnp.asarray(rng.normal(size=(3, 16, 64)) * np.array([0.1, 1, 10])[:, None, None], jnp.float32)}
    unroll = lambda t: {f"w{i}": t["w"][i] for i in range(3)}  # noqa: E731
    grads = [{"w": jnp.asarray(rng.normal(size=(3, 16, 64)), jnp.float32)} for _ in range(2)]
    tx_s = optimizers.with_quantized_state(make(layer_axes=1), min_size=512)
    tx_u = optimizers.with_quantized_state(make(), min_size=512)
    p_s, s_s = _steps(tx_s, stacked, grads)
    p_u, s_u = _steps(tx_u, unroll(stacked), [unroll(g) for g in grads])
    assert any(isinstance(x, optimizers.QuantizedBuffer) for x in jax.tree.leaves(s_s, is_leaf=_is_q))
    close(unroll(p_s), p_u, rtol=1e-5, atol=1e-6)
    d_s, d_u = optimizers.dequantized(s_s), optimizers.dequantized(s_u)
    fields = [(a, b) for a, b in zip(_per_param(d_s, stacked), _per_param(d_u, unroll(stacked)))
              if getattr(a["w"], "shape", None) == (3, 16, 64)]  # Adafactor's unused factors are placeholders
    assert fields
    for a, b in fields:
        close(unroll(a), b, rtol=1e-5, atol=1e-7)


def _is_q(x):
    return isinstance(x, optimizers.QuantizedBuffer)


def _per_param(state, params):
    """The per-parameter fields of ``state`` (trees shaped like ``params``), in order."""
    return [_blockwise._at(state, path) for path, _, _ in
            _blockwise.per_param_fields(state, jax.tree.structure(params), _quantized._NONNEGATIVE)]


def test_leaf_by_leaf_path_has_jax_dead_code_pass():
    """The leaf-by-leaf path needs jax's private dead-code pass; if a jax release moves it, this fails
    (instead of every non-elementwise 8-bit update quietly keeping all leaves' float32 state at once)."""
    assert _leafwise.pe is not None and callable(getattr(_leafwise.pe, "dce_jaxpr", None))


@pytest.mark.parametrize("name", sorted(optimizers.contract.registry.declared_optimizers()))
def test_elementwise_declarations_agree_with_the_trace(name):
    """A rule's ``declare_state(elementwise=...)`` is what the block-wise path's trace check finds."""
    from registry import KWARGS

    declared = optimizers.contract.registry.is_elementwise_state
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    tx = getattr(optimizers, name)(**{k: (0.01 if k == "learning_rate" else v) for k, v in KWARGS[name].items()})
    state = tx.init(params)
    def nodes(node):  # every node of the state, nested ones too
        yield node
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (tuple, list)) else ()
        for child in children:
            yield from nodes(child)

    kinds = {declared(type(node)) for node in nodes(state)} - {None}
    traced = _blockwise._trace(tx.update, params, state, params)
    assert traced is not None
    assert kinds and traced[1] == all(kinds), (name, kinds)


@pytest.mark.parametrize("wrap", ["alone", "chain", "multi_steps"])
def test_inside_flax_nnx_optimizer_above_min_size(wrap):
    """``nnx.Optimizer`` hands the 8-bit buffers back as ``nnx.State`` nodes: a 128x128 kernel (above
    ``min_size``) trains under ``nnx.jit`` as the plain-tree run does, step for step."""
    from flax import nnx

    def make():
        tx = optimizers.with_quantized_state(optimizers.adamw(1e-2, weight_decay=0.1))
        if wrap == "chain":
            tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
        return optax.MultiSteps(tx, every_k_schedule=2) if wrap == "multi_steps" else tx

    x = np.random.default_rng(0).normal(size=(8, 128)).astype(np.float32)
    model = nnx.Linear(128, 128, rngs=nnx.Rngs(0))
    plain = jax.tree.map(jnp.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)
    graphdef = nnx.graphdef(model)

    def loss(m):
        return jnp.mean(m(x) ** 2)

    @nnx.jit
    def step(m, opt):
        opt.update(m, nnx.grad(loss)(m))

    tx = make()
    state = tx.init(plain)

    @jax.jit
    def manual(p, s):
        g = jax.grad(lambda q: loss(nnx.merge(graphdef, nnx.State(q))))(p)  # the same loss on a plain dict
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(4):
        step(model, optimizer)
        plain, state = manual(plain, state)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    codes = [v for v in jax.tree.leaves(nnx.as_pure(optimizer.opt_state)) if v.dtype in (jnp.int8, jnp.uint8)]
    assert codes and all(v.shape == (128, 128) for v in codes)  # the kernel's moments kept as 8-bit codes
