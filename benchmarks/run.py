"""Step time, memory floor, compile time and state memory of every optimizer, against optax and torch.

One command measures everything, prints a Markdown table and writes it with a CSV::

    python benchmarks/run.py                  # full run: both trees, every alias, 40 repetitions
    python benchmarks/run.py --smoke          # tiny trees, adam and lamb, 3 repetitions: checks the table (CI)
    python benchmarks/run.py --out DIR        # results.md and results.csv go there (default benchmarks/results)

    --only adam,lamb   --trees single,transformer,resnet18,billion   --reps 60   --warmup 5   --compile-reps 3
    --no-torch                  leave torch.optim out
    --torch-threads 1           torch.set_num_threads (its OpenMP spin-waits stall on a machine shared with others)
    --cpu-multi-output-fusion   XLA:CPU's sibling multi-output fusion (an XLA_FLAGS option; process-wide)
    --reuse-memory              restart under GLIBC_TUNABLES that keep freed memory for reuse (Linux)

For every alias in ``optimizers.__all__`` that takes a ``learning_rate`` (enrolled
automatically; our hyperparameters in ``KWARGS``, the counterparts, with the same ones, in
``OPTAX`` and ``TORCH``):

* **Step time** of one jit-compiled step, ``optimizers.update_and_apply`` (``tx.update`` then
  ``optax.apply_updates``; for the rows ``... fused``, the alias with ``fused=True``, whose
  step writes the params in place, and ``... fused flat`` also ``flat_state=True``), params and state donated
  (``donate_argnums=(0, 1)``), timed until its outputs are ready (``block_until_ready`` on
  one output: the outputs of one program's execution become ready together, which each
  repetition checks; blocking on each of a 150-leaf tree's 450 outputs costs about 1 ms,
  which a training loop does not pay); the same for optax's
  version of the algorithm, and ``torch.optim``'s ``step()`` with ``foreach=True`` and with
  ``fused=True`` where PyTorch has a fused kernel on the device. After ``--warmup`` steps each,
  ``--reps`` repetitions: ours and optax's back to back (the order flipping every repetition),
  then torch's in a phase of their own (its OpenMP threads spin after a step and would slow
  a JAX step that follows). Reported: median and interquartile range; ``ours/optax`` is the median of the
  per-repetition ratios (paired, so the drifts of a shared machine cancel).
* **Floor**: the bandwidth of the fastest elementwise in-place pass on this machine (JAX, PyTorch
  and NumPy candidates, measured before and after the rest; bytes read + written per second)
  over as much memory as the step touches (params, grads and state: its *working set*), and,
  per optimizer, the bytes it must move per parameter (``MIN_BYTES``, float32; Adafactor's and
  SM3's from their per-element state, ``SUBLINEAR``): floor time =
  bytes x parameters / bandwidth, and ``ours/floor`` is the measured median over it. The pass
  is as large as the working set because bandwidth depends on it: on a CPU whose last-level
  cache is large (300 MB here) a pass over one 64 MB tensor runs from the cache at twice the
  speed of Adam's 256 MB of params, grads and moments, which no kernel could reach.
* **Compiled code** (``compile().as_text()`` and ``memory_analysis()``): kernels over
  parameter-sized arrays, the bytes they move per parameter, the fresh memory a step allocates
  (temporaries: on CPU their page faults cost more than their bandwidth) and the copies XLA
  inserted under donation.
* **Compile time** of the first step (trace + lower + compile; median of ``--compile-reps`` fresh
  compiles, the order flipping) and **state memory** in bytes per parameter
  (``jax.eval_shape(tx.init, params)``; torch's ``optimizer.state`` after one step).

Trees: ``transformer`` (GPT-style, 9 blocks of width 320: 150 leaves, 11.8M parameters) and
``single`` (one float32 vector of 16M elements) by default; ``resnet18`` (62 leaves, 11.7M) and
``billion`` (2^30 elements, for a GPU) on request. The output starts with the machine.
"""

from __future__ import annotations

import argparse
import csv
import gc
import inspect
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from typing import NamedTuple, Optional

import numpy as np

LR = 1e-3


# --------------------------------------------------------------------------- the tables

def _optimizers():
    import optimizers
    return optimizers


def aliases() -> list[str]:
    """Every optimizer alias: a name in ``optimizers.__all__`` that takes a ``learning_rate``."""
    opt = _optimizers()
    return sorted(n for n in opt.__all__
                  if callable(getattr(opt, n)) and "learning_rate" in _parameters(getattr(opt, n)))


def _parameters(fn):
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


