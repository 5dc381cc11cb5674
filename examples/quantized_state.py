"""8-bit optimizer state against float32 state: AdamW, Lion, SGD with momentum and LAMB.

Each optimizer trains the same model twice from the same initialisation on the same batches:
once as it is, once as ``optimizers.with_quantized_state(optimizer, min_size=...)`` (8-bit
block-wise state). Two tasks: the digits CNN of ``examples/main.py`` and the character
transformer of ``examples/char_lm.py``. The tables give the final validation accuracy (top-1;
next-character accuracy for the language model) and loss of both, and their differences
(the bar: within 0.5 points and 1% relative), averaged over the seeds.

The models are small, and most of their leaves are under the default ``min_size`` of 4096
elements, which would keep them in float32: the comparison passes ``--min-size`` (128 by
default), so every leaf but biases and norm scales is quantized.

    python examples/quantized_state.py                  # both tasks, 8-bit (about 15 minutes on 2 cores)
    python examples/quantized_state.py --bits 8 4       # also the 4-bit codes (not in the package)
    python examples/quantized_state.py --smoke          # a few steps (for the tests)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import char_lm  # noqa: E402
import main as digits  # noqa: E402

import optimizers  # noqa: E402
import schedules  # noqa: E402
from optimizers._quantized import _wrap  # noqa: E402  (any bits, for the 4-bit measurement)


def recipes(steps, task):
    """name -> optimizer built for ``steps`` steps (a warm-up and a cosine decay for each)."""
    def lr(peak):
        warm = max(steps // 10, 1)
        return schedules.warmup(schedules.cosine(peak, max(steps - warm, 1), end_value=peak / 10), warm)

    scale = 1.0 if task == "digits" else 0.5
    return {
        "AdamW": optimizers.adamw(lr(3e-3 * scale), weight_decay=0.01),
        "Lion": optimizers.lion(lr(3e-4 * scale), weight_decay=0.1),
        "SGD momentum": optimizers.sgd(lr(0.05 if task == "digits" else 0.5), momentum=0.9),
        "LAMB": optimizers.lamb(lr(1e-2), weight_decay=0.01),
    }


def digits_run(tx, steps, seed, smoke):
    """(final validation accuracy, loss) of the digits CNN."""
    data = digits.load_data()
    x_train, x_val, y_train, y_val = data
    model = digits.Cnn(8 if smoke else 16)
    params = model.init(jax.random.key(seed), x_train[:1])["params"]
    state = tx.init(params)

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(lambda p: digits.loss_fn(model, p, batch))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _, batch in zip(range(steps), digits.batch_stream(x_train, y_train, 64, seed)):
        params, state = step(params, state, batch)
    logits = model.apply({"params": params}, x_val)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean()
    return float(jnp.mean(jnp.argmax(logits, -1) == y_val)), float(loss)


def char_lm_run(tx, steps, seed, smoke, corpus):
    """(final next-character accuracy, loss) on the held-out windows of the character transformer."""
    train_ids, val_ids, vocab = corpus
    width, depth, heads, context = (32, 1, 2, 32) if smoke else (64, 2, 4, 64)
    model = char_lm.CharTransformer(len(vocab), width, depth, heads, context)
    x_val, y_val = char_lm.validation_batch(val_ids, context, 128)
    params = char_lm.init_params(model, seed)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(lambda p: char_lm.loss_fn(model, p, x, y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _, (x, y) in zip(range(steps), char_lm.batch_stream(train_ids, 16, context, seed)):
        params, state = step(params, state, x, y)
    logits = model.apply({"params": params}, x_val)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean()
    return float(jnp.mean(jnp.argmax(logits, -1) == y_val)), float(loss)


def compare(task, run, steps, seeds, bits, min_size, block_size, names):
    """One row per optimizer: float32 and quantized accuracy and loss, means over ``seeds``."""
    rows = []
    for name, tx in recipes(steps, task).items():
        if names and name not in names:
            continue
        base = np.mean([run(tx, steps, s) for s in range(seeds)], axis=0)
        quantized = np.mean([run(_wrap(tx, bits, block_size, min_size, None), steps, s) for s in range(seeds)],
                            axis=0)
        rows.append((name, base, quantized))
        print(f"  {task} {name}: float32 {base}, {bits}-bit {quantized}", flush=True)
    return rows


def table(task, rows, bits, steps, seeds):
    lines = [f"**{task}** ({steps} steps, mean of {seeds} seed{'s' if seeds > 1 else ''}; {bits}-bit state)", "",
             "| optimizer | val. accuracy float32 | val. accuracy 8-bit | difference (points) "
             "| val. loss float32 | val. loss 8-bit | difference (relative) |".replace("8-bit", f"{bits}-bit"),
             "|---|---|---|---|---|---|---|"]
    for name, (acc, loss), (qacc, qloss) in rows:
        lines.append(f"| {name} | {100 * acc:.2f}% | {100 * qacc:.2f}% | {100 * (qacc - acc):+.2f} "
                     f"| {loss:.4f} | {qloss:.4f} | {100 * (qloss - loss) / loss:+.2f}% |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-steps", type=int, default=600)
    parser.add_argument("--char-steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the digits runs (the LM runs one)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8])
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--min-size", type=int, default=128)
    parser.add_argument("--tasks", nargs="+", default=["digits", "char_lm"])
    parser.add_argument("--optimizers", nargs="+", default=None, help="a subset of AdamW, Lion, 'SGD momentum', LAMB")
    parser.add_argument("--out", default="out/quantized_state")
    parser.add_argument("--smoke", action="store_true", help="a few steps, tiny models (for the tests)")
    args = parser.parse_args(argv)
    d_steps, c_steps, seeds = (5, 5, 1) if args.smoke else (args.digits_steps, args.char_steps, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, tables = time.perf_counter(), []
    corpus = None
    if "char_lm" in args.tasks:
        corpus = char_lm.load_corpus(char_lm.MODULES[:2]) if args.smoke else char_lm.load_corpus()
    tasks = {"digits": (lambda tx, n, s: digits_run(tx, n, s, args.smoke), d_steps, seeds),
             "char_lm": (lambda tx, n, s: char_lm_run(tx, n, s, args.smoke, corpus), c_steps, 1)}
    for bits in args.bits:
        for task in args.tasks:
            run, steps, n_seeds = tasks[task]
            rows = compare(task, run, steps, n_seeds, bits, args.min_size, args.block_size, args.optimizers)
            tables.append(table(task, rows, bits, steps, n_seeds))
    text = "\n\n".join(tables) + (f"\n\nblock size {args.block_size}, min_size {args.min_size}; "
                                  f"{time.perf_counter() - start:.0f} s in all\n")
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
