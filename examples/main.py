"""Train a small CNN on scikit-learn's digits with AdamW and print its validation accuracy.

    python examples/main.py [--steps 600] [--learning-rate 3e-3] [--seed 0]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import optimizers


class Cnn(nn.Module):
    """Two 3x3 convolutions and a linear classifier over 8x8 grey images."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def load_data(seed: int):
    """The 1797 digits images scaled to [0, 1], split 80/20 with stratification."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@jax.jit
def train_step(state: train_state.TrainState, x, y):
    def loss_fn(params):
        return cross_entropy(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def accuracy(state: train_state.TrainState, x, y):
    return jnp.mean(jnp.argmax(state.apply_fn({"params": state.params}, x), -1) == y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x_train, x_val, y_train, y_val = load_data(args.seed)
    model = Cnn()
    params = model.init(jax.random.key(args.seed), x_train[:1])["params"]
    tx = optimizers.adamw(args.learning_rate, weight_decay=args.weight_decay)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    rng = np.random.default_rng(args.seed)
    progress = tqdm(range(args.steps), desc="adamw")
    for step in progress:
        idx = rng.choice(len(x_train), args.batch_size, replace=False)
        state, loss = train_step(state, x_train[idx], y_train[idx])
        if step % 50 == 0 or step == args.steps - 1:
            progress.set_postfix(loss=f"{float(loss):.4f}")

    print(f"validation accuracy after {args.steps} steps: {float(accuracy(state, x_val, y_val)):.4f}")
    print(f"train accuracy: {float(accuracy(state, x_train, y_train)):.4f}")


if __name__ == "__main__":
    main()
