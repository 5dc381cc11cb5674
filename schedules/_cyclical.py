"""Cyclical learning rates (triangular, triangular2, exp_range) and the one-cycle policy."""

from __future__ import annotations

import jax.numpy as jnp

from schedules._base import Schedule, check_range, float_steps, interpolate, power, typed_arguments

_MODES = ("triangular", "triangular2", "exp_range")


@typed_arguments
def cyclical(base_value: float, max_value: float, step_size: int, mode: str = "triangular",
             gamma: float = 1.0, step_size_down: int | None = None) -> Schedule:
    r"""Cyclical learning rate: triangle waves between ``base_value`` and ``max_value``.

    .. math::
        \eta_t = b + (M - b)\, h(t)\, f, \qquad
        h(t) = \begin{cases} p/u & p \le u \\ (u+d-p)/d & p > u \end{cases}, \quad
        p = t \bmod (u + d)

    with :math:`f = 1` (``triangular``), :math:`f = 2^{-(c-1)}` in cycle :math:`c = 1, 2, \dots`
    (``triangular2``), :math:`f = \gamma^t` (``exp_range``). This is
    ``torch.optim.lr_scheduler.CyclicLR``; its ``cycle_momentum`` is this same schedule with
    ``base_value=max_momentum, max_value=base_momentum`` (an inverse cycle: ``base_value``
    may exceed ``max_value``). “Adaptive and cyclical learning rates” takes ``base_value = max_value / 6``.

    Args:
        base_value: :math:`b`, the value at the start of each cycle.
        max_value: :math:`M`, the value after ``step_size`` steps.
        step_size: :math:`u \ge 1`, steps from :math:`b` to :math:`M`.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: :math:`\gamma \in (0, 1]` for ``exp_range``.
        step_size_down: :math:`d \ge 1`, steps back down (default :math:`u`).

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """
    step_size_down = step_size if step_size_down is None else step_size_down
    check_range("cyclical", "step_size", step_size, 1)
    check_range("cyclical", "step_size_down", step_size_down, 1)
    check_range("cyclical", "gamma", gamma, 0.0, 1.0, low_open=True)
    if mode not in _MODES:
        raise ValueError(f"cyclical: mode must be one of {_MODES}, got {mode!r}")
    period = step_size + step_size_down

    def schedule(step):
        step = jnp.maximum(jnp.asarray(step), 0)
        cycle, pos = step // period + 1, step % period
        height = jnp.where(pos <= step_size, float_steps(pos) / step_size,
                           float_steps(period - pos) / step_size_down)
        if mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = power(0.5, cycle - 1)
        else:
            scale = power(gamma, step)
        return base_value + (max_value - base_value) * height * scale

    return schedule


@typed_arguments
def one_cycle(total_steps: int, peak_value: float, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4, anneal: str = "cos", three_phase: bool = False,
              initial_value: float | None = None, final_value: float | None = None) -> Schedule:
    r"""The one-cycle policy: up to a peak, then down to far below the start.

    Phases (boundaries at steps :math:`pT - 1` and :math:`T - 1`, as ``OneCycleLR``):
    :math:`\eta_0 \to \eta_{max}` then :math:`\eta_{max} \to \eta_{min}`; with
    ``three_phase``: :math:`\eta_0 \to \eta_{max}` (to :math:`pT-1`), :math:`\eta_{max} \to
    \eta_0` (to :math:`2pT-2`), :math:`\eta_0 \to \eta_{min}` (to :math:`T-1`). Each phase
    anneals by cosine or linearly. :math:`\eta_0 = \eta_{max}/\text{div\_factor}`,
    :math:`\eta_{min} = \eta_0/\text{final\_div\_factor}`, unless ``initial_value`` /
    ``final_value`` give them. After :math:`T-1` the final value is held.

    The momentum cycle of the policy (0.95 -> 0.85 -> 0.95 in ``OneCycleLR``) is
    ``one_cycle(T, peak_value=0.85, initial_value=0.95, final_value=0.95)``.

    Args:
        total_steps: :math:`T \ge 2`.
        peak_value: :math:`\eta_{max}`.
        pct_start: :math:`p \in (0, 1)`, the fraction of steps spent rising.
        div_factor: :math:`> 0`.
        final_div_factor: :math:`> 0`.
        anneal: ``"cos"`` or ``"linear"``.
        three_phase: use the three-phase form.
        initial_value: :math:`\eta_0`, overriding ``div_factor``.
        final_value: :math:`\eta_{min}`, overriding ``final_div_factor``.

    References:
        Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using
        Large Learning Rates", 2017; Smith, "A disciplined approach to neural network
        hyper-parameters: Part 1", 2018.
    """
    check_range("one_cycle", "total_steps", total_steps, 2)
    check_range("one_cycle", "pct_start", pct_start, 0.0, 1.0, low_open=True, high_open=True)
    check_range("one_cycle", "div_factor", div_factor, 0.0, low_open=True)
    check_range("one_cycle", "final_div_factor", final_div_factor, 0.0, low_open=True)
    if anneal not in ("cos", "linear"):
        raise ValueError(f"one_cycle: anneal must be 'cos' or 'linear', got {anneal!r}")
    start = peak_value / div_factor if initial_value is None else initial_value
    end = start / final_div_factor if final_value is None else final_value
    rise_end = float(pct_start * total_steps) - 1
    if three_phase:
        phases = [(rise_end, start, peak_value), (float(2 * pct_start * total_steps) - 2, peak_value, start),
                  (total_steps - 1.0, start, end)]
    else:
        phases = [(rise_end, start, peak_value), (total_steps - 1.0, peak_value, end)]
    if any(b <= a for a, b in zip([0.0] + [p[0] for p in phases], [p[0] for p in phases])):
        raise ValueError(f"one_cycle: total_steps={total_steps} and pct_start={pct_start} leave an empty phase")

    def schedule(step):
        t = float_steps(step)
        value, begin = None, 0.0
        for finish, a, b in phases:
            here = interpolate(a, b, t - begin, finish - begin, anneal)
            value = here if value is None else jnp.where(t > begin, here, value)
            begin = finish
        return value

    return schedule
