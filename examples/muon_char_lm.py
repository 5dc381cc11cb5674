"""Muon against AdamW on the scanned character transformer, each at its best learning rate.

The model of ``scanned_transformer.py`` (``char_lm.CharTransformer`` with its blocks under
``nn.scan``: every kernel of the blocks one ``(depth, d_in, d_out)`` leaf). Both optimizers
run the same batches with warm-up and cosine decay to a tenth of the peak:

* AdamW (``weight_decay=0.01`` on the matrices), peak learning rate from ``--adamw-lrs``;
* Muon (reference form) on the blocks' kernels, each layer's matrix on its own (the
  attention's query/key/value kernels as ``d x (heads * head_dim)`` matrices, its output
  kernel as ``(heads * head_dim) x d``: optax's dimension numbers), peak from ``--muon-lrs``;
  AdamW at AdamW's best peak for the embeddings, the output head, biases and norms.

A sweep with seed 0 picks each one's best peak (final validation loss), then both run with
``--seeds`` seeds at it. The table: each run's final validation loss and the steps Muon needs
to reach AdamW's final validation loss (same seed), and their ratio; the plot: validation
loss against steps.

    python examples/muon_char_lm.py            # 10 to 15 minutes on 2 cores (10 runs of 400 steps)
    python examples/muon_char_lm.py --smoke    # a few steps of a tiny model (for the tests)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers as DN

import optimizers
import schedules

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from char_lm import batch_stream, load_corpus, loss_fn, validation_batch  # noqa: E402
from scanned_transformer import ScannedTransformer  # noqa: E402


def muon_dimensions(params):
    """Optax's dimension numbers for the blocks' kernels (layer axis 0), ``None`` (AdamW) elsewhere."""
    def dims(path, p):
        name = jax.tree_util.keystr(path)
        if not name.startswith("['blocks']") or not name.endswith("['kernel']"):
            return None
        if any(k in name for k in ("['query']", "['key']", "['value']")):
            return DN(1, (2, 3))  # (L, d, heads, head_dim)
        if "['out']" in name:
            return DN((1, 2), 3)  # (L, heads, head_dim, d)
        return DN(1, 2)  # (L, d_in, d_out)
    return jax.tree_util.tree_map_with_path(dims, params)


def schedule(peak, steps, warmup_frac=0.1):
    warm = max(int(warmup_frac * steps), 1)
    return schedules.warmup(schedules.cosine(peak, max(steps - warm, 1), end_value=peak / 10), warm)


def build(name, lr, steps, adamw_lr):
    clip = optax.clip_by_global_norm(1.0)
    if name == "AdamW":
        return optax.chain(clip, optimizers.adamw(schedule(lr, steps), weight_decay=0.01,
                                                  mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    return optax.chain(clip, optimizers.muon(schedule(lr, steps), weight_decay=0.01,
                                             muon_weight_dimension_numbers=muon_dimensions,
                                             adam_learning_rate=schedule(adamw_lr, steps)))


def train(model, tx, train_ids, val, batch_size, steps, eval_every, seed):
    """The validation loss at steps 0, eval_every, ..., steps."""
    params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, model.context), jnp.int32))["params"]
    params = nn.unbox(params)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(lambda p: loss_fn(model, p, x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    evaluate = jax.jit(lambda p: loss_fn(model, p, *val))
    batches = batch_stream(train_ids, batch_size, model.context, seed)
    curve = [(0, float(evaluate(params)))]
    for t in range(1, steps + 1):
        params, opt_state = step(params, opt_state, *next(batches))
        if t % eval_every == 0 or t == steps:
            curve.append((t, float(evaluate(params))))
    return curve


def steps_to(curve, target):
    """The first evaluated step at or below ``target`` (linearly interpolated between evaluations)."""
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if v1 <= target:
            return s1 if v0 == v1 else s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--adamw-lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--muon-lrs", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="out/muon_char_lm")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    width, depth, heads, context, steps, batch, eval_every = 64, 4, 4, 64, args.steps, args.batch_size, 20
    if args.smoke:
        width, depth, heads, context, steps, batch, eval_every = 16, 2, 2, 16, 4, 4, 2
        args.adamw_lrs, args.muon_lrs, args.seeds = args.adamw_lrs[:1], args.muon_lrs[:1], 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, vocab = load_corpus()
    model = ScannedTransformer(len(vocab), width, depth, heads, context)
    val = validation_batch(val_ids, context, 64)

    def run(name, lr, seed, adamw_lr):
        curve = train(model, build(name, lr, steps, adamw_lr), train_ids, val, batch, steps, eval_every, seed)
        print(f"{name} lr={lr:g} seed={seed}: final val. loss {curve[-1][1]:.4f}", flush=True)
        return curve

    sweep = {"AdamW": {lr: run("AdamW", lr, 0, lr) for lr in args.adamw_lrs}}
    best = {"AdamW": min(sweep["AdamW"], key=lambda lr: sweep["AdamW"][lr][-1][1])}
    sweep["Muon"] = {lr: run("Muon", lr, 0, best["AdamW"]) for lr in args.muon_lrs}
    best["Muon"] = min(sweep["Muon"], key=lambda lr: sweep["Muon"][lr][-1][1])
    curves = {name: [sweep[name][best[name]]] + [run(name, best[name], s, best["AdamW"])
                                                   for s in range(1, args.seeds)] for name in ("AdamW", "Muon")}

    lines = [f"Scanned character transformer: {depth} blocks of width {width}, context {context}, batch {batch}, "
             f"{steps} steps, warm-up and cosine.", "",
             "| sweep | " + " | ".join(f"{name} {lr:g}" for name in sweep for lr in sweep[name]) + " |",
             "| --- |" + " --- |" * sum(len(v) for v in sweep.values()),
             "| final val. loss (seed 0) | " + " | ".join(f"{sweep[n][lr][-1][1]:.4f}" for n in sweep
                                                      for lr in sweep[n]) + " |", "",
             f"| seed | AdamW (lr {best['AdamW']:g}) final | Muon (lr {best['Muon']:g}) final | "
             "Muon's steps to AdamW's final | ratio AdamW/Muon steps |", "| --- | --- | --- | --- | --- |"]
    ratios = []
    for seed, (a, m) in enumerate(zip(curves["AdamW"], curves["Muon"])):
        need = steps_to(m, a[-1][1])
        ratio = steps / need if need else float("nan")
        ratios.append(ratio)
        lines.append(f"| {seed} | {a[-1][1]:.4f} | {m[-1][1]:.4f} | {need if need is None else round(need)} | "
                     f"{ratio:.2f} |")
    finite = [r for r in ratios if np.isfinite(r)]
    if finite:
        lines += ["", f"Steps ratio (AdamW's steps / Muon's steps to the same validation loss): mean "
                      f"{np.mean(finite):.2f}, min {min(finite):.2f}, max {max(finite):.2f} over {len(finite)} seeds."]
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    print(table)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in (("AdamW", "tab:blue"), ("Muon", "tab:orange")):
        for k, curve in enumerate(curves[name]):
            s, v = zip(*curve)
            ax.plot(s, v, color=color, alpha=0.8, label=f"{name} (lr {best[name]:g})" if k == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "muon_vs_adamw.png", dpi=120)
    print(f"Wrote {out}/results.md and {out}/muon_vs_adamw.png")


if __name__ == "__main__":
    main()
