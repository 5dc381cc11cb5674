"""A character-level transformer language model on Python's own standard-library sources.

A small decoder-only transformer (Flax Linen: pre-norm blocks of causal self-attention and an
MLP) learns to predict the next character of a few standard-library modules, read from the
interpreter's ``Lib`` folder (``sysconfig.get_paths()["stdlib"]``); every 10th block of 2048
characters is held out for validation. Two runs see the same number of characters (the same
epochs, the premise of the linear scaling rule):

(i)  AdamW at batch B, the learning rate warmed up linearly and then decayed by a cosine,
     ``optax.chain(optax.clip_by_global_norm(1.0), optimizers.adamw(schedules.warmup(
     schedules.cosine(...), ...)))``;
(ii) LAMB at batch 8B for 1/8 of the steps, the peak learning rate scaled by the linear
     scaling rule (8x the batch, 8x the learning rate; Goyal et al., cited by “Optimization algorithms in deep
     learning”),
     the same warm-up fraction and cosine decay, the same clipping.

It reports the training and validation loss curves (against steps, characters seen and train
seconds) and a table of the steps, characters and seconds (compilation and evaluation
excluded) each run needs to first reach a target validation loss, and a sample of text.

    python examples/char_lm.py             # 1.5 to 3 minutes on 2 cores
    python examples/char_lm.py --large     # a wider, deeper model, longer
    python examples/char_lm.py --smoke     # a few steps, tiny sizes, for the tests
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from tqdm import tqdm

import optimizers
import schedules

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from main import save_table  # noqa: E402

MODULES = ["textwrap.py", "string.py", "heapq.py", "bisect.py", "fractions.py", "shlex.py", "pprint.py",
           "calendar.py", "functools.py", "random.py", "statistics.py"]


def load_corpus(modules=MODULES, block=2048):
    """The modules' sources as character ids and their vocabulary; every 10th block of text is held out."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    text = "\n\n".join((lib / name).read_text(encoding="utf-8") for name in modules if (lib / name).exists())
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text], np.int32)
    held_out = (np.arange(len(ids)) // block) % 10 == 9
    return ids[~held_out], ids[held_out], vocab


class Block(nn.Module):
    width: int
    heads: int

    @nn.compact
    def __call__(self, x, mask):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width)(h, mask=mask)
        h = nn.LayerNorm()(x)
        return x + nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(h)))


class CharTransformer(nn.Module):
    """Token and learned position embeddings, ``depth`` pre-norm blocks, a final norm and logits."""

    vocab_size: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    context: int = 64

    @nn.compact
    def __call__(self, tokens):
        x, mask = embedded(self, tokens)
        for _ in range(self.depth):
            x = Block(self.width, self.heads)(x, mask)
        return logits(self, x)


def embedded(model, tokens):
    """The token plus position embeddings of ``tokens`` and the causal mask, as ``model``'s own
    submodules (``model``: a module with CharTransformer's fields, called from its compact method)."""
    position = model.param("position", nn.initializers.normal(0.02), (model.context, model.width))
    x = nn.Embed(model.vocab_size, model.width)(tokens) + position[: tokens.shape[1]]
    return x, nn.make_causal_mask(tokens)


def logits(model, x):
    """The final norm and the output layer of ``model`` (as :func:`embedded`)."""
    return nn.Dense(model.vocab_size)(nn.LayerNorm()(x))


