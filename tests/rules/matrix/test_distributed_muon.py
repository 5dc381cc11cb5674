"""Distributed Muon (``distributed=(mesh, axis)``) on the 8 CPU devices of ``tests/conftest.py``: the
one-device values, and each device's Newton–Schulz FLOPs about 1/8 (XLA's cost analysis)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import optimizers

SHAPES = {"a": (16, 8), "b": (16, 8), "c": (8, 16), "d": (8, 16), "e": (8, 16), "sq": (12, 12), "sq2": (12, 12),
          "lone": (8, 24), "stack": (3, 16, 8), "bias": (16,)}
LAYERS = {k: 1 if k == "stack" else 0 for k in SHAPES}


def _mesh(explicit=False):
    assert jax.device_count() >= 8
    return jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit if explicit else AxisType.Auto,))


def _compiled(tx, params, mesh):
    rep = NamedSharding(mesh, P())

    def steps(p, s, gs):
        def body(c, g):
            p, s = c
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(body, (p, s), gs)[0][0]

    state = jax.eval_shape(tx.init, params)
    gs = jax.tree.map(lambda x: jax.ShapeDtypeStruct((4,) + x.shape, x.dtype), params)
    shard = lambda t: jax.tree.map(lambda _: rep, t)  # noqa: E731
    return jax.jit(steps, in_shardings=(shard(params), shard(state), shard(gs)), out_shardings=shard(params)).lower(
        params, state, gs).compile()


@pytest.mark.parametrize("name, explicit", [("muon", False), ("normuon", False), ("muon", True)])
def test_equals_the_one_device_result(name, explicit):
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    grads = {k: jnp.asarray(rng.normal(size=(4,) + s), jnp.float32) for k, s in SHAPES.items()}
    mesh = _mesh(explicit)
    make = getattr(optimizers, name)
    dist, one = make(0.02, layer_axes=LAYERS, distributed=(mesh, "d")), make(0.02, layer_axes=LAYERS)
    rep = NamedSharding(mesh, P())
    got = _compiled(dist, params, mesh)(*jax.device_put((params, dist.init(params), grads), rep))
    want = _compiled(one, params, jax.make_mesh((1,), ("d",)))(params, one.init(params), grads)
    moved = False
    for k in SHAPES:  # the same matmuls, batched differently: float32 rounding
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
        moved |= not np.allclose(got[k], params[k])
    assert moved


def _flops(tx, params, mesh):
    cost = _compiled(tx, params, mesh).cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_each_device_runs_about_an_eighth_of_the_newton_schulz_flops():
    """16 matrices (and a stack of 8 layers) over 8 devices: 3 per device (2 + 1 layer) instead of 24.
    Without ``distributed`` every device runs all of them (the check can fail)."""
    params = {f"w{i}": jnp.ones((32, 64), jnp.float32) for i in range(16)}
    params["stack"] = jnp.ones((8, 64, 32), jnp.float32)
    layers = {k: 1 if k == "stack" else 0 for k in params}
    mesh = _mesh()
    one = _flops(optimizers.muon(0.02, layer_axes=layers), params, jax.make_mesh((1,), ("d",)))
    dist = _flops(optimizers.muon(0.02, layer_axes=layers, distributed=(mesh, "d")), params, mesh)
    plain = _flops(optimizers.muon(0.02, layer_axes=layers), params, mesh)
    assert 0.9 / 8 < dist / one < 1.25 / 8, dist / one
    assert plain / one > 0.9


def test_a_lone_matrix_is_split_on_its_long_side():
    """One (32, 256) matrix: the large products split over 8 devices (per-device FLOPs well below one
    device's), values unchanged."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(256, 32)), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=(4, 256, 32)), jnp.float32)}
    mesh = _mesh()
    dist, one = optimizers.muon(0.02, distributed=(mesh, "d")), optimizers.muon(0.02)
    got = _compiled(dist, params, mesh)(*jax.device_put((params, dist.init(params), grads), NamedSharding(mesh, P())))
    want = _compiled(one, params, jax.make_mesh((1,), ("d",)))(params, one.init(params), grads)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, atol=1e-6)
    assert _flops(dist, params, mesh) / _flops(one, params, jax.make_mesh((1,), ("d",))) < 0.4


@pytest.mark.parametrize("bad", [("d",), "d", (None, "d"), (object(), "d")])
def test_bad_distributed_raises(bad):
    with pytest.raises(ValueError, match="distributed"):
        optimizers.muon(0.02, distributed=bad)
    with pytest.raises(ValueError, match="distributed"):
        optimizers.scale_by_muon(distributed=bad)


def test_unknown_axis_raises():
    with pytest.raises(ValueError, match="normuon: distributed's axis 'x'"):
        optimizers.normuon(0.02, distributed=(_mesh(), "x"))
