"""The workflow of “What changed in deep-learning optimizers since Adam” (Phúc Lê) on scikit-learn's digits, end to end.

1. Run the LR range test for AdamW and for SGD with momentum, and save its curves.
2. Train the same small CNN on the same split, the same number of steps, 3 seeds each, with
   (a) AdamW + the one-cycle policy (learning rate and b1 cycled, Smith's super-convergence),
   (b) SGD + momentum + triangular cyclical learning rate, base = max / 6 (“Adaptive and cyclical learning rates”),
   (c) SGD + momentum + SGDR warm restarts,
   (d) the baseline Adam at a constant 3e-4.
3. Print and save a table (Markdown and CSV): final validation accuracy (mean and spread),
   the steps each needs to first reach a target validation accuracy, and the ratio of (a)'s
   steps to (d)'s; plot the validation accuracy curves.

    python examples/main.py                # ~1 minute on 2 cores
    python examples/main.py --large        # longer and wider
    python examples/main.py --smoke        # a few steps, for the tests
"""

from __future__ import annotations

import argparse
import csv
import itertools
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import optimizers
import schedules

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class Cnn(nn.Module):
    """Two 3x3 convolutions and a linear classifier over 8x8 grey images."""

    width: int = 16

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def load_data():
    """The 1797 digits images scaled to [0, 1]; one stratified 80/20 split for every run."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(x, digits.target, test_size=0.2, random_state=0, stratify=digits.target)


def batch_stream(x, y, batch_size, seed):
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.choice(len(x), batch_size, replace=False)
        yield x[idx], y[idx]


def loss_fn(model, params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, x), y).mean()


def range_test(model, params, data, factory, steps, out: Path, name: str):
    """“What changed in deep-learning optimizers since Adam” (Phúc Lê)'s step 1: the LR range test; returns its suggestion (minimum / 10)."""
    x_train, _, y_train, _ = data
    result = schedules.lr_finder(lambda p, b: loss_fn(model, p, b), params, batch_stream(x_train, y_train, 64, 123),
                                 factory, min_lr=1e-7, max_lr=10.0, num_steps=steps, progress=False)
    result.plot(out / f"lr_finder_{name}.png")
    return result


