"""``layer_axes``: a stacked (scanned) leaf gets the statistics of its layers, as if unrolled.

The contract, for every transform whose rule reduces over a leaf: N steps on a tree of
stacked leaves with ``layer_axes`` equal N steps without it on the unrolled tree (each layer
its own leaf), slice for slice; and the run without ``layer_axes`` on the stacked tree (one
statistic over all layers) differs. The unrolled run is the reference: it is the existing,
separately tested per-leaf rule. The layers of every stacked leaf are scaled differently
(0.1x, 1x, 10x) so that per-leaf and per-layer statistics are far apart.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optimizers

STEPS = 3
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# Three layers of matrices and of vectors (L = 3), a single layer (L = 1), a leaf with two
# layer axes (L1, L2) = (2, 2), and a leaf that is one layer. Few leaves: compile time grows
# with them (the unrolled tree has 12).
SHAPES = {"blocks": {"w": (3, 4, 3), "b": (3, 3)}, "single": (1, 4, 3), "deep": (2, 2, 4, 3), "head": (3,)}
PREFIX = {"blocks": 1, "single": 1, "deep": 2, "head": None}


def by_rank(params):
    """The callable form: leaves of rank 4 have two layer axes, the head none, the rest one."""
    return {k: jax.tree.map(lambda p: {4: 2, 1: 0}.get(p.ndim, 1), v) for k, v in params.items()}


def _layered(rng, shape, k):
    """Normal entries, the layers (slices of the first ``k`` axes) scaled 0.1x, 1x, 10x in turn."""
    x = rng.normal(size=shape)
    if k:
        n = int(np.prod(shape[:k]))
        x = x * (10.0 ** (np.arange(n) % 3 - 1)).reshape(shape[:k] + (1,) * (len(shape) - k))
    return x.astype(np.float32)


COUNTS = {"blocks": {"w": 1, "b": 1}, "single": 1, "deep": 2, "head": 0}  # PREFIX, leaf by leaf


def _tree(rng, extra=()):
    return jax.tree.map(lambda s, k: _layered(rng, extra + s, k + len(extra)), SHAPES, COUNTS,
                        is_leaf=lambda x: isinstance(x, tuple))


_rng = np.random.default_rng(0)
PARAMS = _tree(_rng)
GRADS = _tree(_rng, (STEPS,))  # a leading axis of steps


def unroll(x, k, lead=0):
    """A leaf with ``k`` layer axes (after ``lead`` others) as nested lists of its layers."""
    if k == 0:
        return x
    return [unroll(x[(slice(None),) * lead + (i,)], k - 1, lead) for i in range(x.shape[lead])]


def restack(t, k):
    return t if k == 0 else np.stack([restack(e, k - 1) for e in t])


def _run(tx, params, grads):
    """``STEPS`` steps, one scan over the grads' leading axis; the final params."""
    def step(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (params, tx.init(params)), grads)[0][0]


def run(tx, params=PARAMS, grads=GRADS):
    """:func:`_run` compiled (at XLA's lowest optimisation level: a third of the compile time)."""
    return jax.device_get(jax.jit(functools.partial(_run, tx), compiler_options=FAST_COMPILE)(params, grads))


def program(tx, params=PARAMS, grads=GRADS) -> str:
    """:func:`_run`'s jaxpr: equal programs give equal results, bit for bit, without running."""
    return str(jax.make_jaxpr(functools.partial(_run, tx))(params, grads))


def run_unrolled(tx, grads=GRADS):
    """The run on the unrolled tree (each layer its own leaf), its result stacked back."""
    params = jax.tree.map(unroll, PARAMS, COUNTS)
    grads = jax.tree.map(lambda g, k: unroll(g, k, lead=1), grads, COUNTS)
    out = run(tx, params, grads)
    return jax.tree.map(restack, out, COUNTS, is_leaf=lambda x: isinstance(x, list))


def _direction(transform, **kw):
    def make(layer_axes):
        return optax.chain(transform(**kw, layer_axes=layer_axes), optimizers.scale_by_learning_rate(0.1))

    return make