# Our hyperparameters, where an alias needs more than the learning rate or where its
# defaults differ from the counterparts' (the counterparts below use the same values).
KWARGS = {
    "adadelta": dict(learning_rate=1.0),
    "adafactor": dict(learning_rate=LR, relative_step=False),  # optax's adafactor has no relative step
    "adamw": dict(learning_rate=LR, weight_decay=0.01),
    "amos": dict(learning_rate=LR, eta=0.5),
    "lamb": dict(learning_rate=LR, weight_decay=0.01),
    "lars": dict(learning_rate=LR, weight_decay=0.0, trust_coefficient=0.001, momentum=0.9),
    "lion": dict(learning_rate=LR, b1=0.9, b2=0.99, weight_decay=1.0),
    "sgd": dict(learning_rate=LR, momentum=0.9),
    "sm3": dict(learning_rate=LR, momentum=0.9),  # optax's default momentum
}


def kwargs(name: str) -> dict:
    return KWARGS.get(name, dict(learning_rate=LR))


# optax's version of each algorithm, with the same hyperparameters (given the optax module).
OPTAX = {
    "adadelta": lambda optax: optax.adadelta(1.0, rho=0.9, eps=1e-6),
    "adafactor": lambda optax: optax.adafactor(LR),
    "adagrad": lambda optax: optax.adagrad(LR, initial_accumulator_value=0.0, eps=1e-10),  # eps inside the root
    "adam": lambda optax: optax.adam(LR),
    "adamax": lambda optax: optax.adamax(LR),
    "adamw": lambda optax: optax.adamw(LR, weight_decay=0.01),
    "amsgrad": lambda optax: optax.amsgrad(LR),
    "lamb": lambda optax: optax.lamb(LR, eps=1e-8, weight_decay=0.01),
    "lars": lambda optax: optax.lars(LR, weight_decay=0.0, trust_coefficient=0.001, momentum=0.9),
    "lion": lambda optax: optax.lion(LR, b1=0.9, b2=0.99, weight_decay=1.0),
    "nadam": lambda optax: optax.nadam(LR),  # constant b1 (no momentum schedule)
    "novograd": lambda optax: optax.novograd(LR, b1=0.9, b2=0.25, eps=1e-8),
    "radam": lambda optax: optax.radam(LR),
    "rmsprop": lambda optax: optax.rmsprop(LR, decay=0.99, eps=1e-8, eps_in_sqrt=False),
    "rprop": lambda optax: optax.rprop(LR),  # optax's form (see optimizers.scale_by_rprop)
    "scale_by_learning_rate": lambda optax: optax.scale_by_learning_rate(LR),
    "sgd": lambda optax: optax.sgd(LR, momentum=0.9),
    "sm3": lambda optax: optax.sm3(LR, momentum=0.9),
}


# torch.optim class name and keyword arguments; fused=True is tried for every one and
# reported where PyTorch's CPU build accepts it.
TORCH = {
    "adadelta": ("Adadelta", dict(lr=1.0, rho=0.9, eps=1e-6)),
    "adafactor": ("Adafactor", dict(lr=LR)),  # relative step and factoring differ (see optimizers.adafactor)
    "adagrad": ("Adagrad", dict(lr=LR, eps=1e-10)),
    "adam": ("Adam", dict(lr=LR)),
    "adamax": ("Adamax", dict(lr=LR)),
    "adamw": ("AdamW", dict(lr=LR, weight_decay=0.01)),
    "amsgrad": ("Adam", dict(lr=LR, amsgrad=True)),  # PyTorch's max over the raw v
    "nadam": ("NAdam", dict(lr=LR)),
    "radam": ("RAdam", dict(lr=LR)),
    "rmsprop": ("RMSprop", dict(lr=LR, alpha=0.99, eps=1e-8)),
    "rprop": ("Rprop", dict(lr=LR, etas=(0.5, 1.2), step_sizes=(LR * 1e-4, LR * 5e3))),
    "scale_by_learning_rate": ("SGD", dict(lr=LR)),
    "sgd": ("SGD", dict(lr=LR, momentum=0.9)),
}

