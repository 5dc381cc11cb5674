"""Data-parallel training with ``jax.pmap``: one replica per device, gradients averaged.

An MLP on scikit-learn's digits with AdamW. Every device holds the same params and optimizer
state; each step every device takes its slice of the batch, and ``jax.lax.pmean`` averages the
gradients, so every replica applies the same update, the one a single device would compute
on the whole batch. On the CPU, 8 devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/data_parallel_pmap.py [--steps 300]
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np
import optax
from digits_mlp import Mlp, accuracy, cross_entropy, load_data
from flax import jax_utils

import optimizers


@functools.partial(jax.pmap, axis_name="batch", static_broadcasted_argnums=(0, 1))
def train_step(model, tx, params, opt_state, x, y):
    """One step on every device: local gradients, averaged over the devices, then the update."""
    loss, grads = jax.value_and_grad(lambda p: cross_entropy(model.apply({"params": p}, x), y))(params)
    grads = jax.lax.pmean(grads, "batch")
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, jax.lax.pmean(loss, "batch")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-per-device", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n = jax.local_device_count()
    x_train, x_val, y_train, y_val = load_data()
    model, tx = Mlp(), optimizers.adamw(args.learning_rate, weight_decay=1e-4)
    params = model.init(jax.random.key(args.seed), x_train[:1])["params"]
    # One copy per device, on the mesh axis that pmap's outputs use, so the step compiles once.
    params, opt_state = jax_utils.replicate((params, tx.init(params)), axis_name="batch")
    print(f"{n} devices, {args.batch_per_device} examples each, global batch {n * args.batch_per_device}")

    rng = np.random.default_rng(args.seed)
    for step in range(args.steps):
        idx = rng.choice(len(x_train), n * args.batch_per_device, replace=False)
        shard = lambda a: a[idx].reshape((n, args.batch_per_device) + a.shape[1:])  # noqa: E731
        params, opt_state, loss = train_step(model, tx, params, opt_state, shard(x_train), shard(y_train))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(loss[0]):.4f}")

    # The replicas are identical; evaluate the first.
    assert all(np.array_equal(x[0], x[-1]) for x in jax.tree.leaves(params))
    first = jax.tree.map(lambda x: x[0], params)
    print(f"validation accuracy after {args.steps} steps: {accuracy(model, first, x_val, y_val):.4f}")


if __name__ == "__main__":
    main()
