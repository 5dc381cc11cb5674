"""Fully sharded data parallel training with ``jax.jit`` on a 2-D mesh (data x model).

The batch is split along the ``data`` axis; every param and the optimizer state are split
along the ``model`` axis (each param along its largest dimension that axis divides; a param
it does not divide, the 10 output biases on 4 or 8 devices, is replicated). XLA inserts the
collectives: the gradients are reduced over ``data``, the params gathered where a layer needs
them, and reductions inside the optimizer (norms, statistics) stay global. The state is
created directly sharded, never whole on one device, and its bytes per device shrink as the
``model`` axis grows; the example prints them, trains, and compares with one device.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded_jit.py [--model 4] [--steps 300]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax
from digits_mlp import Mlp, accuracy, cross_entropy, load_data
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optimizers


def make_mesh(data: int, model: int) -> jax.sharding.Mesh:
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(AxisType.Auto,) * 2,
                         devices=jax.devices()[: data * model])


def init(mesh, model, tx, seed: int):
    """Params and optimizer state, created sharded: nothing is built whole on one device first."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(seed), np.zeros((1, 64), np.float32))["params"])
    p_sh = optimizers.fsdp_shardings(abstract, mesh, "model")
    s_sh = optimizers.state_shardings(tx, abstract, p_sh)
    params = jax.jit(lambda: model.init(jax.random.key(seed), np.zeros((1, 64), np.float32))["params"],
                     out_shardings=p_sh)()
    return params, jax.jit(tx.init, out_shardings=s_sh)(params), p_sh, s_sh


def state_bytes_table(model, tx, seed: int):
    """The optimizer state's bytes on each device, for a model axis of 1, 2, 4 and 8 devices."""
    print("optimizer state per device (model axis of n devices; data axis of 8/n):")
    whole = None
    for n in (1, 2, 4, 8):
        if n > jax.device_count():
            break
        _, opt_state, _, _ = init(make_mesh(jax.device_count() // n, n), model, tx, seed)
        held = max(optimizers.bytes_per_device(opt_state).values())
        whole = whole or held
        print(f"  n={n}: {held:8,d} bytes per device ({held / whole:.3f} of one device's)")


def train(mesh, steps: int, learning_rate: float, seed: int, batch_size: int = 256):
    """Trains on ``mesh``; returns the params (gathered on the host) and the validation accuracy."""
    x_train, x_val, y_train, y_val = load_data()
    model, tx = Mlp(), optimizers.adamw(learning_rate, weight_decay=1e-4)
    params, opt_state, p_sh, s_sh = init(mesh, model, tx, seed)
    batch = NamedSharding(mesh, P("data"))

    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(model.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(train_step, in_shardings=(p_sh, s_sh, batch, batch),
                   out_shardings=(p_sh, s_sh, NamedSharding(mesh, P())))
    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.choice(len(x_train), batch_size, replace=False)
        params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx])
        if i % 100 == 0 or i == steps - 1:
            print(f"  step {i:4d}  loss {float(loss):.4f}")
    params = jax.device_get(params)
    return params, accuracy(model, params, x_val, y_val)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=int, default=4, help="devices on the model axis (the rest on data)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n = jax.device_count()
    if n % args.model:
        parser.error(f"--model must divide the {n} devices, got {args.model}")
    state_bytes_table(Mlp(), optimizers.adamw(args.learning_rate), args.seed)

    mesh = make_mesh(n // args.model, args.model)
    print(f"training on a {dict(mesh.shape)} mesh:")
    sharded, acc = train(mesh, args.steps, args.learning_rate, args.seed)
    print(f"validation accuracy after {args.steps} steps: {acc:.4f}")
    print("training on one device:")
    single, acc_single = train(make_mesh(1, 1), args.steps, args.learning_rate, args.seed)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)))
    print(f"one device: validation accuracy {acc_single:.4f}; max |params difference| {diff:.2e}")


if __name__ == "__main__":
    main()
