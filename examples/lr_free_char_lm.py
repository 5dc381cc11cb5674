"""The learning-rate-free study on the character transformer: does the flat-curve claim hold there?

The second task of the study (``lr_free_study.py`` runs the first, on the digits): ``char_lm.py``'s
small transformer, corpus, held-out windows and AdamW recipe (warm-up, then a cosine decay to a
tenth of the peak; weight decay 0.01 on kernels and embeddings; gradients clipped to norm 1), next to

* AdamW on warmup-stable-decay (``schedules.wsd``, the same warm-up, ``1-sqrt`` cooldown over
  the last 20%) at the same peak rate,
* schedule-free AdamW (``optimizers.schedule_free_adamw``) at the same rate and warm-up,
  evaluated at its average :math:`x` (``schedule_free_eval_params``),
* Prodigy (``optimizers.prodigy()``, its learning rate a multiplier left at 1, its defaults),

all behind the same clipping. 3 seeds (the seed draws the initialization and the batches; a
seed's batches are the same for every recipe), the final validation loss and the steps to the
baseline's mean final validation loss. Then the sensitivity: the final validation loss of seed 0
with the base rate multiplied by 5 factors over 3 decades (10^-1.5 to 10^1.5). Each optimizer is
one jit-compiled ``lax.scan`` vmapped over its runs (the 3 seeds at x1 and seed 0 at the other
multipliers).

Writes ``results.md`` (both tables), ``results.csv``, ``sensitivity.csv`` and
``lr_free_char_lm.png`` (validation curves and the sensitivity).

    python examples/lr_free_char_lm.py            # ~6.5 minutes on a busy 2-core machine
    python examples/lr_free_char_lm.py --smoke    # a few steps, a tiny model, for the tests
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
from char_lm import CharTransformer, decay_mask, load_corpus, loss_fn, validation_batch  # noqa: E402

import optimizers  # noqa: E402
import schedules  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (char_lm selects the Agg backend)

BASELINE = "AdamW + warm-up + cosine"
SMOKE = (BASELINE, "schedule-free AdamW")  # compiling dominates a smoke run: two recipes, one of them evaluated at x


def recipes(steps: int, lr: float, warmup_frac: float):
    """name -> (factory of the optimizer from the learning-rate multiplier ``k``, evaluate at x, base rate)."""
    warm = max(int(warmup_frac * steps), 1)
    clip = optax.clip_by_global_norm(1.0)
    return {
        BASELINE: (lambda k: optax.chain(clip, optimizers.adamw(
            schedules.warmup(schedules.cosine(k * lr, max(steps - warm, 1), end_value=k * lr / 10), warm),
            weight_decay=0.01, mask=decay_mask)), False, lr),
        "AdamW + WSD": (lambda k: optax.chain(clip, optimizers.adamw(
            schedules.wsd(k * lr, steps, warmup_steps=warm), weight_decay=0.01, mask=decay_mask)), False, lr),
        "schedule-free AdamW": (lambda k: optax.chain(clip, optimizers.schedule_free_adamw(
            k * lr, warmup_steps=warm, weight_decay=0.01, mask=decay_mask)), True, lr),
        "Prodigy": (lambda k: optax.chain(clip, optimizers.prodigy(k * 1.0)), False, 1.0),
    }


def make_runs(model, train_ids, val, steps, eval_every, build, at_x):
    """A compiled ``(multipliers, seeds, starts) -> validation losses (runs, evaluations)``."""
    ids, offsets = jnp.asarray(train_ids), jnp.arange(model.context + 1)

    def run(k, seed, starts):
        params = model.init(jax.random.key(seed), jnp.zeros((1, model.context), jnp.int32))["params"]
        tx = build(k)

        def step(carry, s):
            p, state = carry
            windows = ids[s[:, None] + offsets]
            g = jax.grad(lambda q: loss_fn(model, q, windows[:, :-1], windows[:, 1:]))(p)
            u, state = tx.update(g, state, p)
            return (optax.apply_updates(p, u), state), None

        def chunk(carry, ss):
            carry, _ = jax.lax.scan(step, carry, ss)
            p = optimizers.schedule_free_eval_params(carry[1], carry[0]) if at_x else carry[0]
            loss = loss_fn(model, p, *val)
            return carry, jnp.where(jnp.isfinite(loss), loss, jnp.inf)

        _, curve = jax.lax.scan(chunk, (params, tx.init(params)),
                                starts.reshape(steps // eval_every, eval_every, -1))
        return curve

    return jax.jit(jax.vmap(run))


def first_at_or_below(curve, eval_every, target):
    return next(((i + 1) * eval_every for i, v in enumerate(curve) if v <= target), None)


def fmt(v):
    return f"{v:.3f}" if np.isfinite(v) else "diverged"


def tables(curves, sweep, multipliers, eval_every, lr, steps, seconds):
    """The Markdown of both tables and their CSV rows; the target is the baseline's mean final loss."""
    target = float(curves[BASELINE][:, -1].mean())
    lines = [f"| recipe | final val. loss (mean ± std) | steps to {target:.3f} (mean) | seeds reaching it |",
             "| --- | --- | --- | --- |"]
    rows = []
    for name, runs in curves.items():
        finals = runs[:, -1]
        hits = [first_at_or_below(r, eval_every, target + 1e-6) for r in runs]
        reached = [h for h in hits if h is not None]
        to = f"{np.mean(reached):.0f}" if reached else "not reached"
        rows.append(dict(recipe=name, final_mean=finals.mean(), final_std=finals.std(),
                         steps_to_target=float(np.mean(reached)) if reached else None,
                         reached=f"{len(reached)}/{len(hits)}"))
        lines.append(f"| {name} | {fmt(finals.mean())} ± {finals.std():.3f} | {to} | {len(reached)}/{len(hits)} |")
    lines += ["", f"Target: the baseline's mean final validation loss, {target:.3f} nats per character, "
              f"checked every {eval_every} steps of {steps}. Base rate {lr:.1e} (char_lm's). "
              f"Wall time {seconds:.0f} s.", "",
              "Final validation loss of seed 0 against the learning rate, as a multiple of each optimizer's base "
              f"rate ({lr:.1e} for the AdamW forms, 1 for Prodigy):", ""]
    lines += ["| optimizer | " + " | ".join(f"×{k:.3g}" for k in multipliers) + " |",
              "| --- |" + " --- |" * len(multipliers)]
    sens = []
    for name, finals in sweep.items():
        sens += [dict(optimizer=name, multiplier=float(k), val_loss=float(v)) for k, v in zip(multipliers, finals)]
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in finals) + " |")
    return "\n".join(lines), rows, sens, target


