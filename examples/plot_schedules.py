"""Draw every schedule of the package in one figure.

    python examples/plot_schedules.py [--out docs/schedules.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import schedules  # noqa: E402

STEPS = 1000

GALLERY = {
    "constant(0.1)": schedules.constant(0.1),
    "factor(0.1, 0.995, min 0.01)": schedules.factor(0.1, 0.995, 0.01),
    "multi_factor(0.1, 0.5, [300, 600, 800])": schedules.multi_factor(0.1, 0.5, [300, 600, 800]),
    "polynomial(0.1, 0.001, power 2)": schedules.polynomial(0.1, 0.001, 2.0, 800),
    "cosine(0.1, 800, end 0.01)": schedules.cosine(0.1, 800, 0.01),
    "warmup(cosine, 100 steps)": schedules.warmup(schedules.cosine(0.1, 900, 0.001), 100),
    "join(constant, cosine, factor)": schedules.join(
        [schedules.constant(0.05), schedules.cosine(0.1, 400), schedules.factor(0.02, 0.99)], [200, 600]),
    "sgdr(0.1, T0=100, Tmult=2)": schedules.sgdr(0.1, 100, 0.001, cycle_mult=2),
    "sgdr(0.1, T0=200, peak decay 0.7)": schedules.sgdr(0.1, 200, 0.001, peak_decay=0.7),
    "cyclical triangular (base = max/6)": schedules.cyclical(0.1 / 6, 0.1, 125),
    "cyclical triangular2": schedules.cyclical(0.1 / 6, 0.1, 125, "triangular2"),
    "cyclical exp_range (gamma 0.998)": schedules.cyclical(0.1 / 6, 0.1, 125, "exp_range", gamma=0.998),
    "one_cycle: lr (cos)": schedules.one_cycle(STEPS, 0.1),
    "one_cycle: momentum 0.95-0.85-0.95": schedules.one_cycle(STEPS, 0.85, initial_value=0.95, final_value=0.95),
    "one_cycle three_phase, linear": schedules.one_cycle(STEPS, 0.1, anneal="linear", three_phase=True),
    "lr_range (exponential, log axis)": schedules.lr_range(1e-7, 10.0, STEPS),
    "swa_lr(0.1 -> 0.02, 200 steps)": schedules.swa_lr(0.1, 0.02, 200),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/schedules.png")
    args = parser.parse_args()
    steps = jnp.arange(STEPS)
    cols = 3
    rows = -(-len(GALLERY) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), sharex=True)
    for ax, (title, schedule) in zip(axes.flat, GALLERY.items()):
        ax.plot(steps, jax.jit(jax.vmap(schedule))(steps), lw=1.5)
        ax.set_title(title, fontsize=9)
        if title.startswith("lr_range"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(GALLERY):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
