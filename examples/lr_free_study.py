"""Training without guessing the learning rate, on scikit-learn's digits: does the flat-curve claim hold?

The main example's recipes (the LR range test's AdamW rate with the one-cycle policy, SGD with a
cyclical rate, SGD with warm restarts, Adam at a constant 3e-4) next to three that need no
schedule tuned to the run or no learning rate at all:

* AdamW on warmup-stable-decay (``schedules.wsd``) at the range test's rate,
* schedule-free AdamW (``optimizers.schedule_free_adamw``) at the range test's rate, evaluated
  at its average :math:`x` (``schedule_free_eval_params``),
* Prodigy (``optimizers.prodigy()``, its learning rate a multiplier left at 1).

One small MLP (64 -> 64 ReLU -> 10) on the digits (the file scikit-learn's ``load_digits`` reads;
``digits_mlp``'s stratified 80/20 split), the same batches for a given seed,
3 seeds, every run one jit-compiled ``lax.scan`` (vmapped over seeds and learning rates). Then
the sensitivity: the final validation accuracy and loss when the base learning rate is multiplied
by 7 factors spanning 3 decades (10^-1.5 to 10^1.5) for AdamW at a constant rate, AdamW + WSD,
schedule-free AdamW (each around the range test's rate) and Prodigy (around its 1).

Writes ``results.md`` (both tables), ``results.csv``, ``sensitivity.csv`` and ``lr_free_study.png``
(the validation curves and the sensitivity, two panels).
The same study on the character transformer of ``char_lm.py``: ``lr_free_char_lm.py``.

    python examples/lr_free_study.py            # ~3 minutes on a busy 2-core machine, mostly compiling
    python examples/lr_free_study.py --smoke    # a few steps, for the tests
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_mlp import Mlp, cross_entropy, load_data  # noqa: E402
from main import range_test, steps_to  # noqa: E402  (main selects matplotlib's Agg backend)

import optimizers  # noqa: E402
import schedules  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

SWEPT = ("AdamW, constant", "AdamW + WSD", "schedule-free AdamW", "Prodigy")


def recipes(steps: int, adamw_lr: float, sgd_lr: float):
    """name -> (factory of the learning-rate multiplier ``k``, evaluate at schedule-free's x, base rate)."""
    cycles, warmup = 4, max(steps // 20, 1)
    return {
        "(a) AdamW + one-cycle": (lambda k: optimizers.adamw(
            schedules.one_cycle(steps, k * adamw_lr),
            b1=schedules.one_cycle(steps, 0.85, initial_value=0.95, final_value=0.95), weight_decay=1e-4), False,
            adamw_lr),
        "(b) SGD + CLR (base = max/6)": (lambda k: optimizers.sgd(
            schedules.cyclical(k * sgd_lr / 6, k * sgd_lr, step_size=max(steps // (2 * cycles), 1)), momentum=0.9),
            False, sgd_lr),
        "(c) SGD + SGDR": (lambda k: optimizers.sgd(
            schedules.sgdr(k * sgd_lr, first_cycle_steps=max(steps // 7, 1), cycle_mult=2), momentum=0.9), False,
            sgd_lr),
        "(d) Adam, constant 3e-4": (lambda k: optimizers.adam(k * 3e-4), False, 3e-4),
        "AdamW, constant": (lambda k: optimizers.adamw(k * adamw_lr, weight_decay=0.0), False, adamw_lr),
        "AdamW + WSD": (lambda k: optimizers.adamw(schedules.wsd(k * adamw_lr, steps, warmup_steps=warmup),
                                                   weight_decay=0.0), False, adamw_lr),
        "schedule-free AdamW": (lambda k: optimizers.schedule_free_adamw(k * adamw_lr, warmup_steps=warmup), True,
                                adamw_lr),
        "Prodigy": (lambda k: optimizers.prodigy(k * 1.0), False, 1.0),
    }


def make_grid(model, data, steps, eval_every, build, at_x):
    """A compiled ``(multipliers, seeds, batches) -> (accuracy, loss)``, each ``(n_k, n_seeds, evaluations)``."""
    x_train, x_val, y_train, y_val = (jnp.asarray(a) for a in data)

    def run(k, seed, idx):
        params = model.init(jax.random.key(seed), x_train[:1])["params"]
        tx = build(k)

        def step(carry, ix):
            p, s = carry
            g = jax.grad(lambda q: cross_entropy(model.apply({"params": q}, x_train[ix]), y_train[ix]))(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        def chunk(carry, ixs):
            carry, _ = jax.lax.scan(step, carry, ixs)
            p = optimizers.schedule_free_eval_params(carry[1], carry[0]) if at_x else carry[0]
            logits = model.apply({"params": p}, x_val)
            loss = cross_entropy(logits, y_val)
            return carry, (jnp.mean(jnp.argmax(logits, -1) == y_val), jnp.where(jnp.isfinite(loss), loss, jnp.inf))

        _, curves = jax.lax.scan(chunk, (params, tx.init(params)), idx.reshape(steps // eval_every, eval_every, -1))
        return curves

    return jax.jit(jax.vmap(jax.vmap(run, (None, 0, 0)), (0, None, None)))


def batches(n, steps, batch, seeds):
    """The same batches for every recipe: ``(seeds, steps, batch)`` indices into the training set."""
    return np.stack([np.stack([rng.choice(n, batch, replace=False) for _ in range(steps)])
                     for rng in (np.random.default_rng(s) for s in seeds)])


def tables(curves, sweep, multipliers, target, eval_every, lrs, seconds):
    """The Markdown of both tables and their CSV rows."""
    rows, lines = [], [f"| recipe | final val. accuracy (mean ± std) | steps to {target:.0%} (mean) | seeds reaching it |",
                       "| --- | --- | --- | --- |"]
    for name, (acc, _) in curves.items():
        finals = acc[:, -1]
        hits = [steps_to([((i + 1) * eval_every, a) for i, a in enumerate(run)], target) for run in acc]
        reached = [h for h in hits if h is not None]
        rows.append(dict(recipe=name, final_mean=finals.mean(), final_std=finals.std(),
                         steps_to_target=float(np.mean(reached)) if reached else None,
                         reached=f"{len(reached)}/{len(hits)}"))
        to = f"{np.mean(reached):.0f}" if reached else "not reached"
        lines.append(f"| {name} | {finals.mean():.4f} ± {finals.std():.4f} | {to} | {len(reached)}/{len(hits)} |")
    lines += ["", f"Range-test suggestions (minimum / 10): AdamW {lrs[0]:.2e}, SGD {lrs[1]:.2e}. "
              f"Wall time {seconds:.0f} s.", "",
              "Final validation accuracy (mean over seeds; the loss in parentheses) against the learning rate, "
              "as a multiple of each optimizer's base rate (the range test's for AdamW, 1 for Prodigy):", ""]
    lines += ["| optimizer | " + " | ".join(f"×{k:.3g}" for k in multipliers) + " |",
              "| --- |" + " --- |" * len(multipliers)]
    sens = []
    for name, (acc, loss) in sweep.items():
        cells = []
        for i, k in enumerate(multipliers):
            a, lo = acc[i, :, -1], loss[i, :, -1]
            sens.append(dict(optimizer=name, multiplier=float(k), acc_mean=a.mean(), acc_min=a.min(), acc_max=a.max(),
                             loss_mean=lo.mean()))
            cells.append(f"{a.mean():.3f} ({lo.mean():.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), rows, sens


def plot(curves, sweep, multipliers, target, eval_every, path: Path, n_seeds: int):
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (name, (acc, _)) in enumerate(curves.items()):
        t = (np.arange(acc.shape[1]) + 1) * eval_every
        style = "--" if name.startswith("(") else "-"
        left.plot(t, acc.mean(0), style, color=f"C{i}", label=name)
        left.fill_between(t, acc.min(0), acc.max(0), color=f"C{i}", alpha=0.15)
    left.axhline(target, color="0.5", ls=":", lw=1)
    left.set(ylim=(0.5, 1.0), xlabel="step", ylabel="validation accuracy", title="digits MLP: mean and range over seeds")
    left.legend(fontsize=7, loc="lower right")
    for i, (name, (acc, _)) in enumerate(sweep.items()):
        finals = acc[:, :, -1]
        right.errorbar(multipliers, finals.mean(1), yerr=[finals.mean(1) - finals.min(1), finals.max(1) - finals.mean(1)],
                       marker="o", capsize=3, color=f"C{list(curves).index(name)}", label=name)
    right.set_xscale("log")
    right.axvline(1.0, color="0.5", ls=":", lw=1)
    right.set(ylim=(0.0, 1.0), xlabel="learning rate / base rate (AdamW: range test's; Prodigy: 1)",
              ylabel="final validation accuracy", title=f"sensitivity to the learning rate ({n_seeds} seeds)")
    right.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--out", default="out/lr_free_study")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps, one seed, 2 multipliers, the four swept optimizers at fixed rates (no range "
                             "test): for the tests")
    args = parser.parse_args(argv)
    steps, seeds, eval_every, range_steps = args.steps, list(range(args.seeds)), 10, 100
    multipliers = 10.0 ** np.linspace(-1.5, 1.5, 7)
    if args.smoke:
        steps, seeds, eval_every, multipliers = 20, [0], 10, np.array([0.1, 1.0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    data, model = load_data(), Mlp(64)
    params = model.init(jax.random.key(0), data[0][:1])["params"]
    if args.smoke:
        adamw_lr, sgd_lr = 1e-2, 1e-1
    else:
        adamw_lr = range_test(model, params, data, optimizers.adamw, range_steps, out, "adamw").min_over_10
        sgd_lr = range_test(model, params, data, lambda learning_rate: optimizers.sgd(learning_rate, momentum=0.9),
                            range_steps, out, "sgd").min_over_10
    print(f"LR range test suggestions (minimum / 10): AdamW {adamw_lr:.2e}, SGD+momentum {sgd_lr:.2e}")

    idx = jnp.asarray(batches(len(data[0]), steps, 64, seeds))
    seed_keys = jnp.asarray(seeds)
    curves, sweep = {}, {}
    for name, (build, at_x, _) in recipes(steps, adamw_lr, sgd_lr).items():
        if args.smoke and name not in SWEPT:
            continue
        ks = multipliers if name in SWEPT else np.array([1.0])
        acc, loss = (np.asarray(a) for a in make_grid(model, data, steps, eval_every, build, at_x)(
            jnp.asarray(ks, jnp.float32), seed_keys, idx))
        one = int(np.argmin(np.abs(np.log(ks))))  # the base rate itself
        curves[name] = (acc[one], loss[one])
        if name in SWEPT:
            sweep[name] = (acc, loss)
        print(f"{name}: final accuracy {acc[one, :, -1].mean():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    table, rows, sens = tables(curves, sweep, multipliers, args.target, eval_every, (adamw_lr, sgd_lr),
                               time.perf_counter() - start)
    (out / "results.md").write_text(table + "\n")
    for name, data_rows in (("results.csv", rows), ("sensitivity.csv", sens)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data_rows[0]))
            writer.writeheader()
            writer.writerows(data_rows)
    plot(curves, sweep, multipliers, args.target, eval_every, out / "lr_free_study.png", len(seeds))
    print(table)
    print(f"wrote {out}/results.md, results.csv, sensitivity.csv, lr_free_study.png"
          + ("" if args.smoke else ", lr_finder_adamw.png, lr_finder_sgd.png"))


if __name__ == "__main__":
    main()
