"""Muon on sharded matrices, on 8 CPU devices: the collectives of the compiled step, the bytes they
move and the FLOPs each device runs (XLA's cost analysis), ``optimizers.muon`` against
``optax.contrib.muon`` (same variant: Nesterov, Jordan's coefficients, 5 iterations, float32).

``python benchmarks/muon_sharding.py`` prints one row per (matrix, sharding, optimizer). A stack
``(8, m, n)`` split on its layer axis (``layer_axes=1``; optax given the equivalent dimension
numbers) is the case that needs no communication; a 2-D matrix split on rows or columns is
the FSDP case, where Newton-Schulz needs the whole matrix.

The second table is the schedule of that FSDP case: ``orthogonalize`` alone on a (512, 256)
matrix split on its rows (its long side) or its columns (its short side), with the layout of
the iteration's input set by a sharding constraint: XLA's choice (none), gathered once and
iterated replicated, split on the long side, split on the short side. The third: ``muon`` with
``distributed=(mesh, "model")`` (the long-side split for a lone matrix) on the same cases.
"""

import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import optax  # noqa: E402
import optax.contrib  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import optimizers  # noqa: E402
from benchmarks.hlo import _shape_bytes  # noqa: E402

_OP = re.compile(r"%[\w.\-]+ = (.*?) (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
                 r"(?:-start)?\(")


def measure(tx, params, specs, mesh):
    p_sh = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    s_sh = optimizers.state_shardings(tx, params, p_sh)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = jax.eval_shape(tx.init, params)
    compiled = jax.jit(step, in_shardings=(p_sh, s_sh, p_sh), out_shardings=(p_sh, s_sh)).lower(
        params, state, params).compile()
    ops = _OP.findall(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    kinds = {}
    for _, kind in ops:
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds, sum(_shape_bytes(shape) for shape, _ in ops), cost.get("flops", float("nan"))


def main():
    mesh = jax.make_mesh((8,), ("model",))
    rng = np.random.default_rng(0)
    cases = [
        ("(512, 256) rows", {"w": rng.normal(size=(512, 256)).astype(np.float32)}, {"w": P("model", None)}, 0, None),
        ("(512, 256) cols", {"w": rng.normal(size=(512, 256)).astype(np.float32)}, {"w": P(None, "model")}, 0, None),
        ("(8, 256, 128) layers", {"w": rng.normal(size=(8, 256, 128)).astype(np.float32)},
         {"w": P("model", None, None)}, 1, optax.contrib.MuonDimensionNumbers(1, 2)),
    ]
    print("| matrix, split | optimizer | collectives | bytes moved (result shapes) | FLOPs per device |")
    print("| --- | --- | --- | --- | --- |")
    for label, params, specs, k, dims in cases:
        ours = optimizers.muon(0.02, layer_axes=k, form="optax")
        theirs = optax.contrib.muon(0.02, muon_weight_dimension_numbers=None if dims is None else {"w": dims})
        one = optimizers.muon(0.02, layer_axes=k, form="optax")
        flops_one = measure(one, params, {"w": P()}, jax.make_mesh((1,), ("model",)))[2]
        for name, tx in (("optimizers.muon", ours), ("optax.contrib.muon", theirs)):
            kinds, nbytes, flops = measure(tx, params, specs, mesh)
            text = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "none"
            share = f"{flops / flops_one:.2f} of one device's"
            print(f"| {label} | {name} | {text} | {nbytes:,} | {flops:,.0f} ({share}) |")


def measure_schedule(x, in_spec, layout, mesh):
    """Collectives, bytes and per-device FLOPs of ``orthogonalize`` with its input laid out as ``layout``."""
    def f(x):
        if layout is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, layout))
        o = optimizers.orthogonalize(x)
        if layout == P():  # replicated through the iteration: XLA would split it again otherwise
            o = jax.lax.with_sharding_constraint(o, NamedSharding(mesh, layout))
        return o

    sh = NamedSharding(mesh, in_spec)
    compiled = jax.jit(f, in_shardings=sh, out_shardings=sh).lower(x).compile()
    ops = _OP.findall(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    kinds = {}
    for _, kind in ops:
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds, sum(_shape_bytes(shape) for shape, _ in ops), cost.get("flops", float("nan"))


def schedules():
    mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    x = np.random.default_rng(0).normal(size=(512, 256)).astype(np.float32)
    one = measure_schedule(x, P(), None, jax.make_mesh((1,), ("model",)))[2]
    layouts = [("XLA's (no constraint)", None), ("gathered once, iterated replicated", P()),
               ("long side split (rows)", P("model", None)), ("short side split (cols)", P(None, "model"))]
    print("\n| (512, 256) split on | iteration's layout | collectives | bytes moved | FLOPs per device |")
    print("| --- | --- | --- | --- | --- |")
    for label, spec in (("rows (long side)", P("model", None)), ("cols (short side)", P(None, "model"))):
        for name, layout in layouts:
            kinds, nbytes, flops = measure_schedule(x, spec, layout, mesh)
            text = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "none"
            print(f"| {label} | {name} | {text} | {nbytes:,} | {flops / 1e6:,.1f} M ({flops / one:.2f}) |")
    print("\n| (512, 256) split on | `muon(..., form=\"optax\")` | collectives | bytes moved | FLOPs per device |")
    print("| --- | --- | --- | --- | --- |")
    params = {"w": x}
    one = measure(optimizers.muon(0.02, form="optax"), params, {"w": P()}, jax.make_mesh((1,), ("model",)))[2]
    for label, spec in (("rows (long side)", P("model", None)), ("cols (short side)", P(None, "model"))):
        for name, kw in (("default", {}), ("distributed=(mesh, \"model\")", dict(distributed=(mesh, "model")))):
            kinds, nbytes, flops = measure(optimizers.muon(0.02, form="optax", **kw), params, {"w": spec}, mesh)
            text = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "none"
            print(f"| {label} | {name} | {text} | {nbytes:,} | {flops / 1e6:,.1f} M ({flops / one:.2f}) |")


if __name__ == "__main__":
    if "--schedules" not in sys.argv:
        main()
    schedules()
