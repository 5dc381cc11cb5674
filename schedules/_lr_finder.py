"""The LR range test (LR finder): raise the learning rate each step and watch the loss."""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from schedules._base import check_range, typed_arguments
from schedules._ramps import lr_range


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """What :func:`lr_finder` saw: one entry per step run.

    Attributes:
        learning_rates: the learning rate of each step.
        losses: the loss of each step's batch, computed before its update.
        smoothed_losses: their bias-corrected exponential moving average.
        stopped_at: the number of steps run (fewer than asked when the loss diverged).
        steepest: the learning rate where the smoothed loss falls fastest against
            :math:`\\log\\eta` (the steepest-descent rule).
        min_over_10: the learning rate of the lowest smoothed loss divided by 10 (document
            004's rule: "not at the minimum but 10x to the left").
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    stopped_at: int
    steepest: float
    min_over_10: float

    def plot(self, path: str | Path) -> Path:
        """Draws loss against learning rate (log axis) with both suggestions; writes ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.learning_rates, self.losses, color="0.75", lw=1, label="loss")
        ax.plot(self.learning_rates, self.smoothed_losses, color="C0", lw=2, label="smoothed loss")
        ax.axvline(self.steepest, color="C1", ls="--", label=f"steepest descent: {self.steepest:.2e}")
        ax.axvline(self.min_over_10, color="C2", ls=":", label=f"minimum / 10: {self.min_over_10:.2e}")
        finite = self.smoothed_losses[np.isfinite(self.smoothed_losses)]
        raw = self.losses[np.isfinite(self.losses)]
        if finite.size and raw.size:
            low, start = min(finite.min(), raw.min()), finite[0]
            ax.set_ylim(low - 0.05 * abs(low), start + 0.5 * abs(start))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title("LR range test")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _suggestions(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """(steepest descent, minimum / 10) over the finite part of the curve."""
    finite = np.isfinite(smoothed)
    if finite.sum() < 3:
        return float("nan"), float("nan")
    lrs, smoothed = lrs[finite], smoothed[finite]
    lowest = int(np.argmin(smoothed))
    slope = np.gradient(smoothed, np.log10(lrs))
    steepest = int(np.argmin(slope[: max(lowest, 1) + 1]))
    return float(lrs[steepest]), float(lrs[lowest] / 10)


def _warn_about_shape(smoothed: np.ndarray, losses: np.ndarray) -> None:
    """“What changed in deep-learning optimizers since Adam” (Phúc Lê)'s three regions: flat, falling, exploding. A missing fall points to a bug."""
    if not np.isfinite(losses[0]):
        warnings.warn("lr_finder: the loss is not finite from the first step: the model or the data "
                      "has a bug (a NaN-producing layer, bad inputs)", RuntimeWarning, stacklevel=3)
        return
    finite = smoothed[np.isfinite(smoothed)]
    start, lowest = finite[0], finite.min()
    if lowest > start - 0.05 * abs(start):
        warnings.warn("lr_finder: the loss never falls (no descending region): check the labels, the loss "
                      "and the model, or widen the range", RuntimeWarning, stacklevel=3)


def _by_learning_rate(optimizer: Callable[..., optax.GradientTransformation]):
    """``optimizer`` as a factory of one parameter named ``learning_rate`` (the name
    ``optax.inject_hyperparams`` passes it by), whatever the factory calls it.

    Raises:
        ValueError: a factory that takes the learning rate neither first nor as ``learning_rate``.
    """
    try:
        params = list(inspect.signature(optimizer).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): pass it first
        params = None
    by_name = params is not None and any(p.name == "learning_rate" for p in params)
    first = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    if params is not None and not by_name and (not params or params[0].kind not in first):
        raise ValueError(f"lr_finder: optimizer must take the learning rate as its first positional argument "
                         f"or as learning_rate=...; got a factory with signature {inspect.signature(optimizer)}")

    def factory(learning_rate):
        return optimizer(learning_rate=learning_rate) if by_name else optimizer(learning_rate)

    return factory


@typed_arguments
def lr_finder(loss_fn: Callable[[Any, Any], jax.Array], params, batches: Iterable,
              optimizer: Callable[..., optax.GradientTransformation], *, min_lr: float = 1e-7,
              max_lr: float = 10.0, num_steps: int = 100, mode: str = "exponential",
              smoothing: float = 0.98, diverge_factor: float = 4.0, progress: bool = True) -> LRFinderResult:
    r"""The LR range test: train ``num_steps`` steps with the learning rate rising each step.

    The learning rate follows :func:`lr_range` from ``min_lr`` to ``max_lr``. Each step's
    loss is smoothed by a bias-corrected exponential moving average,
    :math:`a_t = \beta a_{t-1} + (1-\beta) L_t`, :math:`\bar L_t = a_t / (1 - \beta^{t+1})`;
    the test stops when :math:`\bar L_t` exceeds ``diverge_factor`` times the best seen, or
    is not finite. The step is jit-compiled once, with the learning rate a traced input
    (through ``optax.inject_hyperparams``). The caller's params and optimizer are not
    changed. It warns when the curve has no descending region or is NaN from the start,
    since that points to a bug in the model or the data (“What changed in deep-learning optimizers since Adam” (Phúc
    Lê)).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: the initial params (left untouched).
        batches: an iterable of at least ``num_steps`` batches (wrap a short list in
            ``itertools.cycle``).
        optimizer: a factory ``learning_rate -> GradientTransformation`` that takes the
            learning rate as its first positional argument or as ``learning_rate=``, e.g.
            ``optimizers.adamw`` or ``lambda lr: optimizers.sgd(lr, momentum=0.9)``. Only the
            learning rate becomes a traced input; the factory's other arguments stay as given.
        min_lr, max_lr, num_steps, mode: the ramp (see :func:`lr_range`).
        smoothing: :math:`\beta \in [0, 1)`.
        diverge_factor: stop when the smoothed loss exceeds this multiple of its best, :math:`> 1`.
        progress: show a progress bar.

    Returns:
        An :class:`LRFinderResult` with the curve, both suggestions and ``plot(path)``.

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, Section 3.3;
        “What changed in deep-learning optimizers since Adam” (Phúc Lê) and “Adaptive and cyclical learning rates”.
    """
    check_range("lr_finder", "smoothing", smoothing, 0.0, 1.0, high_open=True)
    check_range("lr_finder", "diverge_factor", diverge_factor, 1.0, low_open=True)
    ramp = lr_range(min_lr, max_lr, num_steps, mode)
    tx = optax.inject_hyperparams(_by_learning_rate(optimizer))(learning_rate=min_lr)

    @jax.jit
    def step(params, state, batch, lr):
        hyperparams = {**state.hyperparams, "learning_rate": jnp.asarray(lr, state.hyperparams["learning_rate"].dtype)}
        state = state._replace(hyperparams=hyperparams)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = tx.init(params)
    lrs, losses, smoothed = [], [], []
    average, best, ran_out = 0.0, math.inf, False
    steps = range(num_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="lr_finder")
    for t, batch in zip(steps, batches):
        lr = float(ramp(t))
        params, state, loss = step(params, state, batch, lr)
        loss = float(loss)
        average = smoothing * average + (1 - smoothing) * loss
        value = average / (1 - smoothing ** (t + 1))
        lrs.append(lr), losses.append(loss), smoothed.append(value)
        if not math.isfinite(value) or (t > 0 and value > diverge_factor * best):
            break
        best = min(best, value)
    else:
        if len(lrs) < num_steps:  # the batches ran out before the ramp's end
            if lrs:
                warnings.warn(f"lr_finder: the batches ran out after {len(lrs)} of num_steps={num_steps} steps "
                              f"(the ramp reached {lrs[-1]:.3g} of max_lr={max_lr:g}): pass at least num_steps "
                              f"batches (itertools.cycle a short list) or lower num_steps", RuntimeWarning,
                              stacklevel=2)
            ran_out = True
    lrs_a, losses_a, smoothed_a = np.array(lrs), np.array(losses), np.array(smoothed)
    if not lrs:
        raise ValueError("lr_finder: batches is empty")
    if not ran_out:  # a curve cut short says nothing about its shape
        _warn_about_shape(smoothed_a, losses_a)
    steepest, min_over_10 = _suggestions(lrs_a, smoothed_a)
    return LRFinderResult(lrs_a, losses_a, smoothed_a, len(lrs), steepest, min_over_10)
