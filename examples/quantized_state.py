r"""8-bit optimizer state against float32 state, with the noise floor of two float32 runs.

For each optimizer (AdamW, Lion, SGD with momentum, LAMB) and each seed, the same model is
trained three times on the same batches:

* **float32**: the optimizer as it is, from the seed's initialisation;
* **8-bit**: ``optimizers.with_quantized_state(optimizer, min_size=...)``, from the same
  initialisation;
* **float32 (noise)**: the optimizer as it is, from the same initialisation with every
  parameter multiplied by :math:`1 + 10^{-6}\,\xi` (:math:`\xi` standard normal, its own key).

The third run is the control. Its perturbation is of no consequence by itself (a few float32
ulps, below what a different summation order or BLAS gives), but training amplifies any
change of the trajectory: its difference from the float32 run is what chance gives two runs
of the same seed. The 8-bit state perturbs the trajectory too, by its rounding; its difference
is quantization only where it exceeds that floor. (A control that perturbs the state at the
size of the 8-bit error, with random signs, would not be of no consequence: it is a second
quantizer, and it would hide a harm that both share.)

Tasks: the digits CNN of ``examples/main.py`` (all 360 validation images) and the character
transformer of ``examples/char_lm.py`` (width 64, 2 blocks, context 64; every
non-overlapping window of the held-out text: 416 windows, 26,624 characters). Each run
warms up for 10% of its steps and then decays its learning rate by a cosine to 0 at its
last step, so the final parameters are not a snapshot of a noisy iterate. The whole
training is one ``lax.scan``, compiled once per optimizer and state kind and reused for all
seeds. The models are small, and most of their leaves are under the default ``min_size`` of
4096 elements: ``--min-size`` (128 by default) quantizes every leaf but biases and norm scales.

Per optimizer, the tables give the means over the seeds of the final validation accuracy
(next-character accuracy for the language model) and loss, the 8-bit and the noise
differences as the mean :math:`\pm` the standard error of the per-seed (paired) differences
(accuracy in points, loss relative), and :math:`p`, Welch's two-sided test of the 8-bit
differences against the noise differences (small :math:`p`: the 8-bit difference is not
what chance gives). ``results.json`` keeps every run's numbers.

    python examples/quantized_state.py                          # both tasks, 5 seeds (~1 hour on 2 cores)
    python examples/quantized_state.py --seeds 3 --char-steps 800 --optimizers Lion --block-size 64
    python examples/quantized_state.py --bits 8 4 --tasks digits  # also 4-bit codes (not in the package)
    python examples/quantized_state.py --smoke                  # a few steps, tiny models (for the tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import char_lm  # noqa: E402
import main as digits  # noqa: E402

import optimizers  # noqa: E402
import schedules  # noqa: E402
from optimizers.wrappers.quantized.wrapper import _wrap  # noqa: E402  (any bits, for the 4-bit measurement)

NOISE = 1e-6  # the control's relative perturbation of the initial parameters
NAMES = ("AdamW", "Lion", "SGD momentum", "LAMB")


def recipes(steps, task):
    """name -> optimizer built for ``steps`` steps: 10% linear warm-up, then a cosine to 0 at the last step."""
    def lr(peak):
        warm = max(steps // 10, 1)
        return schedules.warmup(schedules.cosine(peak, max(steps - warm, 1), end_value=0.0), warm)

    lm = task == "char_lm"
    return {
        "AdamW": optimizers.adamw(lr(1.5e-3 if lm else 3e-3), weight_decay=0.01),
        "Lion": optimizers.lion(lr(1.5e-4 if lm else 3e-4), weight_decay=0.1),
        "SGD momentum": optimizers.sgd(lr(0.5 if lm else 0.05), momentum=0.9),
        "LAMB": optimizers.lamb(lr(1e-2), weight_decay=0.01),
    }


class Task(NamedTuple):
    """A model and its data: initial params and stacked batches of a seed, the loss, the evaluation."""

    init: Callable  # seed -> params
    batches: Callable  # (seed, steps) -> a pytree of arrays with a leading axis of steps
    loss: Callable  # (params, batch) -> scalar
    evaluate: Callable  # params -> (validation accuracy, validation loss)


def digits_task(smoke):
    x_train, x_val, y_train, y_val = digits.load_data()
    model = digits.Cnn(8 if smoke else 16)

    return Task(lambda seed: model.init(jax.random.key(seed), x_train[:1])["params"],
                _stacked(lambda seed: digits.batch_stream(x_train, y_train, 64, seed)),
                lambda p, batch: digits.loss_fn(model, p, batch), _evaluation(model, x_val, y_val))


def char_lm_task(smoke):
    train_ids, val_ids, vocab = char_lm.load_corpus(char_lm.MODULES[:2] if smoke else char_lm.MODULES)
    width, depth, heads, context = (32, 1, 2, 32) if smoke else (64, 2, 4, 64)
    model = char_lm.CharTransformer(len(vocab), width, depth, heads, context)
    count = (len(val_ids) - 1) // context  # every non-overlapping held-out window
    windows = val_ids[: count * context + 1]
    x_val = windows[:-1].reshape(count, context)
    y_val = windows[1:].reshape(count, context)

    return Task(lambda seed: char_lm.init_params(model, seed),
                _stacked(lambda seed: char_lm.batch_stream(train_ids, 16, context, seed)),
                lambda p, batch: char_lm.loss_fn(model, p, *batch), _evaluation(model, x_val, y_val))


def _stacked(stream_of_seed):
    """``(seed, steps) -> (inputs, targets)``, the first ``steps`` batches of the seed's stream, stacked."""
    def batches(seed, steps):
        stream = stream_of_seed(seed)
        xs, ys = zip(*(next(stream) for _ in range(steps)))
        return np.stack(xs), np.stack(ys)

    return batches


