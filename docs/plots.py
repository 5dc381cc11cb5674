"""Draws the benchmark figures of docs/benchmarks.md from the table in docs/benchmark_cpu.md.

    python docs/plots.py            # writes docs/figures/bench_*.png

The numbers are read from the Markdown table (the latest full run of benchmarks/run.py), so a
new run's table redraws the figures without editing this script.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parent
TREES = {"transformer": "150-leaf tree (11.8M params)", "single": "one 16M-element tensor"}


def read_tables(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    """``{tree: {row name: {column: cell}}}`` from each ``## Step time: `tree` ...`` table."""
    tables, tree, header = {}, None, None
    for line in path.read_text().splitlines():
        m = re.match(r"## Step time: `(\w+)`", line)
        if m:
            tree, header = m.group(1), None
            tables[tree] = {}
        elif tree and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                tables[tree][cells[0]] = dict(zip(header, cells))
        elif line.startswith("## "):
            tree = None
    return tables


def number(cell: str) -> float | None:
    m = re.match(r"[\d.]+", cell or "")
    return float(m.group()) if m else None


def families(rows: dict[str, dict[str, str]]) -> list[str]:
    """The optimizers (rows without `` fused``), in the table's order, sorted by name."""
    return sorted(name for name in rows if " " not in name and not name.startswith("scale_by"))


def ratio_figure(tables, variants, title: str, xlabel: str, out: Path) -> None:
    """Horizontal bars per optimizer; ``variants``: ``(column, row suffix, legend, color)``."""
    fig, axes = plt.subplots(1, len(TREES), figsize=(11, 7), sharey=True)
    for ax, (tree, label) in zip(axes, TREES.items()):
        rows = tables[tree]
        names = [n for n in families(rows)
                 if any(number(rows.get(n + s, {}).get(c, "")) for c, s, _, _ in variants)]
        height = 0.8 / len(variants)
        for k, (column, suffix, legend, color) in enumerate(variants):
            values = [number(rows.get(n + suffix, {}).get(column, "")) for n in names]
            ys = [i + (k - (len(variants) - 1) / 2) * height for i in range(len(names))]
            ax.barh([y for y, v in zip(ys, values) if v], [v for v in values if v], height,
                    color=color, label=legend)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.set_title(label)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # shared: once for both
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(variants), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out)


def main(table: Path = DOCS / "benchmark_cpu.md", outdir: Path = DOCS / "figures") -> None:
    outdir.mkdir(exist_ok=True)
    tables = read_tables(table)
    ours, fused = ("ours (unfused chain)", "C0"), ("ours, fused=True", "C1")
    ratio_figure(tables, [("ours/optax", "", *ours), ("ours/optax", " fused", *fused)],
                 "Step time relative to optax (below 1: faster)", "ours / optax (median of ratios)",
                 outdir / "bench_ratio_optax.png")
    ratio_figure(tables, [("optax/floor", "", "optax", "C7"), ("ours/floor", "", *ours),
                          ("ours/floor", " fused", *fused)],
                 "Step time relative to the memory floor (1: the algorithm's bytes at full bandwidth)",
                 "step time / floor", outdir / "bench_ratio_floor.png")
    ratio_figure(tables, [("ours/torch", "", *ours), ("ours/torch", " fused", *fused),
                          ("ours/torch", " fused flat", "ours, fused + flat_state", "C2")],
                 "Step time relative to torch.optim (the faster of foreach and fused)",
                 "ours / torch", outdir / "bench_ratio_torch.png")

if __name__ == "__main__":
    main(*map(Path, sys.argv[1:]))
