"""Cosine annealing and its warm restarts (SGDR)."""

from __future__ import annotations

import jax.numpy as jnp

from schedules._base import Schedule, check_range, interpolate, power, typed_arguments


@typed_arguments
def cosine(init_value: float, decay_steps: int, end_value: float = 0.0) -> Schedule:
    r"""Cosine annealing: :math:`\eta_t = \eta_T + (\eta_0 - \eta_T)(1 + \cos(\pi t/T))/2`, then :math:`\eta_T`.

    ``CosineAnnealingLR(T_max=T, eta_min=eta_T)`` for :math:`t \le T`; PyTorch keeps
    oscillating after :math:`T`, this holds :math:`\eta_T` (as optax does).

    Args:
        init_value: :math:`\eta_0`.
        decay_steps: :math:`T \ge 1`.
        end_value: :math:`\eta_T`.
    """
    check_range("cosine", "decay_steps", decay_steps, 1)

    def schedule(step):
        return interpolate(init_value, end_value, step, decay_steps)

    return schedule


def _restart_boundaries(first: int, mult: int, limit: int = 2**31 - 1) -> list[int]:
    """The steps where cycles 1, 2, ... start: T_0 (mult^k - 1) / (mult - 1), below ``limit``."""
    out, start, length = [], first, first * mult
    while start < limit:
        out.append(start)
        start, length = start + length, length * mult
    return out


@typed_arguments
def sgdr(init_value: float, first_cycle_steps: int, min_value: float = 0.0, cycle_mult: int = 1,
         peak_decay: float = 1.0) -> Schedule:
    r"""SGDR: cosine annealing with warm restarts.

    .. math::
        \eta_t = \eta_{min} + (\delta^{i}\eta_0 - \eta_{min})\,
                 \tfrac12 \bigl(1 + \cos(\pi T_{cur} / T_i)\bigr), \qquad
        T_i = T_0 T_{mult}^{\,i}

    where :math:`i` is the number of restarts before step :math:`t` and :math:`T_{cur}` the
    steps since the last one. With :math:`\delta = 1` this is
    ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)``; :math:`\delta < 1` lowers the
    peak at each restart (Loshchilov & Hutter's follow-up practice; not in PyTorch).

    Args:
        init_value: :math:`\eta_0`, the first peak.
        first_cycle_steps: :math:`T_0 \ge 1`.
        min_value: :math:`\eta_{min}`.
        cycle_mult: :math:`T_{mult}`, an integer :math:`\ge 1`.
        peak_decay: :math:`\delta \in (0, 1]`.

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR
        2017, Eq. (5).
    """
    check_range("sgdr", "first_cycle_steps", first_cycle_steps, 1)
    if not isinstance(cycle_mult, int) or cycle_mult < 1:
        raise ValueError(f"sgdr: cycle_mult must be an integer >= 1, got {cycle_mult!r}")
    check_range("sgdr", "peak_decay", peak_decay, 0.0, 1.0, low_open=True)
    boundaries = None if cycle_mult == 1 else _restart_boundaries(first_cycle_steps, cycle_mult)

    def schedule(step):
        step = jnp.maximum(jnp.asarray(step), 0)
        if boundaries is None:
            restarts, since, length = step // first_cycle_steps, step % first_cycle_steps, float(first_cycle_steps)
        else:
            starts = jnp.asarray([0] + boundaries, step.dtype)
            restarts = jnp.sum(step[..., None] >= starts[1:], axis=-1)
            since = step - starts[restarts]
            length = first_cycle_steps * power(cycle_mult, restarts)
        return interpolate(init_value * power(peak_decay, restarts), min_value, since, length)

    return schedule
