"""The benchmark runs and writes its table; optimizer state is the algorithm's minimum.

Nothing here is timed: ``benchmarks/run.py --smoke`` runs tiny trees for a few repetitions
and must produce its Markdown table and CSV; the state-memory checks read shapes only
(``jax.eval_shape``), so they cost nothing at any size.
"""

import csv
import importlib.util
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import torch
from registry import UNDECLARED

import optimizers

RUN = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
_spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_smoke_run_writes_the_table(tmp_path):
    done = subprocess.run([sys.executable, str(RUN), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert table in done.stdout  # printed too
    for heading in ("## Step time: `transformer`", "## Step time: `single`", "## Compile time"):
        assert heading in table
    assert "error" not in table
    for name in bench.SMOKE_ONLY:
        assert table.count(f"| {name} |") == 4  # two step-time rows, two compile/memory rows
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {(r["tree"], r["optimizer"]) for r in rows} == {(t, n) for t in ("transformer", "single")
                                                           for n in bench.SMOKE_ONLY}
    for r in rows:
        assert float(r["ours_ms"]) > 0 and float(r["optax_ms"]) > 0 and float(r["floor_ms"]) > 0
        assert float(r["state_bytes_per_param_ours"]) > 0 and not r["error"]


def test_every_alias_has_its_benchmark_arguments():
    """Every alias builds with the benchmark's arguments; every optax counterpart builds; every torch class exists."""
    import inspect

    names = bench.aliases()
    # Public functions taking a learning rate, but for transforms (scale_by_*), wrappers around an
    # optimizer (schedule_free) and those whose update needs the objective (lbfgs, sophia).
    takes_lr = [n for n in optimizers.__all__ if inspect.isfunction(getattr(optimizers, n))
                and "learning_rate" in bench._parameters(getattr(optimizers, n)) and not n.startswith("scale_by_")
                and "base_optimizer" not in bench._parameters(getattr(optimizers, n)) and n not in UNDECLARED]
    assert names == sorted(takes_lr)
    for name in names:
        getattr(optimizers, name)(**bench.kwargs(name))
    assert set(bench.KWARGS) <= set(names)
    for name, factory in bench.OPTAX.items():
        assert isinstance(factory(optax), optax.GradientTransformation), name
    for name, (cls, kw) in bench.TORCH.items():
        assert hasattr(torch.optim, cls), name
    assert all(bench.min_bytes(n, 8.0) >= 12 for n in names)


def _state_bytes(name, shapes, **kw):
    """Bytes of ``name``'s state for float32 params of ``shapes``: all, and in per-parameter arrays."""
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, np.float32), shapes, is_leaf=lambda x: isinstance(x, tuple))
    state = jax.eval_shape(getattr(optimizers, name)(**kw).init, params)
    sizes = [math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)]
    return sum(sizes), sum(s for s in sizes if s > 8)


TREE = {"dense": {"kernel": (512, 256), "bias": (256,)}, "conv": (3, 3, 16, 32), "scale": (7,)}


@pytest.mark.parametrize("name, kw, minimum", [
    ("adam", dict(learning_rate=1e-3), 8),  # m, v
    ("adamw", dict(learning_rate=1e-3), 8),
    ("sgd", dict(learning_rate=1e-3, momentum=0.9), 4),  # the momentum buffer
    ("lion", dict(learning_rate=1e-3), 4),  # m
    ("rmsprop", dict(learning_rate=1e-3), 4),  # v (and the mean of g only when centered)
    ("rmsprop", dict(learning_rate=1e-3, centered=True), 8),
    ("adagrad", dict(learning_rate=1e-3), 4),  # the sum of squares
])
def test_state_memory_is_the_algorithms_minimum(name, kw, minimum):
    n = bench.num_params(TREE)
    total, per_parameter = _state_bytes(name, TREE, **kw)
    assert per_parameter == minimum * n  # float32 buffers, exactly the algorithm's
    assert total - per_parameter <= 64  # and a few scalars: step counts, hyperparameters
    params = jax.tree.map(lambda s: np.zeros(s, np.float32), TREE, is_leaf=lambda x: isinstance(x, tuple))
    assert bench.state_bytes(getattr(optimizers, name)(**kw), params) == total  # what the benchmark reports


@pytest.mark.parametrize("name", ["adafactor", "sm3"])
def test_factored_state_is_sublinear_in_the_matrix_size(name):
    if getattr(optimizers, name, None) is None:
        pytest.skip(f"optimizers.{name} does not exist yet")
    small = _state_bytes(name, {"w": (256, 256)}, learning_rate=1e-3)[0] / 256**2
    large = _state_bytes(name, {"w": (2048, 2048)}, learning_rate=1e-3)[0] / 2048**2
    # Rows plus columns: 8x the side, 64x the parameters, 8x the state, so per parameter 1/8.
    assert large <= small / 7
    assert large < 0.01


@pytest.mark.parametrize("name, tree, minimum", [
    ("adafactor", {"w": (512, 256)}, 24),  # factored: two reads of g and theta's, then theta in place
    ("adafactor", {"w": (4096,)}, 32),  # its full v read in both passes and written once
    ("sm3", {"w": (512, 256)}, 12),  # the covers are sublinear: g, theta -> theta
    ("sm3", {"w": (4096,)}, 20),  # a vector's cover is one accumulator per element
])
def test_the_floor_of_sublinear_state_follows_its_per_element_buffers(name, tree, minimum):
    params = jax.tree.map(lambda s: np.zeros(s, np.float32), tree, is_leaf=lambda x: isinstance(x, tuple))
    tx = getattr(optimizers, name)(learning_rate=1e-3)
    assert bench.min_bytes(name, bench.state_bytes(tx, params) / bench.num_params(params)) == minimum
