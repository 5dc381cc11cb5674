"""The parameter trees the benchmark steps on, and their sizes."""

from __future__ import annotations

import math

import numpy as np


def transformer_shapes(width=320, depth=9, vocab=1024, seq=256):
    """A GPT-style transformer's parameter shapes: 6 + 16 x ``depth`` leaves."""
    d, h = width, 4 * width
    def dense(i, o):
        return {"kernel": (i, o), "bias": (o,)}

    norm = {"scale": (d,), "bias": (d,)}
    tree = {"embed": {"tokens": (vocab, d), "positions": (seq, d)}}
    for i in range(depth):
        tree[f"block_{i}"] = {
            "ln_1": dict(norm), "ln_2": dict(norm),
            "attention": {k: dense(d, d) for k in ("query", "key", "value", "out")},
            "mlp": {"fc_1": dense(d, h), "fc_2": dense(h, d)},
        }
    tree["ln_f"] = dict(norm)
    tree["head"] = dense(d, vocab)
    return tree


def resnet18_shapes(width=64, classes=1000):
    """ResNet-18's parameter shapes (HWIO kernels, batch-norm scales and biases): 62 leaves."""
    def bn(c):
        return {"scale": (c,), "bias": (c,)}
    tree = {"conv_init": (7, 7, 3, width), "bn_init": bn(width)}
    c_in = width
    for stage, c in enumerate([width, 2 * width, 4 * width, 8 * width]):
        for block in range(2):
            b = {"conv_1": (3, 3, c_in, c), "bn_1": bn(c), "conv_2": (3, 3, c, c), "bn_2": bn(c)}
            if c_in != c:
                b.update(conv_proj=(1, 1, c_in, c), bn_proj=bn(c))
            tree[f"stage_{stage}_block_{block}"] = b
            c_in = c
    tree["head"] = {"kernel": (c_in, classes), "bias": (classes,)}
    return tree


TREES = {
    "transformer": lambda smoke: transformer_shapes(*((16, 1, 32, 8) if smoke else ())),
    "resnet18": lambda smoke: resnet18_shapes(*((4, 10) if smoke else ())),
    "single": lambda smoke: {"w": (1 << 12,) if smoke else (1 << 24,)},
    "billion": lambda smoke: {"w": (1 << 12,) if smoke else (1 << 30,)},  # for GPUs: 4 GiB per buffer
}


def random_tree(shapes, seed, scale):
    """float32 NumPy arrays with ``shapes``' structure (the same values for JAX and torch)."""
    import jax
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s)).astype(np.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def num_params(tree) -> int:
    """Parameters in a tree of arrays or of shapes (tuples)."""
    import jax
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(x if isinstance(x, tuple) else np.shape(x)) for x in leaves)


def state_bytes(tx, params) -> int:
    """Bytes of ``tx.init(params)``, from its shapes only (nothing is allocated)."""
    import jax
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))