def plot(curves, sweep, multipliers, eval_every, target, path: Path):
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (name, runs) in enumerate(curves.items()):
        t = (np.arange(runs.shape[1]) + 1) * eval_every
        left.plot(t, runs.mean(0), color=f"C{i}", label=name)
        left.fill_between(t, runs.min(0), runs.max(0), color=f"C{i}", alpha=0.15)
    left.axhline(target, color="0.5", ls=":", lw=1)
    top = float(np.nanmax([r[:, 0].max() for r in curves.values()]))
    left.set(ylim=(min(r.min() for r in curves.values()) - 0.05, min(top, 4.5)), xlabel="step",
             ylabel="validation loss (nats per character)",
             title="character transformer: mean and range over seeds")
    left.legend(fontsize=8)
    for i, (name, finals) in enumerate(sweep.items()):
        right.plot(multipliers, np.where(np.isfinite(finals), finals, np.nan), marker="o", color=f"C{i}", label=name)
    right.set_xscale("log")
    right.axvline(1.0, color="0.5", ls=":", lw=1)
    right.axhline(target, color="0.5", ls=":", lw=1)
    right.set(xlabel="learning rate / base rate (AdamW forms: char_lm's; Prodigy: 1)",
              ylabel="final validation loss (seed 0)", title="sensitivity to the learning rate")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3, help="the AdamW forms' peak rate (char_lm's)")
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up, a fraction of the steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="out/lr_free_char_lm")
    parser.add_argument("--smoke", action="store_true", help="a few steps, a tiny model, 2 seeds, 2 multipliers, "
                        "the baseline and schedule-free AdamW only (tests)")
    args = parser.parse_args(argv)
    steps, batch, seeds, eval_every = args.steps, args.batch_size, args.seeds, 20
    width, depth, heads, context, n_val = 64, 2, 4, 64, 128
    multipliers = 10.0 ** np.linspace(-1.5, 1.5, 5)
    if args.smoke:
        steps, batch, seeds, eval_every, multipliers = 8, 4, 2, 4, np.array([0.1, 1.0])
        width, depth, heads, context, n_val = 16, 1, 2, 16, 8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    train_ids, val_ids, vocab = load_corpus()
    model = CharTransformer(len(vocab), width, depth, heads, context)
    val = tuple(jnp.asarray(a) for a in validation_batch(val_ids, context, n_val))
    # The runs: every seed at x1, then seed 0 at each other multiplier.
    one = int(np.argmin(np.abs(np.log(multipliers))))
    others = [i for i in range(len(multipliers)) if i != one]
    ks = np.array([1.0] * seeds + [multipliers[i] for i in others], np.float32)
    run_seeds = np.array(list(range(seeds)) + [0] * len(others), np.int32)
    starts = np.stack([np.random.default_rng(s).integers(0, len(train_ids) - context - 1, (steps, batch))
                       for s in run_seeds]).astype(np.int32)

    curves, sweep = {}, {}
    for name, (build, at_x, _) in recipes(steps, args.lr, args.warmup).items():
        if args.smoke and name not in SMOKE:
            continue
        losses = np.asarray(make_runs(model, train_ids, val, steps, eval_every, build, at_x)(
            jnp.asarray(ks), jnp.asarray(run_seeds), jnp.asarray(starts)))
        curves[name] = losses[:seeds]
        finals = np.empty(len(multipliers))
        finals[one] = losses[0, -1]
        finals[others] = losses[seeds:, -1]
        sweep[name] = finals
        print(f"{name}: final validation loss {losses[:seeds, -1].mean():.3f} ({time.perf_counter() - start:.0f} s)",
              flush=True)

    table, rows, sens, target = tables(curves, sweep, multipliers, eval_every, args.lr, steps,
                                       time.perf_counter() - start)
    (out / "results.md").write_text(table + "\n")
    for name, data_rows in (("results.csv", rows), ("sensitivity.csv", sens)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data_rows[0]))
            writer.writeheader()
            writer.writerows(data_rows)
    plot(curves, sweep, multipliers, eval_every, target, out / "lr_free_char_lm.png")
    print(table)
    print(f"wrote {out}/results.md, results.csv, sensitivity.csv, lr_free_char_lm.png")


if __name__ == "__main__":
    main()
