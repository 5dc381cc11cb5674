"""The benchmark's rows, and their Markdown table and CSV."""

from __future__ import annotations

import csv
import math
import os
import platform
from typing import NamedTuple, Optional

import numpy as np

from benchmarks.hlo import HloTraffic
from benchmarks.timing import Floor, Timing


def machine() -> dict:
    import jax
    import optax
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch
        torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "absent"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = jax.devices()[0]
    return {
        "cpu": f"{model}, {cores} cores available (os.cpu_count() = {os.cpu_count()})",
        "device": f"{device.platform}: {device.device_kind} x {jax.device_count()}",
        "jax": f"{jax.__version__} (jaxlib {jax.lib.__version__})", "optax": optax.__version__, "torch": torch_version,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") or "(none)",
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "") or "(none)",
    }


class Row(NamedTuple):
    tree: str
    optimizer: str
    params: int
    leaves: int
    ours: Timing
    optax: Optional[Timing]
    ours_over_optax: float  # median of the per-repetition ratios
    torch_foreach: Optional[Timing]
    torch_fused: Optional[Timing]
    ours_over_torch: float  # against the faster of the two
    min_bytes: float  # per parameter
    floor_ms: float
    ours_hlo: HloTraffic
    optax_hlo: Optional[HloTraffic]
    compile_ours_s: float  # median over the compiles
    compile_optax_s: float
    state_ours: float  # bytes per parameter
    state_optax: float
    state_torch: float
    error: str = ""


def _failed(name, tree, exc) -> Row:
    nan, none = math.nan, None
    return Row(tree, name, 0, 0, Timing(nan, nan, nan), none, nan, none, none, nan, nan, nan,
               HloTraffic(0, 0, 0, 0), none, nan, nan, nan, nan, nan, error=f"{type(exc).__name__}: {exc}")


def _ms(t: Optional[Timing]) -> str:
    if t is None or math.isnan(t.median):
        return "—"
    return f"{t.median:.2f} ±{(t.p75 - t.p25) / 2:.2f}"


def _x(v: Optional[float], digits=2) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _hlo(h: Optional[HloTraffic], n: int) -> str:
    if h is None or not n:
        return "—"
    return f"{h.kernels}k {h.bytes / n:.0f}B" + (f" {h.temp / n:.0f}t" if h.temp >= n else "") + \
        (f" {h.copies}c" if h.copies else "")


