"""“Adaptive and cyclical learning rates”'s comparison on scikit-learn's digits: six optimizers, one CNN, 3 seeds each.

Adagrad, Adadelta, RMSProp, Adam and Adamax, each at PyTorch's default learning rate (document
004 does not list its learning rates; it compares the optimizers off the shelf), against SGD +
momentum 0.9 with the triangular cyclical learning rate, its maximum from an LR range test (the
minimum of the smoothed loss divided by 10) and its base = max / 6, as “Adaptive and cyclical learning rates” does. The
same CNN and data split as examples/main.py, the same batches for a given seed, the same number
of steps for every run. Writes the training and validation accuracy curves (one figure, two
panels), the range test's plot and a table (Markdown and CSV) of final accuracies, mean ± std
over seeds.

    python examples/compare_optimizers.py             # ~1 minute on 2 cores
    python examples/compare_optimizers.py --large     # longer and wider
    python examples/compare_optimizers.py --smoke     # a few steps, for the tests
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from main import Cnn, batch_stream, load_data, loss_fn, save_table, steps_to  # noqa: E402

import optimizers  # noqa: E402
import schedules  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (main has selected the Agg backend)

# PyTorch's default learning rates (torch.optim, 2.x); Adadelta's 1.0 is the paper's "no learning rate".
DEFAULT_LR = {"Adagrad": 1e-2, "Adadelta": 1.0, "RMSProp": 1e-2, "Adam": 1e-3, "Adamax": 2e-3}


def recipes(steps: int, clr_max: float, cycles: int):
    """name -> (optimizer, learning-rate description) for the six optimizers of “Adaptive and cyclical learning rates”."""
    step_size = max(steps // (2 * cycles), 1)  # whole cycles: every run ends at the base value
    return {
        "Adagrad": (optimizers.adagrad(DEFAULT_LR["Adagrad"]), f"{DEFAULT_LR['Adagrad']:g}"),
        "Adadelta": (optimizers.adadelta(DEFAULT_LR["Adadelta"]), f"{DEFAULT_LR['Adadelta']:g}"),
        "RMSProp": (optimizers.rmsprop(DEFAULT_LR["RMSProp"]), f"{DEFAULT_LR['RMSProp']:g}"),
        "Adam": (optimizers.adam(DEFAULT_LR["Adam"]), f"{DEFAULT_LR['Adam']:g}"),
        "Adamax": (optimizers.adamax(DEFAULT_LR["Adamax"]), f"{DEFAULT_LR['Adamax']:g}"),
        "SGD + CLR": (optimizers.sgd(schedules.cyclical(clr_max / 6, clr_max, step_size), momentum=0.9),
                      f"triangular {clr_max / 6:.2e} to {clr_max:.2e}, step size {step_size}"),
    }


def make_accuracies(model, data):
    """One compiled function for every run: params -> (train accuracy, validation accuracy)."""
    x_train, x_val, y_train, y_val = data

    @jax.jit
    def accuracies(params):
        def acc(x, y):
            return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)
        return acc(x_train, y_train), acc(x_val, y_val)

    return accuracies


def train_seeds(model, tx, data, accuracies, steps, seeds, eval_every, progress):
    """For each seed, (step, train accuracy, validation accuracy) every ``eval_every`` steps."""
    x_train, _, y_train, _ = data

    @jax.jit  # compiled once per optimizer, reused for its seeds
    def step(params, opt_state, batch):
        grads = jax.grad(lambda p: loss_fn(model, p, batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    runs = []
    for seed in range(seeds):
        params = model.init(jax.random.key(seed), x_train[:1])["params"]
        opt_state = tx.init(params)
        curve = []
        for t, batch in zip(range(1, steps + 1), batch_stream(x_train, y_train, 64, seed)):
            params, opt_state = step(params, opt_state, batch)
            if t % eval_every == 0 or t == steps:
                train_acc, val_acc = accuracies(params)
                curve.append((t, float(train_acc), float(val_acc)))
        runs.append(curve)
        progress.update()
    return runs


def summarize(curves, lrs, target):
    rows = []
    for name, runs in curves.items():
        train = np.array([run[-1][1] for run in runs])
        val = np.array([run[-1][2] for run in runs])
        hits = [steps_to([(t, v) for t, _, v in run], target) for run in runs]
        reached = [h for h in hits if h is not None]
        rows.append(dict(optimizer=name, learning_rate=lrs[name],
                         final_train_mean=train.mean(), final_train_std=train.std(),
                         final_val_mean=val.mean(), final_val_std=val.std(),
                         steps_to_target=float(np.mean(reached)) if reached else None,
                         reached=f"{len(reached)}/{len(runs)}"))
    return rows


def write_table(rows, target, steps, seeds, clr_max, seconds, out: Path):
    lines = [f"| optimizer | learning rate | final train accuracy | final val. accuracy | "
             f"steps to {target:.0%} val. (mean) | seeds reaching it |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        hit = "not reached" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}"
        lines.append(f"| {r['optimizer']} | {r['learning_rate']} | {r['final_train_mean']:.4f} ± "
                     f"{r['final_train_std']:.4f} | {r['final_val_mean']:.4f} ± {r['final_val_std']:.4f} | "
                     f"{hit} | {r['reached']} |")
    lines += ["", f"{steps} steps of batch 64, mean ± std over {seeds} seed(s). SGD + CLR: momentum 0.9, "
              f"max = range-test minimum / 10 = {clr_max:.2e}, base = max / 6. Wall time {seconds:.0f} s."]
    return save_table(lines, rows, out)


def plot_curves(curves, out: Path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for i, (name, runs) in enumerate(curves.items()):
        steps = [t for t, _, _ in runs[0]]
        for ax, column in zip(axes, (1, 2)):
            accs = np.array([[point[column] for point in run] for run in runs])
            ax.plot(steps, accs.mean(0), color=f"C{i}", label=name)
            ax.fill_between(steps, accs.min(0), accs.max(0), color=f"C{i}", alpha=0.2)
    for ax, title in zip(axes, ("training accuracy", "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean and range over seeds)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("digits CNN: “Adaptive and cyclical learning rates”'s six optimizers")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=4, help="CLR cycles over the run")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--out", default="out/compare_optimizers")
    parser.add_argument("--large", action="store_true", help="3000 steps and a 2x wider CNN")
    parser.add_argument("--smoke", action="store_true", help="a few steps and one seed (for the tests)")
    args = parser.parse_args(argv)
    steps, seeds, width, range_steps, eval_every = args.steps, args.seeds, 16, 100, 20
    if args.large:
        steps, width = 3000, 32
    if args.smoke:
        steps, seeds, range_steps, eval_every = 30, 1, 20, 10
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    data, model = load_data(), Cnn(width)
    x_train, _, y_train, _ = data
    params = model.init(jax.random.key(0), x_train[:1])["params"]
    # “Adaptive and cyclical learning rates”, step 1: an exponential ramp from 1e-7; the bound is 10x left of the
    # minimum.
    result = schedules.lr_finder(lambda p, b: loss_fn(model, p, b), params, batch_stream(x_train, y_train, 64, 123),
                                 lambda learning_rate: optimizers.sgd(learning_rate, momentum=0.9),
                                 min_lr=1e-7, max_lr=10.0, num_steps=range_steps, progress=False)
    result.plot(out / "lr_finder_sgd.png")
    clr_max = result.min_over_10
    print(f"LR range test, SGD + momentum: minimum / 10 = {clr_max:.2e}; CLR from {clr_max / 6:.2e} to {clr_max:.2e}")

    table_recipes = recipes(steps, clr_max, args.cycles)
    accuracies = make_accuracies(model, data)
    curves, lrs = {}, {}
    with tqdm(total=len(table_recipes) * seeds, desc="training") as progress:
        for name, (tx, lr_text) in table_recipes.items():
            progress.set_postfix_str(name)
            curves[name] = train_seeds(model, tx, data, accuracies, steps, seeds, eval_every, progress)
            lrs[name] = lr_text

    rows = summarize(curves, lrs, args.target)
    plot_curves(curves, out)
    table = write_table(rows, args.target, steps, seeds, clr_max, time.perf_counter() - start, out)
    print(table)
    print(f"wrote {out}/results.md, results.csv, accuracy.png, lr_finder_sgd.png")


if __name__ == "__main__":
    main()