# name -> layer_axes -> transformation; the last link scales by a learning rate where the
# transform alone returns a direction. Adafactor factors from 2 (the leaves are small).
TABLE = {
    "scale_by_trust_ratio": _direction(optimizers.scale_by_trust_ratio),
    "scale_by_lars": _direction(optimizers.scale_by_lars, weight_decay=0.1, trust_coefficient=0.5),
    "lars": lambda la: optimizers.lars(0.1, weight_decay=0.1, trust_coefficient=0.5, layer_axes=la),
    "lamb": lambda la: optimizers.lamb(0.1, weight_decay=0.1, layer_axes=la),
    "scale_by_novograd": _direction(optimizers.scale_by_novograd, weight_decay=0.01),
    "novograd": lambda la: optimizers.novograd(0.1, layer_axes=la),
    "scale_by_factored_rms": _direction(optimizers.scale_by_factored_rms, min_dim_size_to_factor=2),
    "clip_by_block_rms": _direction(optimizers.clip_by_block_rms),
    "scale_by_param_block_rms": _direction(optimizers.scale_by_param_block_rms),
    "adafactor": lambda la: optimizers.adafactor(0.1, b1=0.9, min_dim_size_to_factor=2, layer_axes=la),
    "scale_by_sm3": _direction(optimizers.scale_by_sm3),
    "sm3": lambda la: optimizers.sm3(0.1, variant="II", layer_axes=la),
    "scale_by_amos": _direction(optimizers.scale_by_amos, xi=0.1, eta=0.5, granularity="leaf"),
    "amos": lambda la: optimizers.amos(0.1, 0.5, granularity="last_axis", layer_axes=la),
    "scale_by_muon": _direction(optimizers.scale_by_muon),
    "muon": lambda la: optimizers.muon(0.1, weight_decay=0.1, layer_axes=la),
    "normuon": lambda la: optimizers.normuon(0.1, weight_decay=0.1, layer_axes=la),
}


def _max_error(got, want):
    return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
               for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_stacked_run_equals_the_unrolled_run(name):
    """A prefix tree (and a callable) give the unrolled run, slice for slice; no layer_axes differs."""
    want = run_unrolled(TABLE[name](None))
    for a, b in zip(jax.tree.leaves(run(TABLE[name](PREFIX))), jax.tree.leaves(want), strict=True):
        assert_close(a, b, 1e-5)  # float32: the same operations per slice, in another order
    assert program(TABLE[name](by_rank)) == program(TABLE[name](PREFIX))  # the callable: the same steps
    wrong = run(TABLE[name](None))
    assert _max_error(wrong, want) > 1e-3  # one statistic over all layers is another optimizer
    assert program(TABLE[name](0)) == program(TABLE[name](None))  # 0 layer axes: today's rule exactly


def test_state_shapes_follow_the_layers():
    """Per-layer statistics keep the layer axes in front: NovoGrad's v, Adafactor's rows and
    columns (and a stack of vectors is not factored), SM3's covers, Amos's shared slots."""
    nu = optimizers.scale_by_novograd(layer_axes=PREFIX).init(PARAMS).nu
    assert jax.tree.map(np.shape, nu) == {"blocks": {"w": (3,), "b": (3,)}, "single": (1,), "deep": (2, 2), "head": ()}
    rms = optimizers.scale_by_factored_rms(min_dim_size_to_factor=2, layer_axes=PREFIX).init(PARAMS)
    assert rms.v_row["deep"].shape == (2, 2, 4) and rms.v_col["deep"].shape == (2, 2, 3)
    assert rms.v["blocks"]["b"].shape == (3, 3) and rms.v_row["blocks"]["b"].shape == (0,)
    unstacked = optimizers.scale_by_factored_rms(min_dim_size_to_factor=2).init(PARAMS)
    assert unstacked.v_row["blocks"]["b"].shape == (3,)  # without layer_axes: a 3 x 3 matrix
    mu = optimizers.scale_by_sm3(layer_axes=PREFIX).init(PARAMS).mu
    assert jax.tree.map(np.shape, mu) == {"blocks": {"w": (3, 7), "b": (3, 3)}, "single": (1, 7),
                                          "deep": (2, 2, 7), "head": (3,)}
    v = optimizers.scale_by_amos(0.1, 0.5, granularity="leaf", layer_axes=PREFIX).init(PARAMS).v
    assert v["deep"].shape == (2, 2, 1, 1) and v["head"].shape == (1,)