def _evaluation(model, x_val, y_val):
    """``params -> (accuracy, loss)`` of ``model``'s predictions of ``y_val`` from ``x_val``."""
    def evaluate(params):
        logits = model.apply({"params": params}, x_val)
        return (jnp.mean(jnp.argmax(logits, -1) == y_val),
                optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean())

    return evaluate


def trainer(task, tx):
    """``(params, batches) -> (accuracy, loss)`` after a step of ``tx`` per batch: one compiled scan."""
    def step(carry, batch):
        params, state = carry
        grads = jax.grad(task.loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def train(params, batches):
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
        return task.evaluate(params)

    return train


def perturbed(params, seed):
    """``params`` times ``1 + NOISE * xi``, ``xi`` standard normal from a key of its own."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(10_000 + seed), len(leaves))
    return treedef.unflatten([p * (1 + NOISE * jax.random.normal(k, p.shape, p.dtype)) for p, k in zip(leaves, keys)])


def measure(task_name, task, steps, seeds, bits, min_size, block_size, names):
    """Yields, optimizer by optimizer, its name, ``{"float32", "8-bit", "noise": [(accuracy, loss) per seed]}``
    and the seconds per run (compiling included)."""
    for name, tx in recipes(steps, task_name).items():
        if names and name not in names:
            continue
        base, quantized = trainer(task, tx), trainer(task, _wrap(tx, bits, block_size, min_size, None))
        runs = {"float32": [], "8-bit": [], "noise": []}
        start = time.perf_counter()
        for seed in seeds:
            params, batches = task.init(seed), task.batches(seed, steps)
            for kind, train, p in (("float32", base, params), ("8-bit", quantized, params),
                                   ("noise", base, perturbed(params, seed))):
                runs[kind].append(tuple(float(v) for v in train(p, batches)))
            print(f"  {task_name} {name} seed {seed}: " + ", ".join(
                f"{k} {100 * r[-1][0]:.2f}% {r[-1][1]:.4f}" for k, r in runs.items()), flush=True)
        yield name, runs, (time.perf_counter() - start) / (3 * len(seeds))


def paired(runs, kind):
    """Per-seed differences of ``kind`` from float32: accuracy in points, loss relative (%)."""
    base, other = np.asarray(runs["float32"]), np.asarray(runs[kind])
    return 100 * (other[:, 0] - base[:, 0]), 100 * (other[:, 1] - base[:, 1]) / base[:, 1]


def mean_se(d):
    se = np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{np.mean(d):+.2f} ± {se:.2f}"


def welch_p(a, b):
    if len(a) < 2 or np.ptp(a) == np.ptp(b) == 0:
        return "-"
    return f"{stats.ttest_ind(a, b, equal_var=False).pvalue:.2f}"


def table(task, results, bits, steps, seeds):
    q = f"{bits}-bit"
    lines = [f"**{task}** ({steps} steps, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}; {q} state; "
             "differences: mean ± standard error of the per-seed differences from float32)", "",
             f"| optimizer | val. accuracy float32 | {q} | {q} − float32 (points) | float32 vs float32 (noise) "
             f"| p | val. loss float32 | {q} | {q} − float32 (relative, %) | float32 vs float32 (noise) | p |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        base, quantized = np.mean(runs["float32"], axis=0), np.mean(runs["8-bit"], axis=0)
        (qa, ql), (na, nl) = paired(runs, "8-bit"), paired(runs, "noise")
        lines.append(f"| {name} | {100 * base[0]:.2f}% | {100 * quantized[0]:.2f}% | {mean_se(qa)} | {mean_se(na)} "
                     f"| {welch_p(qa, na)} | {base[1]:.4f} | {quantized[1]:.4f} | {mean_se(ql)} | {mean_se(nl)} "
                     f"| {welch_p(ql, nl)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-steps", type=int, default=600)
    parser.add_argument("--char-steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. n-1 of every task")
    parser.add_argument("--bits", type=int, nargs="+", default=[8])
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--min-size", type=int, default=128)
    parser.add_argument("--tasks", nargs="+", default=["digits", "char_lm"], choices=["digits", "char_lm"])
    parser.add_argument("--optimizers", nargs="+", default=None, choices=NAMES, help="a subset (default: all)")
    parser.add_argument("--out", default="out/quantized_state")
    parser.add_argument("--smoke", action="store_true", help="5 steps, 2 seeds, tiny models (for the tests)")
    args = parser.parse_args(argv)
    steps = {"digits": 5 if args.smoke else args.digits_steps, "char_lm": 5 if args.smoke else args.char_steps}
    seeds = list(range(2 if args.smoke else args.seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, tables, raw = time.perf_counter(), {}, {}
    for task_name in args.tasks:
        task = (digits_task if task_name == "digits" else char_lm_task)(args.smoke)
        for bits in args.bits:
            key = f"{task_name} {bits}-bit"
            raw[key] = dict(steps=steps[task_name], seeds=seeds, runs={}, seconds_per_run={})
            for name, runs, seconds in measure(task_name, task, steps[task_name], seeds, bits, args.min_size,
                                               args.block_size, args.optimizers):
                raw[key]["runs"][name], raw[key]["seconds_per_run"][name] = runs, seconds
                tables[key] = table(task_name, raw[key]["runs"], bits, steps[task_name], seeds)
                text = "\n\n".join(tables.values()) + (
                    f"\n\nblock size {args.block_size}, min_size {args.min_size}, noise {NOISE:g}; "
                    f"{time.perf_counter() - start:.0f} s in all\n")
                (out / "results.md").write_text(text)  # after each optimizer: a long run keeps what it has
                (out / "results.json").write_text(json.dumps(raw, indent=1))
    print(text)

if __name__ == "__main__":
    main()
