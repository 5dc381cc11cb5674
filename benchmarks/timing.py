"""Timed steps (ours, optax's, torch's), interleaved, and the floor: the fastest in-place pass."""

from __future__ import annotations

import gc
import math
import statistics
import time
from typing import NamedTuple, Optional

import numpy as np

from benchmarks.hlo import hlo_traffic
from benchmarks.tables import LR, _optimizers
from benchmarks.trees import random_tree, state_bytes


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