# optax's keywords (issue 19) together with layer_axes: each is a per-layer rule too.
WITH_OPTAX_KEYWORDS = {
    "scale_by_trust_ratio(min_norm)": _direction(optimizers.scale_by_trust_ratio, min_norm=0.5),
    "lamb(eps_root, fused)": lambda la: optimizers.lamb(0.1, weight_decay=0.1, eps_root=1e-6, fused=True,
                                                        layer_axes=la),
    "novograd(eps_root)": lambda la: optimizers.novograd(0.1, eps_root=1e-4, layer_axes=la),
    "scale_by_sm3(b1, b2)": _direction(optimizers.scale_by_sm3, b1=0.9, b2=0.99, variant="II"),
    "adafactor(momentum, decay_offset, weight_decay_rate)": lambda la: optimizers.adafactor(
        0.1, momentum=0.9, min_dim_size_to_factor=2, decay_offset=1, weight_decay_rate=1e-3, layer_axes=la),
    "amos(momentum)": lambda la: optimizers.amos(0.1, 0.5, granularity="leaf", momentum=0.9, layer_axes=la),
}


@pytest.mark.parametrize("name", sorted(WITH_OPTAX_KEYWORDS))
def test_optax_keywords_with_layer_axes_equal_the_unrolled_run(name):
    make = WITH_OPTAX_KEYWORDS[name]
    for a, b in zip(jax.tree.leaves(run(make(PREFIX))), jax.tree.leaves(run_unrolled(make(None))), strict=True):
        assert_close(a, b, 1e-5)


def test_state_dtypes_with_layer_axes():
    """``mu_dtype``/``nu_dtype`` set the per-layer buffers' dtype; their shapes still follow the
    layers, and an update keeps both."""
    bf16 = jnp.bfloat16
    cases = [
        (optimizers.scale_by_novograd(mu_dtype=bf16, nu_dtype=bf16, layer_axes=PREFIX), lambda s: s.nu,
         {"blocks": {"w": (3,), "b": (3,)}, "single": (1,), "deep": (2, 2), "head": ()}),
        (optimizers.scale_by_sm3(b1=0.9, nu_dtype=bf16, mu_dtype=bf16, layer_axes=PREFIX), lambda s: s[0].mu,
         {"blocks": {"w": (3, 7), "b": (3, 3)}, "single": (1, 7), "deep": (2, 2, 7), "head": (3,)}),
        (optimizers.scale_by_amos(0.1, 0.5, granularity="leaf", nu_dtype=bf16, layer_axes=PREFIX), lambda s: s.b,
         {"blocks": {"w": (3, 1, 1), "b": (3, 1)}, "single": (1, 1, 1), "deep": (2, 2, 1, 1), "head": (1,)}),
        (optimizers.adafactor(0.1, b1=0.9, min_dim_size_to_factor=2, mu_dtype=bf16, nu_dtype=bf16, layer_axes=PREFIX),
         lambda s: s[0].v_col, {"blocks": {"w": (3, 3), "b": (0,)}, "single": (1, 3), "deep": (2, 2, 3), "head": (0,)}),
    ]
    for tx, pick, shapes in cases:
        state = jax.eval_shape(tx.init, PARAMS)
        assert jax.tree.map(lambda x: x.shape, pick(state)) == shapes
        buffers = [x for x in jax.tree.leaves(state) if x.ndim and x.size]
        assert buffers and all(x.dtype == bf16 for x in buffers), [(x.shape, x.dtype) for x in buffers]
        _, new = jax.eval_shape(tx.update, PARAMS, state, PARAMS)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), new) == jax.tree.map(lambda x: (x.shape, x.dtype), state)


