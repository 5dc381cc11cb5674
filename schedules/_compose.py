"""Composing schedules: a warm-up before any schedule, and schedules joined end to end."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from schedules._base import ScalarOrSchedule, Schedule, check_range, interpolate, resolve, typed_arguments


@typed_arguments
def join(schedules: Sequence[ScalarOrSchedule], boundaries: Sequence[int]) -> Schedule:
    r"""Schedules one after another: from ``boundaries[i-1]`` on, ``schedules[i]`` at ``t - boundaries[i-1]``.

    Each schedule restarts its own step count at its boundary, as
    ``torch.optim.lr_scheduler.SequentialLR`` and ``optax.join_schedules`` do.

    Args:
        schedules: ``n`` schedules (or numbers).
        boundaries: ``n - 1`` increasing positive steps.
    """
    boundaries = [int(b) for b in boundaries]
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"join: boundaries must have one entry fewer than schedules ({len(schedules) - 1}), "
                         f"got {len(boundaries)}")
    if any(b <= 0 for b in boundaries) or any(b <= a for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"join: boundaries must be positive and increasing, got {boundaries!r}")
    starts = [0] + boundaries

    def schedule(step):
        step = jnp.asarray(step)
        value = resolve(schedules[0], step)
        for start, part in zip(starts[1:], schedules[1:]):
            value = jnp.where(step >= start, resolve(part, step - start), value)
        return value

    return schedule


@typed_arguments
def warmup(schedule: ScalarOrSchedule, warmup_steps: int, start_value: float = 0.0,
           mode: str = "linear") -> Schedule:
    r"""A ramp from ``start_value`` to the schedule's first value, then the schedule.

    .. math::
        \eta_t = s + (\eta^{*}_0 - s)\,r(t/W) \ (t < W), \qquad \eta_t = \eta^{*}_{t-W} \ (t \ge W)

    with :math:`r(x) = x` (``"linear"``) or :math:`(1-\cos\pi x)/2` (``"cos"``). The wrapped
    schedule starts its own count at :math:`W`, as ``SequentialLR([LinearLR(start_factor,
    total_iters=W), main], milestones=[W])`` does with :math:`s = \text{start\_factor}\cdot\eta^{*}_0`.

    Args:
        schedule: the schedule :math:`\eta^{*}` (or a number) after the warm-up.
        warmup_steps: :math:`W \ge 0`.
        start_value: :math:`s`.
        mode: ``"linear"`` or ``"cos"``.
    """
    check_range("warmup", "warmup_steps", warmup_steps, 0)
    if mode not in ("linear", "cos"):
        raise ValueError(f"warmup: mode must be 'linear' or 'cos', got {mode!r}")
    if warmup_steps == 0:
        return lambda step: resolve(schedule, step)

    def ramp(step):
        return interpolate(start_value, resolve(schedule, 0), step, warmup_steps, mode)

    return join([ramp, schedule], [warmup_steps])
