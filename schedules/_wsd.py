"""The warmup-stable-decay (WSD, trapezoidal) schedule."""

from __future__ import annotations

import numbers

import jax.numpy as jnp

from schedules._base import Schedule, check_range, float_steps, interpolate, typed_arguments

DECAY_SHAPES = ("1-sqrt", "linear", "cosine")


def _decay_length(total_steps: int, decay_steps) -> int:
    """``decay_steps`` as a number of steps: an int as given, a float in ``(0, 1]`` a fraction of ``total_steps``."""
    if isinstance(decay_steps, numbers.Integral) and not isinstance(decay_steps, bool):
        if decay_steps < 0:
            raise ValueError(f"wsd: decay_steps must be an int >= 0 or a fraction in (0, 1], got {decay_steps!r}")
        return int(decay_steps)
    if isinstance(decay_steps, numbers.Real) and not isinstance(decay_steps, bool) and 0 < decay_steps <= 1:
        return int(round(decay_steps * total_steps))
    raise ValueError(f"wsd: decay_steps must be an int >= 0 or a fraction in (0, 1], got {decay_steps!r}")


@typed_arguments
def wsd(peak_value: float, total_steps: int, warmup_steps: int = 0, decay_steps: int | float = 0.2,
        decay_shape: str = "1-sqrt", end_value: float = 0.0, init_value: float = 0.0) -> Schedule:
    r"""Warmup-stable-decay: a linear warm-up, a constant stretch, and a cooldown to ``end_value``.

    With :math:`W` = ``warmup_steps``, :math:`D` the decay's length, :math:`T` = ``total_steps``,
    :math:`\eta` = ``peak_value``, :math:`\eta_0` = ``init_value`` and :math:`\eta_e` = ``end_value``:

    .. math::
        \eta_t = \begin{cases}
            \eta_0 + (\eta - \eta_0)\, t / W & t < W \\
            \eta & W \le t < T - D \\
            \eta\, (1 - s(f)) + \eta_e\, s(f), \quad f = (t - T + D)/D & T - D \le t \le T \\
            \eta_e & t > T
        \end{cases}

    with the cooldown's shape :math:`s(f) = \sqrt f` (``"1-sqrt"``: :math:`\eta_t = \eta_e + (\eta -
    \eta_e)(1 - \sqrt f)`, Hägele et al.'s best), :math:`f` (``"linear"``) or
    :math:`(1 - \cos \pi f)/2` (``"cosine"``). It is continuous: :math:`\eta` at :math:`t = W` and at
    :math:`t = T - D`, :math:`\eta_e` at :math:`t = T`.

    Args:
        peak_value: :math:`\eta`, the stable value.
        total_steps: :math:`T \ge 1`, the step where the cooldown ends.
        warmup_steps: :math:`W \ge 0` (0: start at the peak).
        decay_steps: :math:`D`, an int :math:`\ge 0`, or a float in ``(0, 1]``: that fraction of
            :math:`T`, rounded (the default 0.2 is the papers' 20% cooldown).
        decay_shape: ``"1-sqrt"``, ``"linear"`` or ``"cosine"``.
        end_value: :math:`\eta_e`.
        init_value: :math:`\eta_0`, the value at step 0 of the warm-up.

    Raises:
        ValueError: ``total_steps < 1``, ``warmup_steps < 0``, a bad ``decay_steps``, an unknown
            ``decay_shape``, or ``warmup_steps + decay_steps > total_steps`` (naming them).

    References:
        Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable
        Training Strategies", 2024, Section 4 (WSD); Hägele et al., "Scaling Laws and
        Compute-Optimal Training Beyond Fixed Training Durations", NeurIPS 2024, Section 3
        (the ``1 - sqrt`` cooldown).
    """
    check_range("wsd", "total_steps", total_steps, 1)
    check_range("wsd", "warmup_steps", warmup_steps, 0)
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"wsd: decay_shape must be one of {DECAY_SHAPES}, got {decay_shape!r}")
    decay = _decay_length(total_steps, decay_steps)
    if warmup_steps + decay > total_steps:
        raise ValueError(f"wsd: warmup_steps + decay_steps must be <= total_steps, got {warmup_steps} + {decay} "
                         f"> {total_steps}")
    start = total_steps - decay

    def schedule(step):
        t = float_steps(step)
        rising = interpolate(init_value, peak_value, t, warmup_steps, "linear") if warmup_steps else peak_value
        if decay == 0:
            falling = jnp.where(t <= total_steps, peak_value, end_value)
        elif decay_shape == "cosine":
            falling = interpolate(peak_value, end_value, t - start, decay)
        elif decay_shape == "linear":
            falling = interpolate(peak_value, end_value, t - start, decay, "linear")
        else:
            f = jnp.clip(t - start, 0, decay) / decay
            falling = peak_value * (1 - jnp.sqrt(f)) + end_value * jnp.sqrt(f)
        return jnp.where(t < warmup_steps, rising, falling)

    return schedule