def test_fused_runs_the_chain_with_layer_axes():
    """The kernels take one statistic per leaf: with layer_axes ``fused=True`` is the chain."""
    for make in (lambda **kw: optimizers.lamb(0.1, weight_decay=0.1, **kw),
                 lambda **kw: optimizers.lars(0.1, **kw), lambda **kw: optimizers.novograd(0.1, **kw),
                 lambda **kw: optimizers.adafactor(0.1, min_dim_size_to_factor=2, **kw),
                 lambda **kw: optimizers.sm3(0.1, **kw)):
        assert program(make(layer_axes=PREFIX, fused=True)) == program(make(layer_axes=PREFIX))
    with pytest.raises(ValueError, match="flat_state"):
        optimizers.lamb(0.1, fused=True, flat_state=True, layer_axes=PREFIX)


def test_fused_amos_keeps_its_kernel():
    """Amos's kernel (one slot per entry, where layers change nothing) still runs with layer_axes."""
    tx = optimizers.amos(0.1, 0.5, fused=True, layer_axes=PREFIX)
    want = run(optimizers.amos(0.1, 0.5))
    for a, b in zip(jax.tree.leaves(run(tx)), jax.tree.leaves(want), strict=True):
        assert_close(a, b, 1e-6)  # the kernel's float32 operations, in its order
    assert "optimizers_amos" in str(jax.make_jaxpr(lambda s, g: tx.update(g, s, PARAMS))(
        tx.init(PARAMS), jax.tree.map(lambda g: g[0], GRADS)))


def test_apply_if_finite_and_checkpoints_keep_per_layer_state():
    """A non-finite step is skipped as on the unrolled tree; a state saved and restored mid-run
    (``to_bytes``/``from_bytes``) resumes the run exactly."""
    grads = jax.tree.map(lambda g: g.copy(), GRADS)
    grads["blocks"]["w"][1, 2, 0, 0] = np.nan  # the third layer's gradient at step 1
    tx = lambda la: optimizers.apply_if_finite(optimizers.lamb(0.1, layer_axes=la),
                                               max_consecutive_skips=3)  # noqa: E731
    want = run_unrolled(tx(None), grads)
    got = run(tx(PREFIX), grads=grads)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(a, b, 1e-5)
    assert np.all(np.isfinite(got["blocks"]["w"]))

    for tx in (optimizers.adafactor(0.1, b1=0.9, min_dim_size_to_factor=2, layer_axes=PREFIX),
               optimizers.sm3(0.1, layer_axes=by_rank)):
        step = jax.jit(lambda s, g, tx=tx: tx.update(g, s, PARAMS)[1], compiler_options=FAST_COMPILE)
        state = step(tx.init(PARAMS), jax.tree.map(lambda g: g[0], GRADS))
        restored = optimizers.from_bytes(tx.init(PARAMS), optimizers.to_bytes(state))
        g = jax.tree.map(lambda g: g[1], GRADS)
        for a, b in zip(jax.tree.leaves(step(restored, g)), jax.tree.leaves(step(state, g)), strict=True):
            np.testing.assert_array_equal(a, b)


def _sharded_setup():
    rng = np.random.default_rng(1)
    params = {"w": _layered(rng, (8, 4, 3), 1), "b": _layered(rng, (8, 3), 1)}
    grads = {"w": _layered(rng, (STEPS, 8, 4, 3), 2), "b": _layered(rng, (STEPS, 8, 3), 2)}
    return params, grads


SHARDED = ["lamb", "novograd", "adafactor", "sm3", "scale_by_amos", "muon"]  # one per family


