"""Flax NNX + optimizers: a small CNN on digits, AdamW with warmup and cosine decay.

    python examples/nnx_example.py              # 1000 steps, ~10 s on 2 cores
    python examples/nnx_example.py --steps 50   # shorter (the tests)
"""

import argparse

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import optimizers
import schedules


class Cnn(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 16):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 2 * width, 10, rngs=rngs)

    def __call__(self, x):  # x: (batch, 8, 8, 1)
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.head(x.reshape(x.shape[0], -1))


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)  # flax >= 0.11: the model is passed explicitly
    return loss


@nnx.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), -1) == y)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    steps = parser.parse_args().steps
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=0)

    model = Cnn(nnx.Rngs(0))
    warmup = max(steps // 10, 1)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optimizers.adamw(schedules.warmup(schedules.cosine(3e-3, max(steps - warmup, 1)), warmup), weight_decay=1e-4),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    rng = np.random.default_rng(0)
    for t in (bar := tqdm(range(1, steps + 1))):
        idx = rng.choice(len(x_train), 64, replace=False)
        loss = train_step(model, optimizer, x_train[idx], y_train[idx])
        if t % 50 == 0 or t == steps:  # the learning rate of the latest update, read from the state
            lr = optimizers.get_hyperparams(optimizer.opt_state)["learning_rate"]
            bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{float(lr):.1e}")
    print(f"test accuracy: {float(accuracy(model, x_test, y_test)):.4f}")


if __name__ == "__main__":
    main()
