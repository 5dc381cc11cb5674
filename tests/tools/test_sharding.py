"""Many devices: pmap and sharded jit give the one-device result; the state shards with the params.

Every optimizer of the conformance suite (``ALIASES``) runs 10 steps on the 8 CPU devices of
``conftest.py``. The gradients are multiples of 1/64 with small numerators, so the mean of the
8 devices' gradients is exact in float32 whatever the order of the sum: any difference from
the one-device run comes from the optimizer, not from ``pmean``'s summation order. The jitted
steps are compiled at XLA's lowest CPU optimisation level (``FAST_COMPILE``), three times
faster to compile on a 2-core machine; the values agree to float32 rounding either way.
"""

import functools
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close
from jax.sharding import AxisType, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P
from registry import ALIASES, make

import optimizers

STEPS, N = 10, 8
# Matrices Adafactor factors (>= 128), split along rows and along columns; a 3-D leaf split
# in the middle; a leaf 8 does not divide (replicated); a scalar. Few leaves: compile time
# grows with them.
SHAPES = {"rows": (256, 128), "cols": (128, 256), "stack": (2, 8, 4), "odd": (5, 3), "scale": ()}
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _tree(fn):
    return {k: fn(s) for k, s in SHAPES.items()}


def _dyadic(rng, shape):
    """``k/2^20`` with ``|k| <= 2^20``: sums of 8 of them (at most 2^23 units) and their mean are exact in
    float32, so pmap's mean of the replicas is the one device's gradient. (Coarser values, k/64, made
    momenta cancel to about 0, where a sign rule (signum) steps on the last bit of a rounding that
    two programs may do differently.)"""
    return (rng.integers(-2**20, 2**20 + 1, size=shape) / 2**20).astype(np.float32)


_rng = np.random.default_rng(0)
PARAMS = _tree(lambda s: _rng.normal(size=s).astype(np.float32))
DEVICE_GRADS = [_tree(lambda s: _dyadic(_rng, (N,) + s)) for _ in range(STEPS)]
GRADS = [jax.tree.map(lambda g: g.mean(0, dtype=np.float64).astype(np.float32), g) for g in DEVICE_GRADS]


def _mesh(n=N, names=("model",), shape=None):
    shape = shape or (n,)
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=jax.devices()[:n])