def markdown(rows: list[Row], info: dict, floor: Floor, dispatch: dict) -> str:
    out = ["# Optimizer step benchmark", ""]
    out += [f"- **{k}**: {v}" for k, v in info.items()]
    out += ["- **floor bandwidth** (read + written, the fastest in-place pass over a working set of that size): "
            + ", ".join(f"{4 * n / 1e6:,.1f} MB {bw / 1e9:.1f} GB/s ({label})"
                        for n, (bw, label) in sorted(floor.best.items())), ""]
    for tree in dict.fromkeys(r.tree for r in rows):
        part = [r for r in rows if r.tree == tree]
        first = next((r for r in part if r.params), part[0])
        out += [f"## Step time: `{tree}` ({first.params:,} parameters, {first.leaves} leaves)", "",
                f"JAX's call of a donated step on this tree that computes nothing (params, grads and Adam's "
                f"state in, params and state out): {dispatch.get(tree, math.nan):.2f} ms, in every row below.", "",
                "| optimizer | ours ms | optax ms | ours/optax | torch foreach ms | torch fused ms | ours/torch "
                "| floor ms (B/param) | ours/floor | optax/floor | HLO ours | HLO optax |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in part:
            if r.error:
                out.append(f"| {r.optimizer} | error: {r.error} |" + " |" * 10)
                continue
            optax_floor = r.optax.median / r.floor_ms if r.optax else math.nan
            out.append(
                f"| {r.optimizer} | {_ms(r.ours)} | {_ms(r.optax)} | {_x(r.ours_over_optax)} | {_ms(r.torch_foreach)} "
                f"| {_ms(r.torch_fused)} | {_x(r.ours_over_torch)} | {r.floor_ms:.2f} ({r.min_bytes:.0f}) "
                f"| {_x(r.ours.median / r.floor_ms)} | {_x(optax_floor)} | {_hlo(r.ours_hlo, r.params)} "
                f"| {_hlo(r.optax_hlo, r.params)} |")
        out.append("")
    out += ["## Compile time of the first step (s) and state memory (bytes per parameter)", "",
            "| optimizer | tree | compile ours | compile optax | ours/optax | state ours | state optax | state torch |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.error:
            out.append(f"| {r.optimizer} | {r.tree} | {r.compile_ours_s:.2f} | {_x(r.compile_optax_s)} "
                       f"| {_x(r.compile_ours_s / r.compile_optax_s)} | {r.state_ours:.3f} | {_x(r.state_optax, 3)} "
                       f"| {_x(r.state_torch, 3)} |")
    out += ["", "ms: median ±half the interquartile range. ours/optax: median of the per-repetition ratios "
            "(interleaved runs). ours/torch: against the faster of foreach and fused. floor: the bytes the "
            "algorithm must move per parameter at the floor bandwidth. HLO: kernels over parameter-sized arrays "
            "in the compiled step (k), the bytes they move per parameter (B), fresh memory per step in bytes per "
            "parameter (t) and copies (c); a fused row's kernel is a custom call (one per 4 leaves), counted with its operands "
            "(LAMB's and LARS's second pass is not in B). Compile: trace + lower + compile, median of the "
            "repetitions.", ""]
    return "\n".join(out)


CSV_FIELDS = ["tree", "optimizer", "params", "leaves", "ours_ms", "ours_p25_ms", "ours_p75_ms", "optax_ms",
              "optax_p25_ms", "optax_p75_ms", "ours_over_optax", "torch_foreach_ms", "torch_fused_ms",
              "ours_over_torch", "min_bytes_per_param", "floor_ms", "ours_over_floor", "optax_over_floor",
              "ours_gb_per_s", "hlo_kernels_ours", "hlo_bytes_per_param_ours", "temp_bytes_per_param_ours",
              "hlo_copies_ours", "hlo_kernels_optax", "hlo_bytes_per_param_optax", "temp_bytes_per_param_optax",
              "hlo_copies_optax", "compile_ours_s", "compile_optax_s", "state_bytes_per_param_ours",
              "state_bytes_per_param_optax", "state_bytes_per_param_torch", "error"]


def _median(t: Optional[Timing]) -> float:
    return t.median if t else math.nan


def _per_param(h: Optional[HloTraffic], n: int) -> tuple:
    return (h.kernels, h.bytes / n, h.temp / n, h.copies) if h and n else (math.nan,) * 4


def csv_rows(rows: list[Row]):
    nan = math.nan
    for r in rows:
        yield [r.tree, r.optimizer, r.params, r.leaves, r.ours.median, r.ours.p25, r.ours.p75, _median(r.optax),
               r.optax.p25 if r.optax else nan, r.optax.p75 if r.optax else nan, r.ours_over_optax,
               _median(r.torch_foreach), _median(r.torch_fused), r.ours_over_torch, r.min_bytes, r.floor_ms,
               r.ours.median / r.floor_ms, _median(r.optax) / r.floor_ms, r.min_bytes * r.params / r.ours.median / 1e6,
               *_per_param(r.ours_hlo, r.params), *_per_param(r.optax_hlo, r.params), r.compile_ours_s,
               r.compile_optax_s, r.state_ours, r.state_optax, r.state_torch, r.error]


def write_results(out_dir: str, table: str, rows: list[Row]) -> None:
    """``results.md`` (the table) and ``results.csv`` (the rows) in ``out_dir``."""
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        writer.writerows(csv_rows(rows))