def batch_stream(ids, batch_size, context, seed):
    """Random windows of ``context + 1`` characters: inputs and next-character targets."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(ids) - context - 1, batch_size)
        windows = ids[starts[:, None] + np.arange(context + 1)]
        yield windows[:, :-1], windows[:, 1:]


def validation_batch(ids, context, count):
    """``count`` evenly spaced held-out windows: the same validation set for every run."""
    starts = np.linspace(0, len(ids) - context - 1, count).astype(int)
    windows = ids[starts[:, None] + np.arange(context + 1)]
    return windows[:, :-1], windows[:, 1:]


def decay_mask(params):
    """Weight decay on kernels and embeddings (2-D and up), not on biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def recipes(steps, batch_size, lr, warmup_frac, scale=8):
    """The two runs: name -> (optimizer, batch size, steps, peak learning rate, warm-up steps)."""
    def schedule(peak, n):
        warm = max(int(warmup_frac * n), 1)
        return schedules.warmup(schedules.cosine(peak, max(n - warm, 1), end_value=peak / 10), warm), warm

    adamw_lr, adamw_warm = schedule(lr, steps)
    lamb_steps = max(steps // scale, 1)
    lamb_lr, lamb_warm = schedule(scale * lr, lamb_steps)  # the linear scaling rule
    clip = optax.clip_by_global_norm(1.0)
    return {
        "(i) AdamW + warmup + cosine": (
            optax.chain(clip, optimizers.adamw(adamw_lr, weight_decay=0.01, mask=decay_mask)),
            batch_size, steps, lr, adamw_warm),
        f"(ii) LAMB, {scale}x batch, {scale}x lr": (
            optax.chain(clip, optimizers.lamb(lamb_lr, weight_decay=0.01, mask=decay_mask)),
            scale * batch_size, lamb_steps, scale * lr, lamb_warm),
    }


def loss_fn(model, params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, x), y).mean()


def init_params(model, seed):
    return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, model.context), jnp.int32))["params"]


def train(model, tx, train_ids, evaluate, batch_size, steps, eval_every, seed, progress):
    """Per-step training losses, and (step, characters seen, train seconds, val. loss) at each evaluation."""
    context = model.context
    params = init_params(model, seed)
    opt_state = tx.init(params)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batches = batch_stream(train_ids, batch_size, context, seed)
    x, y = next(batches)
    step = jax.jit(step).lower(params, opt_state, x, y).compile()  # compile before the clock starts

    losses, curve, seconds = [], [(0, 0, 0.0, float(evaluate(params)))], 0.0
    for t in range(1, steps + 1):
        begin = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, x, y)
        loss = float(loss)  # waits for the step
        seconds += time.perf_counter() - begin
        losses.append(loss)
        if t % eval_every == 0 or t == steps:
            curve.append((t, t * batch_size * context, seconds, float(evaluate(params))))
        x, y = next(batches)
        progress.update(batch_size)
    return losses, curve, params


def first_below(curve, target):
    return next((point for point in curve if point[3] <= target), None)


def write_table(rows, target, seconds, out: Path):
    lines = [f"| run | batch | peak lr | warm-up steps | steps | final val. loss | steps to {target} | "
             f"characters to {target} | train seconds to {target} | train seconds, whole run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["steps_to_target"] is None:
            hit = "not reached | - | -"
        else:
            hit = f"{r['steps_to_target']} | {r['chars_to_target']:,} | {r['seconds_to_target']:.1f}"
        lines.append(f"| {r['run']} | {r['batch']} | {r['peak_lr']:.2e} | {r['warmup_steps']} | {r['steps']} | "
                     f"{r['final_val_loss']:.3f} | {hit} | {r['train_seconds']:.1f} |")
    a, b = rows
    if a["steps_to_target"] and b["steps_to_target"]:
        ratios = (f"(ii) / (i) to the target: {b['steps_to_target'] / a['steps_to_target']:.2f}x the steps, "
                  f"{b['chars_to_target'] / a['chars_to_target']:.2f}x the characters, "
                  f"{b['seconds_to_target'] / a['seconds_to_target']:.2f}x the train seconds. ")
    else:
        ratios = "(ii) / (i) to the target: n/a (a run did not reach it). "
    lines += ["", ratios + f"Target: validation loss {target} nats per character (128 held-out windows). Train "
              f"seconds exclude compilation and evaluation. Wall time of the whole example {seconds:.0f} s."]
    return save_table(lines, rows, out)


def smooth(values, beta=0.9):
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return np.array(out)


def plot_curves(results, target, out: Path):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3), sharey=True)
    for i, (name, (losses, curve, batch, context)) in enumerate(results.items()):
        steps = np.arange(1, len(losses) + 1)
        t, chars, secs, val = (np.array(c) for c in zip(*curve))
        xs_train = (steps, steps * batch * context, None)
        for ax, xs, xv in zip(axes, xs_train, (t, chars, secs)):
            if xs is not None:
                ax.plot(xs, smooth(losses), color=f"C{i}", lw=1, alpha=0.5)
            shown = xv > 0 if ax is axes[0] else slice(None)  # step 0 has no place on a log axis
            ax.plot(xv[shown], val[shown], color=f"C{i}", lw=2, marker=".", label=f"{name}: validation")
    for ax, label in zip(axes, ("step", "characters seen", "train seconds (no compilation)")):
        ax.axhline(target, color="0.5", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].set_ylabel("loss (nats per character); thin: training, smoothed")
    axes[0].legend(fontsize=8)
    fig.suptitle("character transformer on standard-library sources")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)


