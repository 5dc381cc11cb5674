"""The model and data shared by the multi-device examples: an MLP on scikit-learn's digits."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class Mlp(nn.Module):
    """64 pixels -> 256 ReLU units -> 10 classes."""

    hidden: int = 256

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1))))


def load_data():
    """The 1797 digits, 64 pixels scaled to [0, 1]; one stratified 80/20 split (train, val).

    Read from the file scikit-learn ships (the one ``sklearn.datasets.load_digits`` reads)
    without importing scikit-learn, which takes 2 s in every process of a multi-process run.
    """
    package = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
    data = np.loadtxt(package / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    x, y = (data[:, :-1] / 16.0).astype(np.float32), data[:, -1].astype(np.int32)
    rng = np.random.default_rng(0)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: round(0.2 * np.sum(y == c))] for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), val)
    return x[train], x[val], y[train], y[val]


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.cache
def initial_params(seed: int = 0, hidden: int = 256):
    """The MLP's initial params as NumPy arrays: the same in every process, computed once."""
    return jax.device_get(jax.jit(lambda: Mlp(hidden).init(jax.random.key(seed), jnp.zeros((1, 64)))["params"])())


@functools.partial(jax.jit, static_argnums=0)
def _accuracy(model, params, x, y):
    return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)


def accuracy(model, params, x, y) -> float:
    """The fraction of ``x`` that ``model`` with ``params`` classifies as ``y``."""
    return float(_accuracy(model, params, x, y))