# Bytes each update must move per float32 parameter: read g and theta, write theta (12),
# read and write every per-parameter state buffer (8 each), plus the extra pass a per-leaf
# norm forces (the norm must be known before the first element of the leaf is written).
MIN_BYTES = {
    "scale_by_learning_rate": 12,  # g, theta
    "scale_by_relative_step": 12,
    "sgd": 20,  # + momentum
    "rmsprop": 20,  # + v
    "adagrad": 20,  # + sum of squares
    "lion": 20,  # + m
    "adam": 28, "adamw": 28, "adamax": 28, "nadam": 28, "radam": 28, "adax": 28,  # + m, v
    "adadelta": 28,  # + v, accumulated squared steps
    "rprop": 28,  # + step sizes, previous gradient
    "amos": 28,  # + v, b (element granularity)
    "amsgrad": 36,  # + m, v, max v
    "novograd": 24,  # pass 1 reads g for ||g||; pass 2: g, theta, m -> theta, m
    "lars": 28,  # pass 1 reads g, theta for the norms; pass 2: g, theta, m -> theta, m
    "lamb": 40,  # pass 1: g, theta, m, v -> m, v and both norms; pass 2: theta, m, v -> theta
    "funnelled_sgdm": 44,  # pass 1: u, g for the global u.g; pass 2: g, theta, p, m, u -> theta, p, m, u
}
# Sublinear state: the bytes depend on which leaves have per-element statistics (a vector's
# Adafactor moment, SM3's cover of a vector), so they are computed from the state bytes per
# parameter by SUBLINEAR[name](per-element state bytes).
SUBLINEAR = {
    # a factored matrix: g, theta for the row/column sums and RMS(theta); g again for the
    # clipped update's RMS; g, theta -> theta (24). A leaf with its full v (and with b1, its
    # momentum) also reads v in the first pass and the second, and writes it: + 2 x 4 bytes
    # per buffer.
    "adafactor": lambda per_element: 24 + 2 * per_element,
    # covers reduced in the same pass; g, theta and every per-element buffer (a vector's
    # accumulator, the momentum) read and written once
    "sm3": lambda per_element: 12 + 2 * per_element,
}


def min_bytes(name: str, state_bytes_per_param: float) -> float:
    """The bytes ``name`` must move per parameter: ``MIN_BYTES[name]``; for the sublinear-state
    algorithms from their per-element state (the statistics of factored leaves and covers left
    out); for an alias in neither, 12 + 2 x its state bytes per parameter."""
    if name in SUBLINEAR:
        return SUBLINEAR[name](4 * math.floor(state_bytes_per_param / 4 + 1e-9))
    return MIN_BYTES.get(name, 12 + 2 * round(state_bytes_per_param))


# --------------------------------------------------------------------------- the trees

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


# --------------------------------------------------------------------------- measurements

def state_bytes(tx, params) -> int:
    """Bytes of ``tx.init(params)``, from its shapes only (nothing is allocated)."""
    import jax
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))


def num_params(tree) -> int:
    """Parameters in a tree of arrays or of shapes (tuples)."""
    import jax
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(x if isinstance(x, tuple) else np.shape(x)) for x in leaves)


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_PLUMBING = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant"}


def _shape_bytes(text: str) -> int:
    return sum(_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _SHAPE.findall(text))


class HloTraffic(NamedTuple):
    kernels: int  # entry-computation instructions that read or write an array of >= min_bytes
    bytes: int  # what those instructions read and write (operands + results of >= min_bytes)
    copies: int  # copy instructions among them (e.g. inserted by donation)
    temp: int  # bytes of fresh memory per step: temporaries and outputs not aliased to a donated input


def hlo_traffic(compiled, min_bytes: int = 1024) -> HloTraffic:
    """Passes over memory in a compiled step: its entry computation's kernels and their bytes.

    Every fusion (or other instruction) of the entry computation that reads or writes an
    array of at least ``min_bytes`` is one pass over those arrays; its traffic is the size of
    those operands and results. Scalar work (hyperparameters, counts) is left out. ``temp``
    is from XLA's memory analysis: on CPU it is allocated afresh at every step, and the page
    faults of fresh memory cost more than the bandwidth to fill it.
    """
    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):]
    sizes, kernels, moved, copies = {}, 0, 0, 0
    for line in entry.splitlines()[1:]:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        sizes[name] = out = _shape_bytes(shape)
        if op in _PLUMBING:
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        read = sum(sizes.get(o, 0) for o in operands if sizes.get(o, 0) >= min_bytes)
        written = out if out >= min_bytes else 0
        if read or written:
            kernels, moved, copies = kernels + 1, moved + read + written, copies + (op in ("copy", "copy-start"))
    memory = compiled.memory_analysis()
    temp = memory.temp_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes if memory else 0
    return HloTraffic(kernels, moved, copies, temp)


