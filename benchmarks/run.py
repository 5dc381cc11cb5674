"""Step time, memory floor, compile time and state memory of every optimizer, against optax and torch.

One command measures everything, prints a Markdown table and writes it with a CSV::

    python benchmarks/run.py                  # full run: both trees, every alias, 40 repetitions
    python benchmarks/run.py --smoke          # tiny trees, adam and lamb, 3 repetitions: checks the table (CI)
    python benchmarks/run.py --out DIR        # results.md and results.csv go there (default benchmarks/results)

    --only adam,lamb   --trees single,transformer,resnet18,billion   --reps 60   --warmup 5   --compile-reps 3
    --no-torch                  leave torch.optim out
    --no-quantized              leave out the "... 8-bit" rows (benchmarks/quantized.py)
    --torch-threads 1           torch.set_num_threads (its OpenMP spin-waits stall on a machine shared with others)
    --cpu-multi-output-fusion   XLA:CPU's sibling multi-output fusion (an XLA_FLAGS option; process-wide)
    --reuse-memory              restart under GLIBC_TUNABLES that keep freed memory for reuse (Linux)

For every alias in ``optimizers.__all__`` that takes a ``learning_rate`` (enrolled
automatically; our hyperparameters in ``KWARGS``, the counterparts, with the same ones, in
``OPTAX`` and ``TORCH``):

* **Step time** of one jit-compiled step, ``optimizers.update_and_apply`` (``tx.update`` then
  ``optax.apply_updates``; for the rows ``... fused``, the alias with ``fused=True``, whose
  step writes the params in place, and ``... fused flat`` also ``flat_state=True``), params and state donated
  (``donate_argnums=(0, 1)``), timed until its outputs are ready (``block_until_ready`` on
  one output: the outputs of one program's execution become ready together, which each
  repetition checks; blocking on each of a 150-leaf tree's 450 outputs costs about 1 ms,
  which a training loop does not pay); the same for optax's
  version of the algorithm, and ``torch.optim``'s ``step()`` with ``foreach=True`` and with
  ``fused=True`` where PyTorch has a fused kernel on the device. After ``--warmup`` steps each,
  ``--reps`` repetitions: ours and optax's back to back (the order flipping every repetition),
  then torch's in a phase of their own (its OpenMP threads spin after a step and would slow
  a JAX step that follows). Reported: median and interquartile range; ``ours/optax`` is the median of the
  per-repetition ratios (paired, so the drifts of a shared machine cancel).
* **Floor**: the bandwidth of the fastest elementwise in-place pass on this machine (JAX, PyTorch
  and NumPy candidates, measured before and after the rest; bytes read + written per second)
  over as much memory as the step touches (params, grads and state: its *working set*), and,
  per optimizer, the bytes it must move per parameter (``MIN_BYTES``, float32; Adafactor's and
  SM3's from their per-element state, ``SUBLINEAR``): floor time =
  bytes x parameters / bandwidth, and ``ours/floor`` is the measured median over it. The pass
  is as large as the working set because bandwidth depends on it: on a CPU whose last-level
  cache is large (300 MB here) a pass over one 64 MB tensor runs from the cache at twice the
  speed of Adam's 256 MB of params, grads and moments, which no kernel could reach.
* **Compiled code** (``compile().as_text()`` and ``memory_analysis()``): kernels over
  parameter-sized arrays, the bytes they move per parameter, the fresh memory a step allocates
  (temporaries: on CPU their page faults cost more than their bandwidth) and the copies XLA
  inserted under donation.
* **Compile time** of the first step (trace + lower + compile; median of ``--compile-reps`` fresh
  compiles, the order flipping) and **state memory** in bytes per parameter
  (``jax.eval_shape(tx.init, params)``; torch's ``optimizer.state`` after one step).

Modules: ``tables`` (the aliases, their counterparts and the bytes they must move), ``trees``,
``timing`` (the timed steps and the floor), ``hlo`` (passes over memory in the compiled step),
``report`` (the rows, their table and CSV); here the command line and the run.

Trees: ``transformer`` (GPT-style, 9 blocks of width 320: 150 leaves, 11.8M parameters) and
``single`` (one float32 vector of 16M elements) by default; ``resnet18`` (62 leaves, 11.7M) and
``billion`` (2^30 elements, for a GPU) on request. The output starts with the machine.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

if __package__ in (None, ""):  # run as a script, or loaded from its path: the package's parent on the path
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.report import Row, _failed, _ms, _x, machine, markdown, write_results
from benchmarks.tables import (LR, OPTAX, SMOKE_ONLY, TORCH, VARIANTS, _optimizers, aliases, kwargs, min_bytes,
                               split_variant, with_variants)
from benchmarks.timing import (Floor, JaxStep, Timing, TorchStep, dispatch_ms, interleaved, torch_device,
                               working_set)
from benchmarks.trees import TREES, num_params, random_tree

# Read through this module by tests/test_benchmarks.py, with the names above:
from benchmarks.tables import KWARGS, _parameters  # noqa: F401,E402
from benchmarks.trees import state_bytes  # noqa: F401,E402


def measure(name, shapes, floor, args, device, options) -> Row:
    """One optimizer on one tree: ours, optax's and torch's steps, interleaved."""
    import jax
    opt = _optimizers()
    params_np = random_tree(shapes, 0, 0.02)
    grads_np = random_tree(shapes, 1, 1e-3)
    grads = jax.tree.map(jax.numpy.array, grads_np)
    n, leaves = num_params(params_np), len(jax.tree.leaves(params_np))
    row, (base, variant) = name, split_variant(name)
    tx = getattr(opt, base)(**kwargs(base), **VARIANTS.get(variant, {}))
    jax_steps = {"ours": JaxStep(tx, params_np, grads, options, ours=True)}
    name = base  # the counterparts and the floor are those of the algorithm
    if name in OPTAX:
        import optax
        jax_steps["optax"] = JaxStep(OPTAX[name](optax), params_np, grads, options)
    for r in range(args.compile_reps - 1):  # more first compiles, the order flipping
        for k in (list(jax_steps) if r % 2 else list(jax_steps)[::-1]):
            jax_steps[k].compile_again()
    torch_steps = {}
    if device and name in TORCH:
        for mode in ("foreach", "fused"):
            try:
                torch_steps[mode] = TorchStep(*TORCH[name], params_np, grads_np, mode, device)
            except (RuntimeError, TypeError, ValueError):
                pass  # no such kernel on this device
    times = interleaved(jax_steps, torch_steps, args.reps, args.warmup)
    timing = {k: Timing.of(v) for k, v in times.items()}
    ours, other = jax_steps["ours"], jax_steps.get("optax")
    ratio = statistics.median(a / b for a, b in zip(times["ours"], times["optax"])) if other else math.nan
    best_torch = min((t.median for t in (timing.get("foreach"), timing.get("fused")) if t), default=math.nan)
    need = min_bytes(name, ours.state_bytes / n)
    bw = floor(working_set(n, ours.state_bytes / n))[0]
    return Row(
        tree="", optimizer=row, params=n, leaves=leaves, ours=timing["ours"], optax=timing.get("optax"),
        ours_over_optax=ratio, torch_foreach=timing.get("foreach"), torch_fused=timing.get("fused"),
        ours_over_torch=timing["ours"].median / best_torch, min_bytes=need, floor_ms=1e3 * need * n / bw,
        ours_hlo=ours.traffic, optax_hlo=other.traffic if other else None,
        compile_ours_s=statistics.median(ours.compile_times),
        compile_optax_s=statistics.median(other.compile_times) if other else math.nan,
        state_ours=ours.state_bytes / n, state_optax=other.state_bytes / n if other else math.nan,
        state_torch=(next(iter(torch_steps.values())).state_bytes / n) if torch_steps else math.nan,
    )


def timed_row(name: str, tree: str, shapes, floor, args, device, options) -> Row:
    """``name``'s row on ``tree`` (an error row where it fails: one broken optimizer must not lose
    the others' rows), printed as it comes."""
    start = time.perf_counter()
    try:
        row = measure(name, shapes, floor, args, device, options)._replace(tree=tree)
    except Exception as exc:  # noqa: BLE001
        row = _failed(name, tree, exc)
        print(f"{tree} {name}: {row.error}", file=sys.stderr, flush=True)
    print(f"{tree:12s} {name:24s} ours {_ms(row.ours):>16s}  optax {_ms(row.optax):>16s}  "
          f"ours/optax {_x(row.ours_over_optax)}  ({time.perf_counter() - start:.0f} s)", flush=True)
    gc.collect()
    return row


