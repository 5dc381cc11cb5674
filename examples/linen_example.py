"""Flax Linen TrainState + optimizers: a small CNN on digits, AdamW with warmup and cosine decay.

    python examples/linen_example.py              # 1000 steps, ~10 s on 2 cores
    python examples/linen_example.py --steps 50   # shorter (the tests)
"""

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
import schedules


class Cnn(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):  # x: (batch, 8, 8, 1)
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@jax.jit
def train_step(state, x, y):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def accuracy(state, x, y):
    return jnp.mean(jnp.argmax(state.apply_fn({"params": state.params}, x), -1) == y)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    steps = parser.parse_args().steps
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=0)

    model = Cnn()
    params = model.init(jax.random.key(0), x_train[:1])["params"]
    warmup = max(steps // 10, 1)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optimizers.adamw(schedules.warmup(schedules.cosine(3e-3, max(steps - warmup, 1)), warmup), weight_decay=1e-4),
    )
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    rng = np.random.default_rng(0)
    for t in (bar := tqdm(range(1, steps + 1))):
        idx = rng.choice(len(x_train), 64, replace=False)
        state, loss = train_step(state, x_train[idx], y_train[idx])
        if t % 50 == 0 or t == steps:  # the learning rate of the latest update, read from the state
            lr = optimizers.get_hyperparams(state.opt_state)["learning_rate"]
            bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{float(lr):.1e}")
    print(f"test accuracy: {float(accuracy(state, x_test, y_test)):.4f}")


if __name__ == "__main__":
    main()