def compile_step(tx, params, state, grads, options=None, ours=False):
    """The donated step, traced, lowered and compiled afresh: ``tx.update`` + ``optax.apply_updates``
    (optax's), or ``optimizers.update_and_apply`` (ours: the same for every transform but the
    ``fused=True`` ones, which write the params in place)."""
    import jax
    import optax

    def step(params, state, grads):
        if ours:
            return _optimizers().update_and_apply(tx, grads, state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile(options or {})
    return compiled, time.perf_counter() - start


class JaxStep:
    """One optimizer's jit-compiled, donated step on its own copy of the params."""

    def __init__(self, tx, params_np, grads, options=None, ours=False):
        import jax
        self.tx, self.grads, self.options, self.ours = tx, grads, options, ours
        self.params = jax.tree.map(jax.numpy.array, params_np)  # fresh buffers: they are donated
        # One buffer per leaf: an init that puts one array in two places cannot be donated.
        self.state = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), tx.init(self.params))
        jax.block_until_ready((self.params, self.state))
        self.compiled, first = compile_step(tx, self.params, self.state, grads, options, ours)
        self.compile_times = [first]
        smallest = min(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.params))
        self.traffic = hlo_traffic(self.compiled, min_bytes=max(smallest, 16))
        self.state_bytes = state_bytes(tx, self.params)

    def compile_again(self):
        """Another first compile (a new function: traced, lowered and compiled again)."""
        self.compile_times.append(compile_step(self.tx, self.params, self.state, self.grads, self.options,
                                              self.ours)[1])

    def __call__(self) -> float:
        start = time.perf_counter()
        self.params, self.state = self.compiled(self.params, self.state, self.grads)
        return wait_for_outputs(start, (self.params, self.state))


def wait_for_outputs(start: float, outputs) -> float:
    """Seconds from ``start`` until one program's ``outputs`` are ready: blocks on one of them
    (they become ready together: checked after the clock stops)."""
    import jax
    leaves = jax.tree.leaves(outputs)
    leaves[0].block_until_ready()
    seconds = time.perf_counter() - start
    if not all(x.is_ready() for x in leaves):
        raise RuntimeError("benchmark: a step's outputs did not become ready together")
    return seconds


def torch_device() -> Optional[str]:
    """Where torch runs against JAX's default backend: the CPU, a CUDA GPU, or nowhere (None)."""
    import jax
    try:
        import torch
    except ImportError:
        return None
    if jax.default_backend() == "cpu":
        return "cpu"
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else None


class TorchStep:
    """``torch.optim.<cls>(..., foreach=True)`` or ``fused=True``: ``step()`` on fixed gradients."""

    def __init__(self, cls_name, kw, params_np, grads_np, mode, device):
        import jax
        import torch
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.params = [torch.tensor(p, device=device, requires_grad=True) for p in jax.tree.leaves(params_np)]
        for p, g in zip(self.params, jax.tree.leaves(grads_np)):
            p.grad = torch.tensor(g, device=device)
        self.opt = getattr(torch.optim, cls_name)(self.params, **kw, **{mode: True})
        self.opt.step()  # raises here where this mode has no kernel on the device; creates the state
        self.state_bytes = sum(t.numel() * t.element_size() for s in self.opt.state.values()
                               for t in s.values() if torch.is_tensor(t))

    def __call__(self) -> float:
        self.sync()
        start = time.perf_counter()
        self.opt.step()
        self.sync()
        return time.perf_counter() - start


class Timing(NamedTuple):
    median: float
    p25: float
    p75: float

    @classmethod
    def of(cls, seconds):
        q = np.percentile(seconds, [50, 25, 75])
        return cls(*(1e3 * q))  # milliseconds