def recipes(steps: int, adamw_lr: float, sgd_lr: float):
    """The four optimizers of the comparison, each built for ``steps`` steps."""
    cycles = 4
    return {
        "(a) AdamW + one-cycle": optimizers.adamw(
            schedules.one_cycle(steps, adamw_lr),
            b1=schedules.one_cycle(steps, 0.85, initial_value=0.95, final_value=0.95),
            weight_decay=1e-4),
        "(b) SGD + CLR (base = max/6)": optimizers.sgd(
            schedules.cyclical(sgd_lr / 6, sgd_lr, step_size=max(steps // (2 * cycles), 1)), momentum=0.9),
        "(c) SGD + SGDR": optimizers.sgd(
            schedules.sgdr(sgd_lr, first_cycle_steps=max(steps // 7, 1), cycle_mult=2), momentum=0.9),
        "(d) Adam, constant 3e-4": optimizers.adam(3e-4),
    }


def train(model, tx, data, steps, seed, eval_every):
    """Validation accuracy every ``eval_every`` steps of one run."""
    x_train, x_val, y_train, y_val = data
    params = model.init(jax.random.key(seed), x_train[:1])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state, batch):
        return state.apply_gradients(grads=jax.grad(lambda p: loss_fn(model, p, batch))(state.params))

    @jax.jit
    def accuracy(params):
        return jnp.mean(jnp.argmax(model.apply({"params": params}, x_val), -1) == y_val)

    curve = []
    for t, batch in zip(range(1, steps + 1), batch_stream(x_train, y_train, 64, seed)):
        state = step(state, batch)
        if t % eval_every == 0 or t == steps:
            curve.append((t, float(accuracy(state.params))))
    return curve


def steps_to(curve, target):
    return next((t for t, acc in curve if acc >= target), None)


def summarize(curves, target):
    """One row per recipe: final accuracy mean/std, steps to the target (mean over seeds reaching it)."""
    rows = []
    for name, runs in curves.items():
        finals = np.array([run[-1][1] for run in runs])
        hits = [steps_to(run, target) for run in runs]
        reached = [h for h in hits if h is not None]
        rows.append(dict(recipe=name, final_mean=finals.mean(), final_std=finals.std(),
                         steps_to_target=float(np.mean(reached)) if reached else None,
                         reached=f"{len(reached)}/{len(runs)}"))
    a = next(r for r in rows if r["recipe"].startswith("(a)"))["steps_to_target"]
    d = next(r for r in rows if r["recipe"].startswith("(d)"))["steps_to_target"]
    ratio = a / d if a and d else None
    return rows, ratio


def write_table(rows, ratio, target, lrs, out: Path, seconds: float):
    header = f"| recipe | final val. accuracy (mean ± std) | steps to {target:.0%} (mean) | seeds reaching it |"
    lines = [header, "| --- | --- | --- | --- |"]
    for r in rows:
        steps = "not reached" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}"
        lines.append(f"| {r['recipe']} | {r['final_mean']:.4f} ± {r['final_std']:.4f} | {steps} | {r['reached']} |")
    ratio_text = "n/a (a target not reached)" if ratio is None else f"{ratio:.2f}"
    lines += ["", f"Steps to {target:.0%}, (a) / (d): **{ratio_text}**. "
              f"Range-test suggestions (minimum / 10): AdamW {lrs[0]:.2e}, SGD {lrs[1]:.2e}. "
              f"Wall time {seconds:.0f} s."]
    return save_table(lines, rows, out)


def save_table(lines, rows, out: Path) -> str:
    """The Markdown ``lines`` to ``out/results.md`` and the ``rows`` (dicts) to ``out/results.csv``."""
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


def plot_curves(curves, target, out: Path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (name, runs) in zip(itertools.cycle(["C0", "C1", "C2", "C3"]), curves.items()):
        steps = [t for t, _ in runs[0]]
        accs = np.array([[acc for _, acc in run] for run in runs])
        ax.plot(steps, accs.mean(0), color=color, label=name)
        ax.fill_between(steps, accs.min(0), accs.max(0), color=color, alpha=0.2)
    ax.axhline(target, color="0.5", ls=":", lw=1)
    ax.set_ylim(0.5, 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy")
    ax.set_title("digits CNN: mean and range over seeds")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "val_accuracy.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--out", default="out/main")
    parser.add_argument("--large", action="store_true", help="3000 steps and a 2x wider CNN")
    parser.add_argument("--smoke", action="store_true", help="a few steps and one seed (for the tests)")
    args = parser.parse_args(argv)
    steps, seeds, width, range_steps, eval_every = args.steps, args.seeds, 16, 100, 20
    if args.large:
        steps, width = 3000, 32
    if args.smoke:
        steps, seeds, range_steps, eval_every = 40, 1, 20, 10
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    data, model = load_data(), Cnn(width)
    params = model.init(jax.random.key(0), data[0][:1])["params"]
    adamw_lr = range_test(model, params, data, optimizers.adamw, range_steps, out, "adamw").min_over_10
    sgd_lr = range_test(model, params, data, lambda learning_rate: optimizers.sgd(learning_rate, momentum=0.9),
                        range_steps, out, "sgd").min_over_10
    print(f"LR range test suggestions (minimum / 10): AdamW {adamw_lr:.2e}, SGD+momentum {sgd_lr:.2e}")

    curves = {}
    runs = [(name, seed) for name in recipes(steps, adamw_lr, sgd_lr) for seed in range(seeds)]
    for name, seed in tqdm(runs, desc="training"):
        tx = recipes(steps, adamw_lr, sgd_lr)[name]
        curves.setdefault(name, []).append(train(model, tx, data, steps, seed, eval_every))

    rows, ratio = summarize(curves, args.target)
    plot_curves(curves, args.target, out)
    table = write_table(rows, ratio, args.target, (adamw_lr, sgd_lr), out, time.perf_counter() - start)
    print(table)
    print(f"wrote {out}/results.md, results.csv, val_accuracy.png, lr_finder_adamw.png, lr_finder_sgd.png")


if __name__ == "__main__":
    main()