def _collectives(tx, params, grads, p_sh, g_sh):
    step = jax.jit(functools.partial(_run, tx), in_shardings=(p_sh, g_sh), out_shardings=p_sh,
                   compiler_options=FAST_COMPILE)
    compiled = step.lower(params, grads).compile()
    hlo = compiled.as_text()
    ops = [op for op in ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter") if op in hlo]
    return ops, compiled


@pytest.mark.parametrize("name", SHARDED)
def test_layers_sharded_over_devices_need_no_communication(name):
    """8 layers, one per device: sharded jit gives the one-device run, with no collective op
    (the state's shardings, from ``state_shardings``, follow the layers too)."""
    params, grads = _sharded_setup()
    tx = TABLE[name](1)  # one int: every leaf has one layer axis
    mesh = jax.make_mesh((8,), ("layers",), axis_types=(AxisType.Auto,))
    p_sh, g_sh = NamedSharding(mesh, P("layers")), NamedSharding(mesh, P(None, "layers"))
    s_sh = optimizers.state_shardings(tx, params, p_sh)
    for leaf, sh in zip(jax.tree.leaves(jax.eval_shape(tx.init, params)), jax.tree.leaves(s_sh), strict=True):
        if leaf.ndim and leaf.shape[0] == 8:  # per-layer state lives with its layers
            assert sh.spec[0] == "layers", (leaf.shape, sh.spec)
    ops, compiled = _collectives(tx, params, grads, p_sh, g_sh)
    assert ops == []
    got = jax.device_get(compiled(jax.device_put(params, p_sh), jax.device_put(grads, g_sh)))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(run(tx, params, grads)), strict=True):
        assert_close(a, b, 1e-6)
    if name == "lamb":  # the check can fail: one norm over all layers needs an all-reduce
        assert "all-reduce" in _collectives(TABLE[name](None), params, grads, p_sh, g_sh)[0]


@pytest.mark.parametrize("name", ["lamb"])
def test_pmap_replicas_match_one_device(name):
    """Data parallel: every device holds all layers, the gradients averaged; one device's run."""
    params, _ = _sharded_setup()
    rng = np.random.default_rng(2)
    per_device = jax.tree.map(lambda p: (rng.integers(-64, 65, (8, STEPS) + p.shape) / 64).astype(np.float32), params)
    mean = jax.tree.map(lambda g: g.mean(0), per_device)  # dyadic: exact in any summation order
    tx = TABLE[name](1)
    replicated = jax.tree.map(lambda p: np.broadcast_to(p, (8,) + p.shape), params)
    got = jax.pmap(lambda p, g: _run(tx, p, jax.lax.pmean(g, "devices")), axis_name="devices")(replicated, per_device)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(run(tx, params, mean)), strict=True):
        np.testing.assert_array_equal(a, np.broadcast_to(a[0], a.shape))
        assert_close(a[0], b, 1e-6)


@pytest.mark.parametrize("bad, match", [
    ({"blocks": -1, "single": 1, "deep": 2, "head": 0}, r"non-negative ints.*-1 at \['blocks'\]"),
    ({"blocks": 1.5, "single": 1, "deep": 2, "head": 0}, r"non-negative ints.*1.5 at \['blocks'\]"),
    ({"blocks": {"w": True, "b": 1}, "single": 1, "deep": 2, "head": 0}, r"True at \['blocks'\]\['w'\]"),
])
def test_a_count_that_is_no_count_fails_when_built(bad, match):
    for make in TABLE.values():
        with pytest.raises(ValueError, match=match):
            make(bad)
    with pytest.raises(ValueError, match=match):  # a function's counts: when it is called
        optimizers.lamb(0.1, layer_axes=lambda p: bad).init(PARAMS)