def with_final_floor(rows: list[Row], floor: Floor) -> list[Row]:
    """The rows' floors from the fastest pass seen: measured when first needed and again at the
    end, on a machine whose load drifts."""
    for elements in list(floor.best):
        floor(elements, again=True)
    return [r if r.error else r._replace(floor_ms=1e3 * r.min_bytes * r.params /
                                         floor(working_set(r.params, r.state_ours))[0]) for r in rows]


# XLA:CPU's sibling multi-output fusion: only an XLA_FLAGS backend option (not a compile option).
MOF_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"

# glibc: one arena, no mmap, no trimming: freed temporaries are reused instead of page-faulted in again.
REUSE_MEMORY = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"

# XLA's cheapest compile (smoke mode only: its step times and compile times mean nothing).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny trees, {', '.join(SMOKE_ONLY)}, 3 repetitions, fastest compile: checks the table")
    p.add_argument("--out", help="folder for results.md and results.csv (default benchmarks/results; "
                                 "a temporary folder with --smoke)")
    p.add_argument("--only", help="comma-separated aliases (default: every alias)")
    p.add_argument("--trees", default="transformer,single",
                   help=f"comma-separated, of {', '.join(TREES)} (default transformer,single)")
    p.add_argument("--reps", type=int, help="timed repetitions per variant (default 40; 3 with --smoke)")
    p.add_argument("--warmup", type=int, help="untimed steps per variant first (default 5; 1 with --smoke)")
    p.add_argument("--compile-reps", type=int, help="first compiles per variant (default 3; 1 with --smoke)")
    p.add_argument("--no-torch", action="store_true", help="leave torch.optim out")
    p.add_argument("--no-quantized", action="store_true", help="leave out the '... 8-bit' rows (benchmarks/quantized.py)")
    p.add_argument("--torch-threads", type=int,
                   help="torch.set_num_threads (default: torch's); 1 avoids OpenMP spin-waits on a busy machine")
    p.add_argument("--cpu-multi-output-fusion", action="store_true",
                   help=f"XLA_FLAGS={MOF_FLAG} (process-wide, ours and optax alike)")
    p.add_argument("--reuse-memory", action="store_true",
                   help=f"restart with GLIBC_TUNABLES={REUSE_MEMORY} (Linux; process-wide)")
    args = p.parse_args(argv)
    args.reps = args.reps or (3 if args.smoke else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    args.compile_reps = args.compile_reps or (1 if args.smoke else 3)
    return args


def configure(args, argv) -> None:
    """Process-wide settings, before jax is imported: the restart under GLIBC_TUNABLES, XLA_FLAGS."""
    if args.reuse_memory and os.environ.get("GLIBC_TUNABLES") != REUSE_MEMORY:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])],
                  {**os.environ, "GLIBC_TUNABLES": REUSE_MEMORY})
    if args.cpu_multi_output_fusion:
        if "jax" in sys.modules:
            raise RuntimeError("--cpu-multi-output-fusion must be set before jax is imported")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + MOF_FLAG).strip()


