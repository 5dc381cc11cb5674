"""The resume half of test_checkpoint.py, run in a fresh Python process.

``python tests/tools/checkpoint_resume.py {msgpack,orbax} DIR``: for every case, restores the
params and optimizer state that the test saved after step 50 as ``DIR/<case index>``, runs
steps 50 to 99, and writes every case's params and state to ``DIR/out``
(``checkpoint.to_bytes`` of ``{case: (params, state)}``) for the test to compare with its
run of 100 steps straight.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: conftest, helpers
import conftest  # noqa: F401  (the tests' JAX settings)
import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import random_tree
from registry import NAMES, make

import optimizers
import schedules
from optimizers import checkpoint

STEPS, SPLIT = 100, 50
# A matrix, a scalar, and one that Adafactor factors (rows and columns); few leaves, as the
# compile time of the 28 cases grows with them.
SHAPES = {"dense": {"kernel": (4, 3)}, "scale": (), "big": (128, 128)}

# Every optimizer of the package (fused: two), the plateau wrapper (it reads the loss) and a one-cycle
# learning rate, whose value depends on the restored step count.
# A fused name keeps its chain's state (the same types and trees): two kernels stand for the twenty.
RESUMED = [n for n in NAMES if not n.startswith("fused(") or n in ("fused(adam)", "fused(sm3)")]
CASES = {name: (lambda name=name: make(name)) for name in RESUMED}
CASES["reduce_on_plateau(adam)"] = lambda: optax.chain(
    make("adam", learning_rate=0.1), optimizers.reduce_on_plateau(factor=0.5, patience=2))
CASES["adamw(one_cycle)"] = lambda: make("adamw", learning_rate=schedules.one_cycle(STEPS, peak_value=0.05))


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


PARAMS = _f32(random_tree(np.random.default_rng(0), SHAPES))
CURVATURE = _f32(jax.tree.map(lambda x: 0.5 + np.abs(x), random_tree(np.random.default_rng(1), SHAPES)))


def noise(start, stop):
    """The data of steps ``start`` to ``stop - 1``, stacked: step t's from seed 1000 + t."""
    trees = [_f32(random_tree(np.random.default_rng(1000 + t), SHAPES)) for t in range(start, stop)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _loss(params, n):
    """A noisy quadratic: its minimum moves every step, so the loss plateaus."""
    terms = jax.tree.map(lambda p, c, e: jnp.sum(0.5 * c * p * p + e * p), params, CURVATURE, n)
    return sum(jax.tree.leaves(terms))


def _run(tx, params, state, data):
    def step(carry, n):
        params, state = carry
        value, grads = jax.value_and_grad(_loss)(params, n)
        updates, state = tx.update(grads, state, params, value=value)
        return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), data)[0]


TXS = [optax.with_extra_args_support(make_tx()) for make_tx in CASES.values()]
# ``run_all([(params, state) of each case], data)``: every case's steps in one program,
# compiled once per process at XLA's lowest CPU optimisation level (a quarter of the
# compile time of one default program per case; every process compiles the same way).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
run_all = jax.jit(lambda carries, data: [_run(tx, *c, data) for tx, c in zip(TXS, carries)],
                  compiler_options=FAST_COMPILE)


def target(tx):
    """The shapes of a case's checkpoint, ``{"params", "opt"}`` (no arrays allocated)."""
    return {"params": jax.eval_shape(lambda: PARAMS), "opt": jax.eval_shape(tx.init, PARAMS)}


def save(fmt, path, state):
    if fmt == "orbax":
        checkpoint.save(path, state)
    else:
        path.write_bytes(checkpoint.to_bytes(state))


def load(fmt, path, like):
    return checkpoint.restore(path, like) if fmt == "orbax" else checkpoint.from_bytes(like, path.read_bytes())


def main(fmt, directory):
    restored = [load(fmt, directory / str(i), target(tx)) for i, tx in enumerate(TXS)]
    ends = run_all([(c["params"], c["opt"]) for c in restored], noise(SPLIT, STEPS))
    (directory / "out").write_bytes(checkpoint.to_bytes(dict(zip(CASES, ends))))


if __name__ == "__main__":
    main(sys.argv[1], pathlib.Path(sys.argv[2]))