@pytest.mark.parametrize("bad, match", [
    ({"blocks": 1, "single": 1, "deep": 5, "head": 0}, r"\['deep'\] 5 layer axes, more than its 4"),
    ({"blocks": {"w": 1, "b": 3}, "single": 1, "deep": 2, "head": 0}, r"\['blocks'\]\['b'\] 3 layer axes"),
    (2, r"\['head'\] 2 layer axes, more than its 1"),
    ({"blocks": 1, "single": 1, "deep": 2, "head": 0, "extra": 1}, r"\['extra'\] is in layer_axes but not"),
    ({"blocks": 1, "single": 1, "deep": 2}, r"the params' \['head'\] has no entry in layer_axes"),
    ({"blocks": [1, 1], "single": 1, "deep": 2, "head": 0}, r"\['blocks'\]\[0\] is in layer_axes but not"),
])
def test_counts_that_do_not_fit_the_params_fail_at_init(bad, match):
    for make in TABLE.values():
        for layer_axes in (bad, lambda p: bad):
            with pytest.raises(ValueError, match=match):
                make(layer_axes).init(PARAMS)


def test_counts_from_flax_scan_metadata():
    """linen's nn.scan and nnx's vmap put the scan's partition name first on the stacked params."""
    import flax.linen as nn
    from flax import nnx

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
            return nn.Dense(3, kernel_init=init)(x), None

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=2,
                        metadata_params={nn.PARTITION_NAME: "layers"})(name="blocks")(x, None)[0]
            return nn.Dense(2, name="head")(x)

    boxed = jax.eval_shape(Model().init, jax.random.key(0), jnp.ones((1, 3)))["params"]
    counts = optimizers.layer_axes_from_flax(boxed)
    # The kernel is boxed; the bias (no names) is one layer to the helper: annotate every param.
    assert counts == {"blocks": {"Dense_0": {"kernel": 1, "bias": 0}}, "head": {"kernel": 0, "bias": 0}}
    params = nn.unbox(boxed)
    tx = optimizers.lamb(0.1, layer_axes=counts)
    jax.eval_shape(lambda p: tx.update(p, tx.init(p), p), params)  # a prefix of the unboxed params too

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.kernel = nnx.Param(jnp.ones((3, 3)), out_sharding=(None, "model"))

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def stack(key):
        return Block(nnx.Rngs(key))

    with nnx.use_eager_sharding(False):
        blocks = stack(jax.random.split(jax.random.key(0), 4))
    assert blocks.kernel.shape == (4, 3, 3)
    assert jax.tree.leaves(optimizers.layer_axes_from_flax(blocks)) == [1]
    assert jax.tree.leaves(optimizers.layer_axes_from_flax(nnx.state(blocks, nnx.Param))) == [1]

    nested = {"k": nn.Partitioned(jnp.ones((2, 3, 4)), ("stage", "layers", None))}
    assert optimizers.layer_axes_from_flax(nested, names=("layers", "stage")) == {"k": 2}
    with pytest.raises(ValueError, match=r"\['k'\] has partition names \('stage', 'layers', None\)"):
        optimizers.layer_axes_from_flax(nested)
    # Stacked params without the scan's metadata (here unboxed): all zeros would be one layer
    # everywhere, a silent wrong answer; it is an error that says what to do.
    with pytest.raises(ValueError, match="no param carries the partition name"):
        optimizers.layer_axes_from_flax(params)


def test_a_dict_prefix_works_inside_flax_nnx_optimizer():
    """``nnx.Optimizer`` hands the params as ``State`` nodes of ``Param`` variables: a plain-dict
    ``layer_axes`` prefix (the guide's) still matches them, and the step is the plain-tree step."""
    from flax import nnx

    class Stacked(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.Param(jax.random.normal(rngs.params(), (3, 4, 4)))
            self.head = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            for i in range(3):
                x = jnp.tanh(x @ self.blocks[i])
            return self.head(x)

    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    layer_axes = {"blocks": 1, "head": 0}
    model = Stacked(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    plain = jax.tree.map(jnp.array, nnx.to_pure_dict(params))
    optimizer = nnx.Optimizer(model, optimizers.lamb(1e-2, layer_axes=layer_axes), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    plain_grads = nnx.to_pure_dict(grads)
    optimizer.update(model, grads)
    tx = optimizers.lamb(1e-2, layer_axes=layer_axes)
    updates, _ = tx.update(plain_grads, tx.init(plain), plain)
    want = optax.apply_updates(plain, updates)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
