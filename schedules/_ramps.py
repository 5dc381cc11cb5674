"""Ramps used by workflow tools: the LR range test's ramp and the SWA learning rate."""

from __future__ import annotations

import jax.numpy as jnp

from schedules._base import Schedule, check_range, float_steps, interpolate, power, typed_arguments


@typed_arguments
def lr_range(min_value: float = 1e-7, max_value: float = 10.0, num_steps: int = 100,
             mode: str = "exponential") -> Schedule:
    r"""The LR range test's ramp from ``min_value`` at step 0 to ``max_value`` at ``num_steps - 1``.

    .. math::
        \eta_t = \eta_{min} (\eta_{max}/\eta_{min})^{t/(N-1)} \ \text{(exponential)}, \qquad
        \eta_t = \eta_{min} + (\eta_{max} - \eta_{min})\, t/(N-1) \ \text{(linear)}

    held at :math:`\eta_{max}` afterwards (“What changed in deep-learning optimizers since Adam” (Phúc Lê) and
    “Adaptive and cyclical learning rates”: an exponential ramp from
    1e-7; Smith 2017, Section 3.3, a linear one).

    Args:
        min_value: :math:`\eta_{min} > 0`.
        max_value: :math:`\eta_{max} > \eta_{min}`.
        num_steps: :math:`N \ge 2`.
        mode: ``"exponential"`` or ``"linear"``.
    """
    check_range("lr_range", "min_value", min_value, 0.0, low_open=True)
    check_range("lr_range", "max_value", max_value, min_value, low_open=True)
    check_range("lr_range", "num_steps", num_steps, 2)
    if mode not in ("exponential", "linear"):
        raise ValueError(f"lr_range: mode must be 'exponential' or 'linear', got {mode!r}")

    def schedule(step):
        if mode == "linear":
            return interpolate(min_value, max_value, step, num_steps - 1, "linear")
        return min_value * power(max_value / min_value, jnp.clip(float_steps(step), 0, num_steps - 1) / (num_steps - 1))

    return schedule


@typed_arguments
def swa_lr(init_value: float, swa_value: float, anneal_steps: int = 10, anneal: str = "cos") -> Schedule:
    r"""Anneals from ``init_value`` to ``swa_value`` over ``anneal_steps`` steps, then holds it.

    .. math::
        \eta_t = \eta_{swa}\,\alpha(x) + \eta_0 (1 - \alpha(x)), \quad x = \min(1, t/n), \quad
        \alpha(x) = (1 - \cos\pi x)/2 \ \text{or}\ x

    This is ``torch.optim.swa_utils.SWALR(swa_lr, anneal_epochs=n, anneal_strategy)``
    stepped from a learning rate :math:`\eta_0`; with :math:`n = 0` it is
    :math:`\eta_{swa}` at once.

    Args:
        init_value: :math:`\eta_0`, the value when averaging starts.
        swa_value: :math:`\eta_{swa}`.
        anneal_steps: :math:`n \ge 0`.
        anneal: ``"cos"`` or ``"linear"``.

    References:
        Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
        Generalization", UAI 2018.
    """
    check_range("swa_lr", "anneal_steps", anneal_steps, 0)
    if anneal not in ("cos", "linear"):
        raise ValueError(f"swa_lr: anneal must be 'cos' or 'linear', got {anneal!r}")

    def schedule(step):
        if anneal_steps == 0:
            return jnp.full_like(float_steps(step), swa_value)
        return interpolate(init_value, swa_value, step, anneal_steps, anneal)

    return schedule
