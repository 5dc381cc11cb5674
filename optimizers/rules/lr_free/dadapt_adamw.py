"""D-Adaptation Adam: Adam with a step size estimated as it goes (Defazio & Mishchenko 2023)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import reject_complex, store, widen
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, either, float_dtype,
                                             given, init_hyperparams)
from optimizers.contract.registry import declare_optimizer, declare_state
from schedules import ScalarOrSchedule

from optimizers.rules.scaling import negated


@declare_state(nonnegative=("exp_avg_sq",), elementwise=False)
class ScaleByDadaptAdamwState(NamedTuple):
    count: jax.Array  # int32 scalar: updates seen (the schedules' step)
    hyperparams: dict  # {"learning_rate", "weight_decay", "d"}: "d" is the estimate after the latest update
    k: jax.Array  # int32 scalar: steps taken (dadaptation's k: a step with a zero denominator is skipped)
    numerator: jax.Array  # r_t, the weighted sum of <g, s / (sqrt(v) + eps)>
    exp_avg: optax.Updates  # m_t (already scaled by the step size d_t gamma_t)
    exp_avg_sq: optax.Updates  # v_t
    s: optax.Updates  # s_t, the weighted sum of the step-size-scaled gradients


def _check(owner, learning_rate, betas, eps, estim_lr0, weight_decay, growth_rate):
    pair = isinstance(betas, (tuple, list)) and len(betas) == 2
    if not pair or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
    check_learning_rate(owner, learning_rate)
    check_range(owner, "eps", eps, 0.0, low_open=True)
    check_range(owner, "estim_lr0", estim_lr0, 0.0, low_open=True)
    check_range(owner, "weight_decay", weight_decay, 0.0)
    check_range(owner, "growth_rate", growth_rate, 1.0)


def scale_by_dadapt_adamw(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                          estim_lr0: Optional[float] = None, weight_decay: ScalarOrSchedule = 0.0, *,
                          learning_rate: ScalarOrSchedule = 1.0, decouple: bool = True,
                          use_bias_correction: bool = False, growth_rate: float = math.inf,
                          d0: Optional[float] = None) -> optax.GradientTransformation:
    r"""D-Adapted Adam's step, with the step size :math:`d_t` it estimates (``dadaptation.DAdaptAdam``).

    With :math:`\gamma_t` the learning rate (a multiplier, 1 by default), :math:`d_0` = ``estim_lr0``,
    :math:`\rho_t = \sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` with ``use_bias_correction`` (else 1),
    :math:`\delta_t = d_t \gamma_t \rho_t` and :math:`\sqrt{\beta_2}` written :math:`\beta`; sums
    run over the whole model:

    .. math::
        r_t = \beta r_{t-1} + (1-\beta)\, \delta_t \Big\langle g_t, \frac{s_{t-1}}{\sqrt{v_{t-1}} + \epsilon}
        \Big\rangle, \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) \delta_t g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

        s_t = \beta s_{t-1} + (1-\beta) \delta_t g_t, \quad
        \hat d_t = \frac{r_t}{(1-\beta) \|s_t\|_1}, \quad
        d_{t+1} = \max(d_t, \min(\hat d_t, \omega d_t)),

        u_t = \frac{m_t}{\sqrt{v_t} + \epsilon} + \delta_t \lambda x_t

    (:math:`\omega` = ``growth_rate``). :math:`u_t` already holds the learning rate (it enters
    :math:`m_t` step by step; keyword-only here, the alias' first argument), so the alias applies
    :math:`x_{t+1} = x_t - u_t`.
    ``decouple=False`` adds :math:`\lambda x_t` to :math:`g_t` instead (an L2 penalty, before
    everything above), which is ``DAdaptAdam``'s default. A step whose :math:`\|s_t\|_1` is zero (a
    learning rate of 0, or only zero gradients so far) is skipped as dadaptation skips it: zero
    update, state unchanged, its :math:`k` not advanced (the schedules' ``count`` is).

    The estimate is ``optimizers.get_hyperparams(state)["d"]``; :math:`r_t` and :math:`\|s_t\|_1`
    are sums over every leaf (plain ``jnp`` reductions: global under sharded ``jit``).

    .. warning::
        ``optax.contrib.dadapt_adamw`` always bias-corrects; dadaptation (and this, by default)
        does not, so optax's first step is :math:`\sqrt{1-\beta_2}/(1-\beta_1) \approx 0.32` of
        this one. ``use_bias_correction=True`` gives optax's update (optax has no ``growth_rate``,
        ``decouple=False`` or skipped steps). ``DAdaptAdam`` defaults to ``decouple=False`` (L2);
        this alias of AdamW, like optax's, to decoupled decay: ``decouple=False`` is
        ``DAdaptAdam``'s default.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.
        betas: :math:`(\beta_1, \beta_2)`, each in ``[0, 1)``.
        eps: :math:`\epsilon > 0`.
        estim_lr0: :math:`d_0 > 0` (optax's name; ``None``: :math:`10^{-6}`).
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        decouple: decoupled (AdamW) decay; ``False``: L2 added to the gradient.
        use_bias_correction: Adam's bias correction :math:`\rho_t`.
        growth_rate: :math:`\omega \ge 1`, the most :math:`d` may grow per step.
        d0: dadaptation's name of ``estim_lr0`` (give one of the two).

    References:
        Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
        Algorithm 5 (Adam) as implemented in PyPI ``dadaptation`` 3.2 (``DAdaptAdam``).
    """
    owner = "scale_by_dadapt_adamw"
    check_range(owner, "d0", d0, 0.0, low_open=True)
    estim_lr0 = either(owner, "d0", d0, "estim_lr0", estim_lr0, default=1e-6)
    _check(owner, learning_rate, betas, eps, estim_lr0, weight_decay, growth_rate)
    b1, b2 = (float(b) for b in betas)
    sb2 = math.sqrt(b2)
    values = given(learning_rate=learning_rate, weight_decay=weight_decay)

    def init_fn(params):
        reject_complex("dadapt_adamw", params, "its estimate compares signed dot products of the real parameters")
        dt = float_dtype()
        hp = {**init_hyperparams(**values), "d": jnp.asarray(estim_lr0, dt)}
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return ScaleByDadaptAdamwState(jnp.zeros([], jnp.int32), hp, jnp.zeros([], jnp.int32), jnp.zeros([], dt),
                                      zeros(), zeros(), zeros())

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        lr, wd, d = hp["learning_rate"], hp["weight_decay"], state.hyperparams["d"]
        dt = d.dtype
        if use_bias_correction:
            k1 = (state.k + 1).astype(dt)
            rho = jnp.sqrt(1 - b2 ** k1) / (1 - b1 ** k1)
        else:
            rho = jnp.ones([], dt)
        dlr = d * lr * rho
        x = jax.tree.map(widen, params)
        g = jax.tree.map(widen, updates)
        if not decouple:
            g = jax.tree.map(lambda gi, xi: gi + wd * xi, g, x)
        dot = sum((jnp.sum(gi * (widen(si) / (jnp.sqrt(widen(vi)) + eps))) for gi, si, vi in
                   zip(jax.tree.leaves(g), jax.tree.leaves(state.s), jax.tree.leaves(state.exp_avg_sq))),
                  jnp.zeros([], dt)).astype(dt)
        m = jax.tree.map(lambda mi, gi: b1 * widen(mi) + dlr * (1 - b1) * gi, state.exp_avg, g)
        v = jax.tree.map(lambda vi, gi: b2 * widen(vi) + (1 - b2) * gi * gi, state.exp_avg_sq, g)
        s = jax.tree.map(lambda si, gi: sb2 * widen(si) + dlr * (1 - sb2) * gi, state.s, g)
        l1 = sum((jnp.sum(jnp.abs(si)) for si in jax.tree.leaves(s)), jnp.zeros([], dt)).astype(dt)
        numerator = sb2 * state.numerator + (1 - sb2) * (dlr * dot)
        d_hat = numerator / ((1 - sb2) * l1)
        d_new = jnp.maximum(d, jnp.minimum(d_hat, d * growth_rate))
        skip = (l1 == 0) | (lr == 0)
        out = jax.tree.map(
            lambda gi, mi, vi, xi: store(jnp.where(skip, 0, mi / (jnp.sqrt(vi) + eps)
                                                   + (wd * dlr * xi if decouple else 0)), gi.dtype),
            updates, m, v, x)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(skip, b, store(a, b.dtype)), new, old)  # noqa: E731
        new_state = ScaleByDadaptAdamwState(
            optax.safe_increment(state.count), {**hp, "d": jnp.where(skip, d, d_new)},
            jnp.where(skip, state.k, optax.safe_increment(state.k)), jnp.where(skip, state.numerator, numerator),
            keep(m, state.exp_avg), keep(v, state.exp_avg_sq), keep(s, state.s))
        return out, new_state

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Defazio & Mishchenko 2023",
                   update="`d̂=r/((1-√β₂)‖s‖₁); d=max(d,d̂); m=β₁m+(1-β₁)dγg; θ-=m/(√v+ε)+dγλθ`",
                   test_kwargs=dict(learning_rate=1.0, estim_lr0=1e-2))
def dadapt_adamw(learning_rate: ScalarOrSchedule = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, estim_lr0: Optional[float] = None, weight_decay: ScalarOrSchedule = 0.0, *,
                 decouple: bool = True, use_bias_correction: bool = False, growth_rate: float = math.inf,
                 d0: Optional[float] = None) -> optax.GradientTransformation:
    r"""D-Adaptation Adam: :math:`x_{t+1} = x_t - u_t` with :func:`scale_by_dadapt_adamw`'s :math:`u_t`.

    The defaults are ``dadaptation.DAdaptAdam``'s (no bias correction, :math:`d_0 = 10^{-6}`,
    unbounded growth) but for ``decouple`` (AdamW's decay, as the name and optax's alias say); the
    keywords and their order are ``optax.contrib.dadapt_adamw``'s, dadaptation's other options
    keyword-only. ``learning_rate`` is a multiplier of the estimate (leave it at 1, or give a
    schedule with 1 as its peak).

    .. warning::
        ``optax.contrib.dadapt_adamw`` bias-corrects: its first step is about a third of this one's.
        ``use_bias_correction=True`` is its form; ``decouple=False`` is ``DAdaptAdam``'s default
        (see :func:`scale_by_dadapt_adamw`).

    References:
        Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023; PyPI
        ``dadaptation`` 3.2.
    """
    return optax.chain(
        scale_by_dadapt_adamw(betas, eps, estim_lr0, weight_decay, learning_rate=learning_rate, decouple=decouple,
                              use_bias_correction=use_bias_correction, growth_rate=growth_rate, d0=d0),
        negated("dadapt_adamw"))
