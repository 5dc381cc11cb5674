"""8-bit optimizer state (``optimizers.with_quantized_state``): step time against float32 state, and memory.

For AdamW, Lion, SGD with momentum and LAMB, the rows ``... 8-bit``: the optimizer wrapped in
``with_quantized_state`` (defaults: blocks of 256, leaves of 4096 elements and more) against
the same optimizer with float32 state, in the same run. Both steps are
``optimizers.update_and_apply`` (the 8-bit one writes the params chunk by chunk), jit-compiled
with params and state donated; the repetitions alternate between the two and the ratio is the
median of the per-repetition ratios. The rows ``... 8-bit fused`` (AdamW, Lion, SGD with momentum): the
same optimizer made with ``fused=True`` inside ``with_quantized_state`` (on the CPU its 8-bit kernel,
``optimizers/fused/kernels/quantized.h``: the codes decoded, updated and encoded block by block in one
pass, params written in place) against the float32 fused step and the float32 unfused step, all
four steps of an optimizer interleaved in the same repetitions. Memory: the state's bytes per parameter
(``jax.eval_shape``) and the compiled step's temporaries per parameter
(``compile().memory_analysis().temp_size_in_bytes``: what the step allocates besides its
arguments and outputs).

    python benchmarks/quantized.py                      # the transformer tree, 20 repetitions
    python benchmarks/quantized.py --block-sizes        # round-trip error and AdamW step time per block size

``benchmarks/run.py`` appends :func:`section`'s table to its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import optimizers

LR = 1e-3
NAMES = {
    "adamw": lambda fused=False: optimizers.adamw(LR, fused=fused),
    "lion": lambda fused=False: optimizers.lion(LR / 10, fused=fused),
    "sgd": lambda fused=False: optimizers.sgd(LR, momentum=0.9, fused=fused),
    "lamb": lambda fused=False: optimizers.lamb(LR, fused=fused),
}
FUSED = ("adamw", "lion", "sgd")  # the optimizers with an 8-bit kernel (LAMB's per-leaf norms: none)


def _step(tx, params, grads):
    """A compiled donated step of ``tx`` and its fresh params and state."""
    params = jax.tree.map(jnp.array, params)
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), tx.init(params))
    compiled = jax.jit(lambda p, s, g: optimizers.update_and_apply(tx, g, s, p),
                       donate_argnums=(0, 1)).lower(params, state, grads).compile()
    return compiled, [params, state]


def _time(compiled, carry, grads) -> float:
    start = time.perf_counter()
    carry[0], carry[1] = compiled(carry[0], carry[1], grads)
    jax.block_until_ready(carry)
    return time.perf_counter() - start


def _per_param(tree, n) -> float:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / n


def measure(name: str, params, reps: int, warmup: int, block_size: int = 256, fused: bool = False) -> dict:
    """Step times (float32, 8-bit; ``fused``: also both with ``fused=True``), their ratios (medians of the
    per-repetition ratios), state and temporary bytes per parameter."""
    n = sum(x.size for x in jax.tree.leaves(params))
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 1e-2, p.dtype), params)
    base = NAMES[name]()
    txs = {"float32": base, "8-bit": optimizers.with_quantized_state(base, block_size=block_size)}
    if fused:
        txs["float32 fused"] = NAMES[name](fused=True)
        txs["8-bit fused"] = optimizers.with_quantized_state(txs["float32 fused"], block_size=block_size)
    steps = {k: _step(tx, params, grads) for k, tx in txs.items()}
    times = {k: [] for k in txs}
    for rep in range(warmup + reps):
        for k in (list(txs) if rep % 2 else list(txs)[::-1]):
            t = _time(steps[k][0], steps[k][1], grads)
            if rep >= warmup:
                times[k].append(t)
    ratio = lambda a, b: statistics.median([x / y for x, y in zip(times[a], times[b])])  # noqa: E731
    row = {"name": name, "params": n, "ratio": ratio("8-bit", "float32")}
    if fused:
        row["fused ratio"] = ratio("8-bit fused", "float32 fused")
        row["fused / float32"] = ratio("8-bit fused", "float32")
    for k, tx in txs.items():
        row[f"{k} ms"] = 1e3 * statistics.median(times[k])
        row[f"{k} state B/param"] = _per_param(jax.eval_shape(tx.init, params), n)
        row[f"{k} temp B/param"] = steps[k][0].memory_analysis().temp_size_in_bytes / n
    return row


def markdown(rows: list, tree: str) -> str:
    lines = [f"8-bit state on the {tree} tree ({rows[0]['params'] / 1e6:.1f}M parameters); step = "
             "update_and_apply, params and state donated", "",
             "| optimizer | float32 step | 8-bit step | 8-bit / float32 | state B/param float32 | 8-bit "
             "| temporaries B/param float32 | 8-bit |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} 8-bit | {r['float32 ms']:.2f} ms | {r['8-bit ms']:.2f} ms | {r['ratio']:.2f}x "
                     f"| {r['float32 state B/param']:.2f} | {r['8-bit state B/param']:.2f} "
                     f"| {r['float32 temp B/param']:.2f} | {r['8-bit temp B/param']:.2f} |")
    fused = [r for r in rows if "fused ratio" in r]
    if fused:
        lines += ["", "| optimizer | float32 step | float32 fused step | 8-bit fused step "
                  "| 8-bit fused / float32 fused | 8-bit fused / float32 | temporaries B/param 8-bit fused |",
                  "|---|---|---|---|---|---|---|"]
        for r in fused:
            lines.append(f"| {r['name']} 8-bit fused | {r['float32 ms']:.2f} ms | {r['float32 fused ms']:.2f} ms "
                         f"| {r['8-bit fused ms']:.2f} ms | {r['fused ratio']:.2f}x | {r['fused / float32']:.2f}x "
                         f"| {r['8-bit fused temp B/param']:.2f} |")
    return "\n".join(lines) + "\n"


def section(tree: str, shapes: dict, reps: int, warmup: int, names=tuple(NAMES)) -> str:
    """The ``... 8-bit`` rows for the params of ``shapes`` (a tree of shape tuples), as Markdown."""
    params = jax.tree.map(lambda s: jnp.zeros(s, jnp.float32) + 0.01, shapes, is_leaf=lambda x: isinstance(x, tuple))
    rows = []
    for name in names:
        rows.append(measure(name, params, reps, warmup, fused=name in FUSED))
        print(f"{tree} {name} 8-bit: {rows[-1]['ratio']:.2f}x, temporaries "
              f"{rows[-1]['8-bit temp B/param']:.2f} B/param", flush=True)
        if "fused ratio" in rows[-1]:
            print(f"{tree} {name} 8-bit fused: {rows[-1]['fused ratio']:.2f}x the float32 fused step, "
                  f"{rows[-1]['fused / float32']:.2f}x the float32 step", flush=True)
    return markdown(rows, tree)


def block_sizes(sizes=(64, 256, 1024, 2048), reps: int = 10, n: int = 1 << 22) -> str:
    """Per block size: round-trip error of heavy-tailed data (Adam-like m and v) and AdamW's step time."""
    from optimizers.wrappers.quantized.codes import quantize

    rng = np.random.default_rng(0)
    g = rng.standard_t(3, size=n) * np.exp(rng.normal(size=n // 4096).repeat(4096))  # layers of other scales
    m, v = jnp.asarray(g, jnp.float32), jnp.asarray(g * g, jnp.float32)
    lines = ["| block | state B/param (AdamW) | m: mean error / mean abs | v: mean error / mean | "
             "v: elements stored as 0 | AdamW 8-bit / float32 step |", "|---|---|---|---|---|---|"]
    params = {"w": jnp.zeros((n // 1024, 1024))}
    for b in sizes:
        qm = optimizers.dequantized(quantize(m, True, b))
        qv = optimizers.dequantized(quantize(v, False, b))
        em = float(jnp.mean(jnp.abs(qm - m)) / jnp.mean(jnp.abs(m)))
        ev = float(jnp.mean(jnp.abs(qv - v)) / jnp.mean(v))
        zeros = float(jnp.mean((qv == 0) & (v > 0)))
        NAMES["_adamw"] = NAMES["adamw"]
        row = measure("_adamw", params, reps, 2, block_size=b)
        lines.append(f"| {b} | {row['8-bit state B/param']:.3f} | {em:.4f} | {ev:.4f} | {zeros:.1e} "
                     f"| {row['ratio']:.2f}x |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block-sizes", action="store_true")
    args = parser.parse_args(argv)
    if args.block_sizes:
        print(block_sizes(reps=args.reps))
        return
    import run  # the runner's trees

    print(section("transformer", run.TREES["transformer"](False), args.reps, args.warmup))


if __name__ == "__main__":
    main()