def main(argv=None) -> str:
    args = parse_args(argv)
    configure(args, argv)
    import jax
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are first compiles
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

    names = args.only.split(",") if args.only else (list(SMOKE_ONLY) if args.smoke else with_variants(aliases()))
    out_dir = args.out or (tempfile.mkdtemp(prefix="bench_") if args.smoke else
                           os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    os.makedirs(out_dir, exist_ok=True)
    options = FAST_COMPILE if args.smoke else None
    device = None if args.no_torch else torch_device()
    if device and args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)

    info = machine()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    floor = Floor(max(args.reps, 10), device)
    JaxStep(_optimizers().sgd(LR), random_tree({"w": (8,)}, 0, 1.0), {"w": jax.numpy.ones(8)}, options)  # warm-up

    rows, dispatch = [], {}
    for tree in args.trees.split(","):
        shapes = TREES[tree](args.smoke)
        dispatch[tree] = dispatch_ms(shapes, args.reps)
        rows += [timed_row(name, tree, shapes, floor, args, device, options) for name in names]
    rows = with_final_floor(rows, floor)
    table = markdown(rows, info, floor, dispatch)
    quantized_names = [n for n in ("adamw", "lion", "sgd", "lamb") if n in names]
    if quantized_names and not (args.smoke or args.no_quantized):
        from benchmarks import quantized  # the "... 8-bit" rows
        table += "".join("\n" + quantized.section(t, TREES[t](False), args.reps, args.warmup, quantized_names)
                         for t in args.trees.split(","))
    write_results(out_dir, table, rows)
    print("\n" + table)
    print(f"written: {os.path.join(out_dir, 'results.md')}, {os.path.join(out_dir, 'results.csv')}")
    return table


if __name__ == "__main__":
    main()
