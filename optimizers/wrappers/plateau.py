"""Reduce on plateau: scale the updates down when a monitored value stops improving."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.hyperparams import check_range, float_dtype


class ReduceOnPlateauState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    scale: jax.Array  # the factor applied to the updates (the learning rate's multiplier)
    best: jax.Array  # best (mean) value seen
    num_bad: jax.Array  # int32: checks since the last improvement
    cooldown_counter: jax.Array  # int32: checks left before bad ones count again
    accumulated_value: jax.Array  # sum of the values since the last check
    accumulated_count: jax.Array  # int32: how many values that sum holds


def _improves(value, best, mode, rtol, atol):
    """Whether ``value`` beats ``best`` by more than ``rtol * |best| + atol``."""
    margin = jnp.where(jnp.isinf(best), 0.0, rtol * jnp.abs(best)) + atol
    return value < best - margin if mode == "min" else value > best + margin


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
    *,
    threshold: Optional[float] = None,
    threshold_mode: str = "rel",
    mode: str = "min",
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""Multiplies the updates by a scale that drops by ``factor`` when the value plateaus.

    ``update(updates, state, params, value=loss)``. Every ``accumulation_size`` updates the
    mean :math:`x` of the values passed is checked: it improves on the best :math:`b` if
    :math:`x < b - \tau|b|` (``rel``) or :math:`x < b - \tau` (``abs``), mirrored for
    ``mode="max"``. After more than ``patience`` checks without improvement the scale becomes
    :math:`\max(\alpha s, s_{min})` (if that lowers it by more than ``eps``), and the next
    ``cooldown`` checks do not count. The new scale applies to the update of the same call.
    The state holds every counter, so a restored checkpoint resumes exactly.

    With ``accumulation_size=1``, a learning rate of 1 and positive values this is
    ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode, factor, patience, threshold,
    threshold_mode, cooldown, min_lr=min_scale, eps)`` stepped with each value.

    .. warning::
        PyTorch's relative threshold is :math:`b(1 - \tau)`, which for a negative best (a
        log-likelihood, a negative loss) counts a *worse* value as better; here the margin is
        :math:`\tau|b|`, the same for either sign. optax's ``reduce_on_plateau`` reduces
        after ``patience`` bad checks, PyTorch and this one after ``patience + 1``.

    optax's tolerances ``rtol`` and ``atol`` are accepted instead of ``threshold`` (which then
    must not be given): a value improves if :math:`x < b - (\text{rtol}\,|b| + \text{atol})`
    (each 0 when not given). optax writes :math:`x < (1-\text{rtol})\,b - \text{atol}`: the
    same for a positive best; for a negative one it counts a worse value as better (as
    PyTorch's), here it does not.

    Args:
        factor: :math:`\alpha \in (0, 1)`.
        patience: bad checks tolerated, :math:`\ge 0`.
        threshold: :math:`\tau \ge 0` (1e-4).
        threshold_mode: ``"rel"`` or ``"abs"``.
        cooldown: checks ignored after a reduction, :math:`\ge 0`.
        min_scale: the floor :math:`s_{min} \in [0, 1]`.
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy, a log-likelihood).
        accumulation_size: values averaged per check, :math:`\ge 1`.
        eps: smallest change of the scale that is applied, :math:`\ge 0`.
        rtol, atol: optax's relative and absolute tolerances, :math:`\ge 0`.
    """
    owner = "reduce_on_plateau"
    if rtol is not None or atol is not None:
        if threshold is not None:
            raise ValueError(f"{owner}: give threshold or optax's rtol/atol, not both: got threshold={threshold!r}, "
                             f"rtol={rtol!r}, atol={atol!r}")
        check_range(owner, "rtol", rtol, 0.0)
        check_range(owner, "atol", atol, 0.0)
        rtol, atol = rtol or 0.0, atol or 0.0
    else:
        threshold = 1e-4 if threshold is None else threshold
        rtol, atol = (threshold, 0.0) if threshold_mode == "rel" else (0.0, threshold)
    check_range(owner, "factor", factor, 0.0, 1.0, low_open=True, high_open=True)
    check_range(owner, "patience", patience, 0)
    check_range(owner, "threshold", threshold, 0.0)
    check_range(owner, "cooldown", cooldown, 0)
    check_range(owner, "min_scale", min_scale, 0.0, 1.0)
    check_range(owner, "accumulation_size", accumulation_size, 1)
    check_range(owner, "eps", eps, 0.0)
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")

    def init_fn(params):
        del params
        dtype, zero = float_dtype(), jnp.zeros([], jnp.int32)
        worst = jnp.asarray(jnp.inf if mode == "min" else -jnp.inf, dtype)
        return ReduceOnPlateauState(zero, jnp.ones([], dtype), worst, zero, zero, jnp.zeros([], dtype), zero)

    def check(state, value):
        better = _improves(value, state.best, mode, rtol, atol)
        best = jnp.where(better, value, state.best)
        num_bad = jnp.where(better, 0, optax.safe_increment(state.num_bad))
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1, 0)
        num_bad = jnp.where(in_cooldown, 0, num_bad)
        reduce = num_bad > patience
        lowered = jnp.maximum(state.scale * factor, min_scale)
        scale = jnp.where(reduce & (state.scale - lowered > eps), lowered, state.scale)
        cooldown_counter = jnp.where(reduce, cooldown, cooldown_counter)
        num_bad = jnp.where(reduce, 0, num_bad)
        return state._replace(scale=scale, best=best, num_bad=num_bad, cooldown_counter=cooldown_counter)

    def update_fn(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        total = state.accumulated_value + jnp.asarray(value, state.accumulated_value.dtype)
        n = state.accumulated_count + 1
        ready = n >= accumulation_size
        checked = check(state, total / n)
        state = jax.tree.map(lambda a, b: jnp.where(ready, a, b), checked, state)
        state = state._replace(count=optax.safe_increment(state.count),
                               accumulated_value=jnp.where(ready, 0.0, total).astype(total.dtype),
                               accumulated_count=jnp.where(ready, 0, n))
        updates = jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates)
        return updates, state

    return transformation("reduce_on_plateau", init_fn, update_fn, extra_args=True)