def _step(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _one_device(tx):
    step = jax.jit(functools.partial(_step, tx), compiler_options=FAST_COMPILE)
    params, state = PARAMS, tx.init(PARAMS)
    for g in GRADS:
        params, state = step(params, state, g)
    return jax.device_get((params, state))


def _pmap(tx):
    step = jax.pmap(lambda p, s, g: _step(tx, p, s, jax.lax.pmean(g, "devices")), axis_name="devices")
    params = jax.tree.map(lambda x: np.broadcast_to(x, (N,) + x.shape), PARAMS)
    state = jax.pmap(tx.init, axis_name="devices")(params)
    # Inputs placed where pmap puts its outputs, so that the step compiles once, not twice.
    params, grads = jax.device_put((params, DEVICE_GRADS), jax.tree.leaves(state)[0].sharding)
    for g in grads:
        params, state = step(params, state, g)
    return jax.device_get((params, state))


def _sharded_jit(tx, mesh, local=False):
    """10 steps with params split by ``fsdp_shardings`` and the state by ``state_shardings``.

    ``local=True`` runs the step under ``shard_map`` instead: each device sees only its
    shards, which is what a per-shard (wrong) norm would compute.
    """
    p_sh = optimizers.fsdp_shardings(PARAMS, mesh, "model")
    s_sh = optimizers.state_shardings(tx, PARAMS, p_sh)
    step = functools.partial(_step, tx)
    if local:
        specs = lambda t: jax.tree.map(lambda s: s.spec, t)  # noqa: E731
        step = jax.shard_map(step, mesh=mesh, in_specs=(specs(p_sh), specs(s_sh), specs(p_sh)),
                             out_specs=(specs(p_sh), specs(s_sh)), check_vma=False)
    step = jax.jit(step, in_shardings=(p_sh, s_sh, p_sh), out_shardings=(p_sh, s_sh), compiler_options=FAST_COMPILE)
    params = jax.device_put(PARAMS, p_sh)
    state = jax.jit(tx.init, out_shardings=s_sh)(params)
    for g in GRADS:
        params, state = step(params, state, g)
    for x, s in zip(jax.tree.leaves((params, state)), jax.tree.leaves((p_sh, s_sh)), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    return jax.device_get((params, state))


def _assert_trees_close(got, want, rtol=2e-5):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(a, b, rtol)


@pytest.mark.parametrize("name", ALIASES)
def test_pmap_and_sharded_jit_match_one_device(name):
    """Params and state after 10 steps: pmap (replicas), sharded jit (split) and one device."""
    kw, rtol = SINGULAR_FIRST_STATISTIC.get(name, ({}, 2e-5))
    want = _one_device(make(name, **kw))
    params, state = _pmap(make(name, **kw))
    for x in jax.tree.leaves((params, state)):  # every device holds the same replica
        np.testing.assert_array_equal(x, np.broadcast_to(x[0], x.shape))
    _assert_trees_close(jax.tree.map(lambda x: x[0], (params, state)), want)
    _assert_trees_close(_sharded_jit(make(name, **kw), _mesh()), want, rtol)


# SOAP's first eigenbasis of a singular statistic (G Gᵀ of one (256, 128) gradient) is arbitrary in its null
# space, and near-equal eigenvalues swap order, so another rounding (a sharded reduction) gives another trajectory:
# bases only for the axes up to 8 (the stack, sharded on its axis of 8; the others' eigh/QR would also be slow).
SINGULAR_FIRST_STATISTIC = {"soap": (dict(max_precond_dim=8), 2e-5)}


def test_layerwise_norms_are_global_not_per_shard():
    """The check above can tell: per-shard trust ratios (shard_map) differ, sharded jit does not."""
    tx = optax.chain(optimizers.scale_by_adam(), optax.scale_by_trust_ratio(), optimizers.scale_by_learning_rate(0.1))
    want = _one_device(tx)[0]
    _assert_trees_close(_sharded_jit(tx, _mesh())[0], want)
    local = _sharded_jit(tx, _mesh(), local=True)[0]
    assert not np.allclose(local["rows"], want["rows"], rtol=1e-3)  # split: per-shard norms are wrong
    np.testing.assert_allclose(local["odd"], want["odd"], rtol=1e-5)  # replicated: each device has it all


def test_uneven_leaf_cannot_be_split_and_is_replicated():
    mesh, odd = _mesh(), np.zeros((5, 3), np.float32)
    split = NamedSharding(mesh, P("model"))
    with pytest.raises(ValueError, match="evenly divide"):  # what JAX does with a split of 5 over 8
        jax.device_put(odd, split)
    with pytest.raises(ValueError, match="divide"):
        jax.jit(lambda: jnp.zeros((5, 3)), out_shardings=split)()
    assert optimizers.fit_sharding(split, odd.shape).is_fully_replicated
    assert optimizers.fsdp_shardings({"odd": odd}, mesh)["odd"].is_fully_replicated
    assert optimizers.fsdp_shardings({"odd": odd}, mesh, dim=0)["odd"].is_fully_replicated
    # A state for a param given a split that does not divide is still valid: the axis is dropped.
    s_sh = optimizers.state_shardings(optimizers.adam(0.1), {"odd": odd}, {"odd": split})
    state = jax.jit(optimizers.adam(0.1).init, out_shardings=s_sh)({"odd": odd})
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
    # Of several mesh axes on one dimension, the ones that divide it are kept (last dropped first).
    grid = _mesh(names=("data", "model"), shape=(2, 4))
    both = NamedSharding(grid, P(("data", "model")))
    assert optimizers.fit_sharding(both, (16,)).spec == P(("data", "model"))
    assert optimizers.fit_sharding(both, (6,)).spec == P("data")
    assert optimizers.fit_sharding(both, (5,)).is_fully_replicated


class _FactoredState(NamedTuple):
    count: jax.Array  # replicated
    hyperparams: dict  # replicated
    moment: Any  # the params' shapes: the params' shardings
    row: Any  # Adafactor-like row statistic: last axis removed
    col: Any  # column statistic: second-to-last axis set to 1
    covers: Any  # SM3-like: per leaf, a list of one vector per axis
    norms: Any  # one scalar per leaf (NovoGrad): replicated
    empty: Any  # (0,) placeholders (Adafactor's unused slots): replicated
    flat: list  # the params' leaves as a list, outside any mirror: matched by shape


def _factored_like():
    """A hand-built transform whose state has every kind of leaf (Adafactor and SM3 may not exist yet)."""

    def init_fn(params):
        each = lambda f: jax.tree.map(f, params)  # noqa: E731
        return _FactoredState(
            jnp.zeros([], jnp.int32), {"eps": jnp.zeros([])}, optax.tree.zeros_like(params),
            each(lambda p: jnp.zeros(p.shape[:-1])), each(lambda p: jnp.zeros(p.shape[:-2] + (1,) + p.shape[-1:])),
            each(lambda p: [jnp.zeros(n) for n in p.shape]), each(lambda p: jnp.zeros([])),
            each(lambda p: jnp.zeros((0,))), jax.tree.leaves(optax.tree.zeros_like(params)))

    return optax.GradientTransformation(init_fn, None)


_M = "model"
# param shape, its split (fsdp_shardings), then the expected spec of: row, col, covers.
FACTORED = {
    "rows": ((64, 16), P(_M, None), P(_M), P(None, None), [P(_M), P(None)]),
    "cols": ((16, 64), P(None, _M), P(None), P(None, _M), [P(None), P(_M)]),
    "square": ((16, 16), P(None, _M), P(), P(None, _M), [P(), P()]),  # (16,) fits both axes: replicated
    "stack": ((2, 16, 5), P(None, _M, None), P(None, _M), P(None, None, None), [P(), P(_M), P()]),
}


def test_state_shardings_of_factored_statistics_and_covers():
    mesh = _mesh()
    params = {k: jax.ShapeDtypeStruct(v[0], jnp.float32) for k, v in FACTORED.items()}  # abstract
    p_sh = optimizers.fsdp_shardings(params, mesh)
    assert {k: s.spec for k, s in p_sh.items()} == {k: v[1] for k, v in FACTORED.items()}
    masked = optax.masked(optimizers.scale_by_adam(), {"rows": True, "cols": False, "square": False, "stack": True})
    tx = optax.chain(_factored_like(), masked)
    s_sh = optimizers.state_shardings(tx, params, p_sh)
    ns = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    rep = ns(P())
    want = _FactoredState(
        rep, {"eps": rep}, p_sh, {k: ns(v[2]) for k, v in FACTORED.items()},
        {k: ns(v[3]) for k, v in FACTORED.items()}, {k: [ns(c) for c in v[4]] for k, v in FACTORED.items()},
        {k: rep for k in FACTORED}, {k: rep for k in FACTORED}, jax.tree.leaves(p_sh))
    got_first, got_masked = s_sh
    abstract = jax.eval_shape(tx.init, params)[0]
    for (path, g), w, a in zip(jax.tree_util.tree_flatten_with_path(got_first)[0], jax.tree.leaves(want),
                               jax.tree.leaves(abstract), strict=True):
        assert g.is_equivalent_to(w, a.ndim), (jax.tree_util.keystr(path), a.shape, g.spec, w.spec)
    adam = got_masked.inner_state  # masked leaves are holes; kept ones follow their param
    assert isinstance(adam.mu["cols"], optax.MaskedNode)
    for field in (adam.mu, adam.nu):
        assert field["rows"].is_equivalent_to(p_sh["rows"], 2) and field["stack"].is_equivalent_to(p_sh["stack"], 3)
    # The state built with them lies on them, leaf by leaf.
    concrete = jax.tree.map(lambda p: jnp.ones(p.shape), params)
    state = jax.jit(tx.init, out_shardings=s_sh)(jax.device_put(concrete, p_sh))
    for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(s_sh), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.shape, x.sharding.spec, s.spec)


ABSTRACT = {"rows": jax.ShapeDtypeStruct((256, 128), jnp.float32), "cols": jax.ShapeDtypeStruct((64, 256), jnp.float32),
            "bias": jax.ShapeDtypeStruct((64,), jnp.float32)}  # every leaf split by 1, 2, 4 and 8


@pytest.mark.parametrize("name", ALIASES)
def test_init_under_eval_shape_and_state_bytes_fall_as_one_over_n(name):
    tx = make(name)
    concrete = jax.tree.map(lambda p: jnp.ones(p.shape, p.dtype), ABSTRACT)
    abstract_state = jax.eval_shape(tx.init, ABSTRACT)  # nothing materialised
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract_state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), tx.init(concrete))
    per_device = {}  # what the shardings put on each device, for 1, 2, 4 and 8 devices
    for n in (1, 2, 4, N):
        s_sh = optimizers.state_shardings(tx, ABSTRACT, optimizers.fsdp_shardings(ABSTRACT, _mesh(n)))
        per_device[n] = sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                            for x, s in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(s_sh), strict=True))
    # The state built on 8 devices holds that: moments split like their params, scalars replicated.
    state = jax.jit(tx.init, out_shardings=s_sh, compiler_options=FAST_COMPILE)(concrete)
    assert optimizers.bytes_per_device(state) == {d: per_device[N] for d in jax.devices()}
    for x in jax.tree.leaves(state):
        if x.shape in {p.shape for p in ABSTRACT.values()}:
            assert x.addressable_shards[0].data.nbytes * N == x.nbytes
        elif x.ndim == 0:
            assert x.sharding.is_fully_replicated
    split = sum(x.nbytes for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated)
    assert per_device == {n: per_device[1] - split + split // n for n in (1, 2, 4, N)}


def test_state_shardings_rejects_bad_shardings():
    mesh, params = _mesh(), {"w": jnp.zeros((8, 8))}
    tx = optimizers.adam(0.1)
    with pytest.raises(ValueError, match="NamedSharding, got SingleDeviceSharding at \\['w'\\]"):
        optimizers.state_shardings(tx, params, {"w": SingleDeviceSharding(jax.devices()[0])})
    with pytest.raises(ValueError, match="spec .* has 3 entries for an array of rank 2"):
        optimizers.state_shardings(tx, params, NamedSharding(mesh, P(None, None, _M)))
    with pytest.raises(ValueError, match="one mesh, got 2 meshes"):
        optimizers.state_shardings(tx, {"a": params["w"], "b": params["w"]},
                                   {"a": NamedSharding(mesh, P()), "b": NamedSharding(_mesh(4), P())})
    with pytest.raises(ValueError, match="params are empty"):
        optimizers.state_shardings(tx, {}, {})
    with pytest.raises(ValueError, match="params' structure"):
        optimizers.state_shardings(tx, params, {"v": NamedSharding(mesh, P())})
    with pytest.raises(ValueError, match="axis must be one of the mesh's axes \\('model',\\), got 'data'"):
        optimizers.fsdp_shardings(params, mesh, "data")


_COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(-start)?\(")


def test_muon_on_a_stack_split_on_its_layer_axis_needs_no_collective():
    """Each layer's Newton-Schulz iteration on the device that holds the layer: the compiled step has
    no collective, and gives the one-device result."""
    mesh = _mesh(names=("layers",))
    rng = np.random.default_rng(1)
    params = {"s": rng.normal(size=(N, 16, 12)).astype(np.float32), "b": rng.normal(size=(N, 12)).astype(np.float32)}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(3)]
    tx = optimizers.muon(0.02, weight_decay=0.1, layer_axes=1)  # "b": a stack of vectors, AdamW
    p_sh = jax.tree.map(lambda _: NamedSharding(mesh, P("layers")), params)
    s_sh = optimizers.state_shardings(tx, params, p_sh)
    assert s_sh.inner_states["muon"].inner_state[0].mu["s"].spec == P("layers", None, None)
    step = jax.jit(functools.partial(_step, tx), in_shardings=(p_sh, s_sh, p_sh), out_shardings=(p_sh, s_sh))
    sharded, state = jax.device_put(params, p_sh), jax.jit(tx.init, out_shardings=s_sh)(params)
    hlo = step.lower(sharded, state, grads[0]).compile().as_text()
    assert not _COLLECTIVE.findall(hlo), sorted(set(m[0] for m in _COLLECTIVE.findall(hlo)))
    one = jax.jit(functools.partial(_step, tx))
    single, single_state = params, tx.init(params)
    for g in grads:
        sharded, state = step(sharded, state, g)
        single, single_state = one(single, single_state, g)
    _assert_trees_close(jax.device_get(sharded), jax.device_get(single), rtol=1e-6)
    # The check can fail: one matrix split on its rows needs its Gram matrix summed over devices.
    matrix = {"w": params["s"].reshape(N * 16, 12)}
    m_sh = {"w": NamedSharding(mesh, P("layers", None))}
    tx = optimizers.muon(0.02)
    s_sh = optimizers.state_shardings(tx, matrix, m_sh)
    step = jax.jit(functools.partial(_step, tx), in_shardings=(m_sh, s_sh, m_sh))
    hlo = step.lower(matrix, tx.init(matrix), matrix).compile().as_text()
    assert "all-reduce" in {m[0] for m in _COLLECTIVE.findall(hlo)}