def interleaved(jax_steps: dict, torch_steps: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    """Per-repetition times: the JAX variants back to back (order flipping), then, in a phase of
    their own, torch's. torch's OpenMP threads keep spinning for a while after each step
    (libgomp's default wait policy, torch's fastest), which takes a core from a JAX step that
    follows at once (measured on 2 cores: fused Adam on the 150-leaf tree 9.5 ms after itself,
    12.5 ms after a torch step)."""
    times = {k: [] for k in [*jax_steps, *torch_steps]}
    for group in (jax_steps, torch_steps):
        for step in group.values():
            for _ in range(warmup):
                step()
        gc.disable()
        try:
            for r in range(reps):
                for k in (list(group) if r % 2 == 0 else list(group)[::-1]):
                    times[k].append(group[k]())
        finally:
            gc.enable()
    return times


def bandwidth(n: int, reps: int, device: Optional[str]) -> tuple[float, str]:
    """The fastest elementwise in-place pass over ``n`` float32s in all, in bytes (read + written) per second.

    Candidates: ``x *= c`` over one array of ``n`` and ``x += c y`` over two of ``n / 2``, in
    JAX (donated), PyTorch and NumPy.
    """
    import jax
    import jax.numpy as jnp
    half = max(n // 2, 1)
    x_np = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y_np = np.ones(half, np.float32)
    scale = jax.jit(lambda x: x * 1.0000001, donate_argnums=0)
    axpy = jax.jit(lambda x, y: x + 1e-7 * y, donate_argnums=0)
    held = {"x": jnp.array(x_np), "x2": jnp.array(x_np[:half]), "y": jnp.array(y_np)}

    def jax_pass(fn, out, *names):
        def run():
            held[out] = fn(*(held[k] for k in names))
            held[out].block_until_ready()
        return run

    candidates = {"jax x*c (donated)": (jax_pass(scale, "x", "x"), 8 * n),
                  "jax x+c*y (donated)": (jax_pass(axpy, "x2", "x2", "y"), 12 * half)}
    if device:
        import torch
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        xt, x2t, yt = (torch.tensor(a, device=device) for a in (x_np, x_np[:half], y_np))
        candidates["torch x.mul_(c)"] = (lambda: (xt.mul_(1.0000001), sync()), 8 * n)
        candidates["torch x.add_(y, alpha)"] = (lambda: (x2t.add_(yt, alpha=1e-7), sync()), 12 * half)
    if jax.default_backend() == "cpu":
        candidates["numpy multiply(x, c, out=x)"] = (lambda: np.multiply(x_np, np.float32(1.0000001), out=x_np), 8 * n)
    best = (0.0, "")
    for label, (fn, moved) in candidates.items():
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
        best = max(best, (moved / statistics.median(ts), label))
    return best


def machine() -> dict:
    import jax
    import optax
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch
        torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "absent"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = jax.devices()[0]
    return {
        "cpu": f"{model}, {cores} cores available (os.cpu_count() = {os.cpu_count()})",
        "device": f"{device.platform}: {device.device_kind} x {jax.device_count()}",
        "jax": f"{jax.__version__} (jaxlib {jax.lib.__version__})", "optax": optax.__version__, "torch": torch_version,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") or "(none)",
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "") or "(none)",
    }


# --------------------------------------------------------------------------- one row

class Row(NamedTuple):
    tree: str
    optimizer: str
    params: int
    leaves: int
    ours: Timing
    optax: Optional[Timing]
    ours_over_optax: float  # median of the per-repetition ratios
    torch_foreach: Optional[Timing]
    torch_fused: Optional[Timing]
    ours_over_torch: float  # against the faster of the two
    min_bytes: float  # per parameter
    floor_ms: float
    ours_hlo: HloTraffic
    optax_hlo: Optional[HloTraffic]
    compile_ours_s: float  # median over the compiles
    compile_optax_s: float
    state_ours: float  # bytes per parameter
    state_optax: float
    state_torch: float
    error: str = ""


def working_set(params: int, state_bytes_per_param: float) -> int:
    """float32 elements in the memory a step touches: params, grads and state (its per-parameter
    buffers; scalars and sublinear statistics left out, so that few sizes need measuring)."""
    return params * (8 + 4 * math.floor(state_bytes_per_param / 4)) // 4


class Floor:
    """The fastest in-place pass over each working-set size, best of every measurement."""

    def __init__(self, reps: int, device: Optional[str]):
        self.reps, self.device, self.best = reps, device, {}

    def __call__(self, elements: int, again: bool = False) -> tuple[float, str]:
        if again or elements not in self.best:
            found = bandwidth(elements, self.reps, self.device)
            self.best[elements] = max(self.best.get(elements, (0.0, "")), found)
            gc.collect()
        return self.best[elements]


def measure(name, shapes, floor, args, device, options) -> Row:
    """One optimizer on one tree: ours, optax's and torch's steps, interleaved."""
    import jax
    opt = _optimizers()
    params_np = random_tree(shapes, 0, 0.02)
    grads_np = random_tree(shapes, 1, 1e-3)
    grads = jax.tree.map(jax.numpy.array, grads_np)
    n, leaves = num_params(params_np), len(jax.tree.leaves(params_np))
    row, (base, variant) = name, split_variant(name)
    tx = getattr(opt, base)(**kwargs(base), **VARIANTS.get(variant, {}))
    jax_steps = {"ours": JaxStep(tx, params_np, grads, options, ours=True)}
    name = base  # the counterparts and the floor are those of the algorithm
    if name in OPTAX:
        import optax
        jax_steps["optax"] = JaxStep(OPTAX[name](optax), params_np, grads, options)
    for r in range(args.compile_reps - 1):  # more first compiles, the order flipping
        for k in (list(jax_steps) if r % 2 else list(jax_steps)[::-1]):
            jax_steps[k].compile_again()
    torch_steps = {}
    if device and name in TORCH:
        for mode in ("foreach", "fused"):
            try:
                torch_steps[mode] = TorchStep(*TORCH[name], params_np, grads_np, mode, device)
            except (RuntimeError, TypeError, ValueError):
                pass  # no such kernel on this device
    times = interleaved(jax_steps, torch_steps, args.reps, args.warmup)
    timing = {k: Timing.of(v) for k, v in times.items()}
    ours, other = jax_steps["ours"], jax_steps.get("optax")
    ratio = statistics.median(a / b for a, b in zip(times["ours"], times["optax"])) if other else math.nan
    best_torch = min((t.median for t in (timing.get("foreach"), timing.get("fused")) if t), default=math.nan)
    need = min_bytes(name, ours.state_bytes / n)
    bw = floor(working_set(n, ours.state_bytes / n))[0]
    return Row(
        tree="", optimizer=row, params=n, leaves=leaves, ours=timing["ours"], optax=timing.get("optax"),
        ours_over_optax=ratio, torch_foreach=timing.get("foreach"), torch_fused=timing.get("fused"),
        ours_over_torch=timing["ours"].median / best_torch, min_bytes=need, floor_ms=1e3 * need * n / bw,
        ours_hlo=ours.traffic, optax_hlo=other.traffic if other else None,
        compile_ours_s=statistics.median(ours.compile_times),
        compile_optax_s=statistics.median(other.compile_times) if other else math.nan,
        state_ours=ours.state_bytes / n, state_optax=other.state_bytes / n if other else math.nan,
        state_torch=(next(iter(torch_steps.values())).state_bytes / n) if torch_steps else math.nan,
    )


def dispatch_ms(shapes, reps: int) -> float:
    """JAX's cost of calling a donated step on this tree that computes nothing: params, grads and
    Adam's state in, params and state out (median ms). It is in every row's step time; torch's
    Python loop over its parameter list is the counterpart in its rows."""
    import jax
    opt = _optimizers()
    params = jax.tree.map(jax.numpy.array, random_tree(shapes, 0, 0.02))
    grads = jax.tree.map(jax.numpy.array, random_tree(shapes, 1, 1e-3))
    tx = opt.adam(LR)
    state = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), tx.init(params))
    step = jax.jit(lambda p, s, g: (p, s), donate_argnums=(0, 1))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        params, state = step(params, state, grads)
        times.append(wait_for_outputs(start, (params, state)))
    return 1e3 * statistics.median(times[1:] or times)