def sample(model, params, vocab, prompt, length, seed=0, temperature=0.8):
    """Characters drawn one at a time from the model, starting from ``prompt``."""
    index = {c: i for i, c in enumerate(vocab)}
    tokens = [index[c] for c in prompt if c in index]
    context = model.context

    @jax.jit
    def next_logits(window, position):
        return model.apply({"params": params}, window[None])[0, position]

    key = jax.random.key(seed)
    for _ in range(length):
        window = np.zeros(context, np.int32)
        recent = tokens[-context:]
        window[: len(recent)] = recent
        key, sub = jax.random.split(key)
        tokens.append(int(jax.random.categorical(sub, next_logits(window, len(recent) - 1) / temperature)))
    return "".join(vocab[i] for i in tokens)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200, help="AdamW's steps; LAMB runs 1/8 of them")
    parser.add_argument("--batch-size", type=int, default=16, help="AdamW's batch; LAMB's is 8x")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak learning rate; LAMB's is 8x")
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up, a fraction of each run's steps")
    parser.add_argument("--target", type=float, default=2.4, help="validation loss, nats per character")
    parser.add_argument("--out", default="out/char_lm")
    parser.add_argument("--large", action="store_true", help="width 128, 4 blocks, context 128, 4000 steps")
    parser.add_argument("--smoke", action="store_true", help="a few steps and a tiny model (for the tests)")
    args = parser.parse_args(argv)
    steps, batch_size, target = args.steps, args.batch_size, args.target
    width, depth, heads, context, eval_every = 64, 2, 4, 64, 24
    if args.large:
        width, depth, context, steps = 128, 4, 128, 4000
    if args.smoke:
        width, depth, heads, context, steps, batch_size, eval_every, target = 32, 1, 2, 32, 48, 8, 16, 3.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    train_ids, val_ids, vocab = load_corpus()
    print(f"corpus: {len(train_ids) + len(val_ids):,} characters of {len(MODULES)} standard-library modules, "
          f"{len(vocab)} distinct; {len(val_ids):,} held out")
    model = CharTransformer(len(vocab), width, depth, heads, context)
    val = validation_batch(val_ids, context, 128)
    evaluate = jax.jit(lambda p: loss_fn(model, p, *val)).lower(init_params(model, 0)).compile()

    runs = recipes(steps, batch_size, args.lr, args.warmup)
    results, rows, params = {}, [], {}
    with tqdm(total=2 * steps * batch_size, desc="training (sequences)", unit="seq") as progress:
        for name, (tx, batch, n, peak, warm) in runs.items():
            progress.set_postfix_str(name.split(",")[0])
            every = max(eval_every * batch_size // batch, 1)  # evaluate at the same characters seen
            losses, curve, params[name] = train(model, tx, train_ids, evaluate, batch, n, every, 0, progress)
            results[name] = (losses, curve, batch, context)
            hit = first_below(curve, target)
            rows.append(dict(run=name, batch=batch, peak_lr=peak, warmup_steps=warm, steps=n,
                             final_val_loss=curve[-1][3],
                             steps_to_target=hit[0] if hit else None, chars_to_target=hit[1] if hit else None,
                             seconds_to_target=hit[2] if hit else None, train_seconds=curve[-1][2]))

    plot_curves(results, target, out)
    first = next(iter(params))
    text = sample(model, params[first], vocab, "def ", 8 if args.smoke else 300)
    (out / "sample.txt").write_text(text + "\n")
    table = write_table(rows, target, time.perf_counter() - start, out)
    print(table)
    print(f"\nsample from {first}:\n{text}\n")
    print(f"wrote {out}/results.md, results.csv, loss.png, sample.txt")


if __name__ == "__main__":
    main()
