"""Muon's step against its FLOP floor: the Newton–Schulz matmuls at this machine's matmul rate.

``python benchmarks/muon_floor.py --small`` (about a minute on 2 cores) prints one Markdown table:
for ``optimizers.muon`` (both forms), ``optimizers.normuon``, ``optax.contrib.muon`` and AdamW
(ours and optax's), the median step time (jit-compiled, donated, interleaved: ``benchmarks.timing``)
on the transformer tree of ``benchmarks.trees`` (``--small``: width 128, 2 blocks; default:
width 320, 9 blocks, minutes per configuration on a small CPU), and

* **floor** = Newton–Schulz FLOPs of one step / the rate of a large jitted float32 matmul measured
  in the same run (``--matmul``: its size, default 2048). The FLOPs are counted from the shapes:
  a matrix with short side :math:`a` and long side :math:`b` costs :math:`a^2 b` (the Gram
  matrix :math:`XX^\\top`), :math:`a^3` (:math:`A^2`) and :math:`a^2 b` (the product with
  :math:`X`) multiply-adds per iteration, so :math:`5 \\cdot 2(2a^2 b + a^3)` FLOPs for 5
  iterations; XLA's cost analysis of the compiled step is printed next to it as a check.
* **step / floor** for each row (AdamW's floor is the same Muon floor, for scale).

Every 2-D leaf is a Muon matrix (the shape rule of ``muon`` and ``optax.contrib.muon``: the
embeddings and the head too). The matmul rate is measured before and after the steps; the higher
is used (a shared machine only slows it).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.tables import LR  # noqa: E402
from benchmarks.timing import JaxStep, interleaved  # noqa: E402
from benchmarks.trees import num_params, random_tree, transformer_shapes  # noqa: E402


def ns_flops(shapes, steps: int = 5) -> int:
    """Newton–Schulz FLOPs of one step over every 2-D leaf of a tree of shapes."""
    import jax
    total = 0
    for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)):
        if len(s) == 2:
            a, b = min(s), max(s)
            total += steps * 2 * (2 * a * a * b + a**3)
    return total


def matmul_rate(n: int, reps: int = 10) -> float:
    """FLOP/s of a jitted float32 ``(n, n) @ (n, n)`` (the median of ``reps``)."""
    import jax
    import jax.numpy as jnp
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    y = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(x, y).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f(x, y).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def steps():
    import optax
    import optax.contrib

    import optimizers
    return {
        "optimizers.muon": (optimizers.muon(LR), True),
        "optimizers.muon (form=\"optax\")": (optimizers.muon(LR, form="optax"), True),
        "optimizers.normuon": (optimizers.normuon(LR), True),
        "optax.contrib.muon": (optax.contrib.muon(LR), False),
        "optimizers.adamw": (optimizers.adamw(LR, weight_decay=0.01), True),
        "optax.adamw": (optax.adamw(LR, weight_decay=0.01), False),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="width 128, 2 blocks, vocab 512, context 128")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=2048)
    args = parser.parse_args(argv)
    import jax

    shapes = transformer_shapes(128, 2, 512, 128) if args.small else transformer_shapes()
    params = random_tree(shapes, 0, 0.02)
    grads = jax.tree.map(jax.numpy.asarray, random_tree(shapes, 1, 1e-3))
    flops = ns_flops(shapes)
    rate = matmul_rate(args.matmul)
    built = {k: JaxStep(tx, params, grads, ours=ours) for k, (tx, ours) in steps().items()}
    times = interleaved(built, {}, args.reps, args.warmup)
    rate = max(rate, matmul_rate(args.matmul))
    floor_ms = 1e3 * flops / rate
    print(f"tree: transformer {'--small' if args.small else 'default'}, {num_params(shapes):,} parameters, "
          f"{len(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))} leaves; "
          f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    print(f"matmul rate ({args.matmul}^2 float32): {rate / 1e9:.1f} GFLOP/s; Newton–Schulz FLOPs per step: "
          f"{flops / 1e9:.3f} G; floor {floor_ms:.2f} ms\n")
    print("| step | median ms (IQR) | XLA's FLOPs per step | step / floor |")
    print("| --- | --- | --- | --- |")
    for k, step in built.items():
        t = times[k]
        q1, q3 = statistics.quantiles(t, n=4)[0], statistics.quantiles(t, n=4)[2]
        cost = step.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla = cost.get("flops", float("nan"))
        med = 1e3 * statistics.median(t)
        print(f"| {k} | {med:.2f} ({1e3 * q1:.2f}–{1e3 * q3:.2f}) | {xla / 1e9:.3f} G | {med / floor_ms:.2f} |")


if __name__ == "__main__":
    main()