def _failed(name, tree, exc) -> Row:
    nan, none = math.nan, None
    return Row(tree, name, 0, 0, Timing(nan, nan, nan), none, nan, none, none, nan, nan, nan,
               HloTraffic(0, 0, 0, 0), none, nan, nan, nan, nan, nan, error=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- output

def _ms(t: Optional[Timing]) -> str:
    if t is None or math.isnan(t.median):
        return "—"
    return f"{t.median:.2f} ±{(t.p75 - t.p25) / 2:.2f}"


def _x(v: Optional[float], digits=2) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _hlo(h: Optional[HloTraffic], n: int) -> str:
    if h is None or not n:
        return "—"
    return f"{h.kernels}k {h.bytes / n:.0f}B" + (f" {h.temp / n:.0f}t" if h.temp >= n else "") + \
        (f" {h.copies}c" if h.copies else "")


def markdown(rows: list[Row], info: dict, floor: Floor, dispatch: dict) -> str:
    out = ["# Optimizer step benchmark", ""]
    out += [f"- **{k}**: {v}" for k, v in info.items()]
    out += ["- **floor bandwidth** (read + written, the fastest in-place pass over a working set of that size): "
            + ", ".join(f"{4 * n / 1e6:,.1f} MB {bw / 1e9:.1f} GB/s ({label})"
                        for n, (bw, label) in sorted(floor.best.items())), ""]
    for tree in dict.fromkeys(r.tree for r in rows):
        part = [r for r in rows if r.tree == tree]
        first = next((r for r in part if r.params), part[0])
        out += [f"## Step time: `{tree}` ({first.params:,} parameters, {first.leaves} leaves)", "",
                f"JAX's call of a donated step on this tree that computes nothing (params, grads and Adam's "
                f"state in, params and state out): {dispatch.get(tree, math.nan):.2f} ms, in every row below.", "",
                "| optimizer | ours ms | optax ms | ours/optax | torch foreach ms | torch fused ms | ours/torch "
                "| floor ms (B/param) | ours/floor | optax/floor | HLO ours | HLO optax |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in part:
            if r.error:
                out.append(f"| {r.optimizer} | error: {r.error} |" + " |" * 10)
                continue
            optax_floor = r.optax.median / r.floor_ms if r.optax else math.nan
            out.append(
                f"| {r.optimizer} | {_ms(r.ours)} | {_ms(r.optax)} | {_x(r.ours_over_optax)} | {_ms(r.torch_foreach)} "
                f"| {_ms(r.torch_fused)} | {_x(r.ours_over_torch)} | {r.floor_ms:.2f} ({r.min_bytes:.0f}) "
                f"| {_x(r.ours.median / r.floor_ms)} | {_x(optax_floor)} | {_hlo(r.ours_hlo, r.params)} "
                f"| {_hlo(r.optax_hlo, r.params)} |")
        out.append("")
    out += ["## Compile time of the first step (s) and state memory (bytes per parameter)", "",
            "| optimizer | tree | compile ours | compile optax | ours/optax | state ours | state optax | state torch |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.error:
            out.append(f"| {r.optimizer} | {r.tree} | {r.compile_ours_s:.2f} | {_x(r.compile_optax_s)} "
                       f"| {_x(r.compile_ours_s / r.compile_optax_s)} | {r.state_ours:.3f} | {_x(r.state_optax, 3)} "
                       f"| {_x(r.state_torch, 3)} |")
    out += ["", "ms: median ±half the interquartile range. ours/optax: median of the per-repetition ratios "
            "(interleaved runs). ours/torch: against the faster of foreach and fused. floor: the bytes the "
            "algorithm must move per parameter at the floor bandwidth. HLO: kernels over parameter-sized arrays "
            "in the compiled step (k), the bytes they move per parameter (B), fresh memory per step in bytes per "
            "parameter (t) and copies (c); a fused row's kernel is a custom call (one per 4 leaves), counted with its operands "
            "(LAMB's and LARS's second pass is not in B). Compile: trace + lower + compile, median of the "
            "repetitions.", ""]
    return "\n".join(out)


CSV_FIELDS = ["tree", "optimizer", "params", "leaves", "ours_ms", "ours_p25_ms", "ours_p75_ms", "optax_ms",
              "optax_p25_ms", "optax_p75_ms", "ours_over_optax", "torch_foreach_ms", "torch_fused_ms",
              "ours_over_torch", "min_bytes_per_param", "floor_ms", "ours_over_floor", "optax_over_floor",
              "ours_gb_per_s", "hlo_kernels_ours", "hlo_bytes_per_param_ours", "temp_bytes_per_param_ours",
              "hlo_copies_ours", "hlo_kernels_optax", "hlo_bytes_per_param_optax", "temp_bytes_per_param_optax",
              "hlo_copies_optax", "compile_ours_s", "compile_optax_s", "state_bytes_per_param_ours",
              "state_bytes_per_param_optax", "state_bytes_per_param_torch", "error"]


def _median(t: Optional[Timing]) -> float:
    return t.median if t else math.nan


def _per_param(h: Optional[HloTraffic], n: int) -> tuple:
    return (h.kernels, h.bytes / n, h.temp / n, h.copies) if h and n else (math.nan,) * 4


def csv_rows(rows: list[Row]):
    nan = math.nan
    for r in rows:
        yield [r.tree, r.optimizer, r.params, r.leaves, r.ours.median, r.ours.p25, r.ours.p75, _median(r.optax),
               r.optax.p25 if r.optax else nan, r.optax.p75 if r.optax else nan, r.ours_over_optax,
               _median(r.torch_foreach), _median(r.torch_fused), r.ours_over_torch, r.min_bytes, r.floor_ms,
               r.ours.median / r.floor_ms, _median(r.optax) / r.floor_ms, r.min_bytes * r.params / r.ours.median / 1e6,
               *_per_param(r.ours_hlo, r.params), *_per_param(r.optax_hlo, r.params), r.compile_ours_s,
               r.compile_optax_s, r.state_ours, r.state_optax, r.state_torch, r.error]


# --------------------------------------------------------------------------- main

# Rows "alias variant" (stepped with optimizers.update_and_apply): the alias built with these.
VARIANTS = {"fused": dict(fused=True), "fused flat": dict(fused=True, flat_state=True)}
FUSED = ("adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "adax", "amos", "amsgrad", "funnelled_sgdm",
         "lamb", "lars", "lion", "nadam", "novograd", "radam", "rmsprop", "rprop", "sgd", "sm3")
FLAT = ("adam", "adamw", "sgd")  # with flat_state
SMOKE_ONLY = ("adam", "adam fused", "adam fused flat", "lamb")


def split_variant(name: str) -> tuple[str, str]:
    """``"adam fused flat"`` -> ``("adam", "fused flat")``; an alias -> ``(name, "")``."""
    base, _, variant = name.partition(" ")
    if variant and variant not in VARIANTS:
        raise ValueError(f"benchmark: unknown variant {variant!r} of {base!r} (known: {sorted(VARIANTS)})")
    return base, variant


# XLA:CPU's sibling multi-output fusion: only an XLA_FLAGS backend option (not a compile option).
MOF_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
# glibc: one arena, no mmap, no trimming: freed temporaries are reused instead of page-faulted in again.
REUSE_MEMORY = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
# XLA's cheapest compile (smoke mode only: its step times and compile times mean nothing).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def with_fused(names: list[str]) -> list[str]:
    """``names`` with a fused row after each alias that has ``fused=True``."""
    return [row for n in names for row in [n] + [f"{n} fused"] * (n in FUSED) + [f"{n} fused flat"] * (n in FLAT)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny trees, {', '.join(SMOKE_ONLY)}, 3 repetitions, fastest compile: checks the table")
    p.add_argument("--out", help="folder for results.md and results.csv (default benchmarks/results; "
                                 "a temporary folder with --smoke)")
    p.add_argument("--only", help="comma-separated aliases (default: every alias)")
    p.add_argument("--trees", default="transformer,single",
                   help=f"comma-separated, of {', '.join(TREES)} (default transformer,single)")
    p.add_argument("--reps", type=int, help="timed repetitions per variant (default 40; 3 with --smoke)")
    p.add_argument("--warmup", type=int, help="untimed steps per variant first (default 5; 1 with --smoke)")
    p.add_argument("--compile-reps", type=int, help="first compiles per variant (default 3; 1 with --smoke)")
    p.add_argument("--no-torch", action="store_true", help="leave torch.optim out")
    p.add_argument("--no-quantized", action="store_true", help="leave out the '... 8-bit' rows (benchmarks/quantized.py)")
    p.add_argument("--torch-threads", type=int,
                   help="torch.set_num_threads (default: torch's); 1 avoids OpenMP spin-waits on a busy machine")
    p.add_argument("--cpu-multi-output-fusion", action="store_true",
                   help=f"XLA_FLAGS={MOF_FLAG} (process-wide, ours and optax alike)")
    p.add_argument("--reuse-memory", action="store_true",
                   help=f"restart with GLIBC_TUNABLES={REUSE_MEMORY} (Linux; process-wide)")
    args = p.parse_args(argv)
    args.reps = args.reps or (3 if args.smoke else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    args.compile_reps = args.compile_reps or (1 if args.smoke else 3)
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.reuse_memory and os.environ.get("GLIBC_TUNABLES") != REUSE_MEMORY:
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])],
                  {**os.environ, "GLIBC_TUNABLES": REUSE_MEMORY})
    if args.cpu_multi_output_fusion:
        if "jax" in sys.modules:
            raise RuntimeError("--cpu-multi-output-fusion must be set before jax is imported")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + MOF_FLAG).strip()
    import jax
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are first compiles
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

    names = args.only.split(",") if args.only else (list(SMOKE_ONLY) if args.smoke else with_fused(aliases()))
    trees = args.trees.split(",")
    out_dir = args.out or (tempfile.mkdtemp(prefix="bench_") if args.smoke else
                           os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    os.makedirs(out_dir, exist_ok=True)
    options = FAST_COMPILE if args.smoke else None
    device = None if args.no_torch else torch_device()
    if device and args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)

    info = machine()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    floor = Floor(max(args.reps, 10), device)
    JaxStep(_optimizers().sgd(LR), random_tree({"w": (8,)}, 0, 1.0), {"w": jax.numpy.ones(8)}, options)  # warm-up

    rows, dispatch = [], {}
    for tree in trees:
        shapes = TREES[tree](args.smoke)
        dispatch[tree] = dispatch_ms(shapes, args.reps)
        for name in names:
            start = time.perf_counter()
            try:
                row = measure(name, shapes, floor, args, device, options)._replace(tree=tree)
            except Exception as exc:  # noqa: BLE001  (one broken optimizer must not lose the others' rows)
                row = _failed(name, tree, exc)
                print(f"{tree} {name}: {row.error}", file=sys.stderr, flush=True)
            rows.append(row)
            print(f"{tree:12s} {name:24s} ours {_ms(row.ours):>16s}  optax {_ms(row.optax):>16s}  "
                  f"ours/optax {_x(row.ours_over_optax)}  ({time.perf_counter() - start:.0f} s)", flush=True)
            gc.collect()

    # The floor is the fastest pass seen: measured when first needed and again at the end, on a
    # machine whose load drifts.
    for elements in list(floor.best):
        floor(elements, again=True)
    rows = [r if r.error else r._replace(floor_ms=1e3 * r.min_bytes * r.params /
                                         floor(working_set(r.params, r.state_ours))[0]) for r in rows]
    table = markdown(rows, info, floor, dispatch)
    quantized_names = [n for n in ("adamw", "lion", "sgd", "lamb") if n in names]
    if quantized_names and not (args.smoke or args.no_quantized):
        import quantized  # benchmarks/quantized.py: the "... 8-bit" rows
        table += "".join("\n" + quantized.section(t, TREES[t](False), args.reps, args.warmup, quantized_names)
                         for t in trees)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        writer.writerows(csv_rows(rows))
    print("\n" + table)
    print(f"written: {os.path.join(out_dir, 'results.md')}, {os.path.join(out_dir, 'results.csv')}")
    return table


if __name__ == "__main__":
    main()
