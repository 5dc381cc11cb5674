"""Monotone decays: multiplicative with a floor, step-wise at milestones, polynomial."""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp

from schedules._base import Schedule, check_range, float_steps, power, typed_arguments


@typed_arguments
def factor(init_value: float, factor: float, min_value: float = 0.0) -> Schedule:
    r"""Multiplicative decay with a floor: :math:`\eta_{t+1} = \max(\eta_{min}, \alpha \eta_t)`.

    That is :math:`\eta_t = \max(\eta_{min}, \eta_0 \alpha^t)` (d2l's ``FactorScheduler``;
    ``torch.optim.lr_scheduler.ExponentialLR(gamma=alpha)`` without the floor).

    Args:
        init_value: :math:`\eta_0`.
        factor: :math:`\alpha \in (0, 1]`.
        min_value: the floor :math:`\eta_{min} \ge 0`.
    """
    check_range("factor", "factor", factor, 0.0, 1.0, low_open=True)
    check_range("factor", "min_value", min_value, 0.0)

    def schedule(step):
        return jnp.maximum(min_value, init_value * power(factor, step))

    return schedule


@typed_arguments
def multi_factor(init_value: float, factor: float, milestones: Optional[Sequence[int]] = None,
                 step_size: Optional[int] = None) -> Schedule:
    r"""Step decay: :math:`\eta_t = \eta_0 \alpha^{n(t)}`, :math:`n(t)` the milestones passed.

    With ``milestones`` :math:`m_1 < m_2 < \dots`, :math:`n(t) = |\{i: m_i \le t\}|`
    (``MultiStepLR``); with ``step_size`` :math:`s`, :math:`n(t) = \lfloor t/s \rfloor`
    (``StepLR``). Give exactly one of them.

    Args:
        init_value: :math:`\eta_0`.
        factor: :math:`\alpha > 0` (usually below 1).
        milestones: increasing positive steps.
        step_size: a positive period.
    """
    check_range("multi_factor", "factor", factor, 0.0, low_open=True)
    if (milestones is None) == (step_size is None):
        raise ValueError("multi_factor: give exactly one of milestones and step_size, "
                         f"got milestones={milestones!r}, step_size={step_size!r}")
    if step_size is not None:
        check_range("multi_factor", "step_size", step_size, 1)
    else:
        milestones = [int(m) for m in milestones]
        if any(m <= 0 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"multi_factor: milestones must be positive and increasing, got {milestones!r}")

    def schedule(step):
        step = jnp.asarray(step)
        if step_size is not None:
            n = step // step_size
        else:
            n = jnp.sum(step[..., None] >= jnp.asarray(milestones, step.dtype), axis=-1) if milestones else 0
        return init_value * power(factor, n)

    return schedule


@typed_arguments
def polynomial(init_value: float, end_value: float, power: float, decay_steps: int) -> Schedule:
    r"""Polynomial decay: :math:`\eta_t = \eta_T + (\eta_0 - \eta_T)(1 - \min(t, T)/T)^p`.

    ``PolynomialLR(total_iters=T, power=p)`` is the case :math:`\eta_T = 0`.

    Args:
        init_value: :math:`\eta_0`.
        end_value: :math:`\eta_T`, held after step :math:`T`.
        power: :math:`p > 0`.
        decay_steps: :math:`T \ge 1`.
    """
    check_range("polynomial", "power", power, 0.0, low_open=True)
    check_range("polynomial", "decay_steps", decay_steps, 1)

    def schedule(step):
        remaining = (decay_steps - jnp.clip(float_steps(step), 0, decay_steps)) / decay_steps
        return end_value + (init_value - end_value) * remaining**power

    return schedule
