"""Prodigy: Adam with a step size estimated as it goes (Mishchenko & Defazio 2024)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import reject_complex, store, widen
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, either, float_dtype,
                                             given,
                                             init_hyperparams)
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=("exp_avg_sq",), elementwise=False)
class ScaleByProdigyState(NamedTuple):
    count: jax.Array  # int32 scalar: updates seen (the schedules' step)
    hyperparams: dict  # {"learning_rate", "weight_decay", "d"}: "d" is the estimate after the latest update
    k: jax.Array  # int32 scalar: steps taken (prodigyopt's k: a step with a zero denominator is skipped)
    d_max: jax.Array  # largest estimate so far (bounds d with growth_rate)
    numerator: jax.Array  # r_t, the weighted sum of <g, x_0 - x>
    exp_avg: optax.Updates  # m_t
    exp_avg_sq: optax.Updates  # v_t
    s: optax.Updates  # s_t, the weighted sum of the gradients
    params0: optax.Updates  # x_0


def _check(owner, learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef, weight_decay, growth_rate):
    pair = isinstance(betas, (tuple, list)) and len(betas) == 2
    if not pair or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
    check_learning_rate(owner, learning_rate)
    if beta3 is not None:
        check_range(owner, "beta3", beta3, 0.0, 1.0, high_open=True)
    check_range(owner, "eps", eps, 0.0, low_open=True)
    check_range(owner, "estim_lr0", estim_lr0, 0.0, low_open=True)
    check_range(owner, "estim_lr_coef", estim_lr_coef, 0.0, low_open=True)
    check_range(owner, "weight_decay", weight_decay, 0.0)
    check_range(owner, "growth_rate", growth_rate, 1.0)


def scale_by_prodigy(betas: tuple[float, float] = (0.9, 0.999), beta3: Optional[float] = None, eps: float = 1e-8,
                     estim_lr0: Optional[float] = None, estim_lr_coef: Optional[float] = None,
                     weight_decay: ScalarOrSchedule = 0.0, safeguard_warmup: bool = False, *,
                     learning_rate: ScalarOrSchedule = 1.0, use_bias_correction: bool = False, decouple: bool = True,
                     growth_rate: float = math.inf, d0: Optional[float] = None,
                     d_coef: Optional[float] = None) -> optax.GradientTransformation:
    r"""Prodigy's direction, with the step size :math:`d_t` it estimates (``prodigyopt.Prodigy``).

    With :math:`\gamma_t` the learning rate (a multiplier, 1 by default), :math:`d_0` =
    ``estim_lr0``, :math:`c` = ``estim_lr_coef``, :math:`\beta_3 = \sqrt{\beta_2}` by default,
    :math:`\rho_t = \sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` with ``use_bias_correction`` (else 1)
    and :math:`\delta_t = d_t \gamma_t \rho_t`; sums run over the whole model:

    .. math::
        r_t = \beta_3 r_{t-1} + \tfrac{d_t}{d_0} \delta_t \langle g_t, x_0 - x_t \rangle, \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) d_t g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) d_t^2 g_t^2,

        s_t = \beta_3 s_{t-1} + \tfrac{d_t}{d_0} \delta_t g_t \ (\text{safeguard\_warmup: } d_t
        \text{ for } \delta_t), \quad
        \hat d_t = c\, r_t / \|s_t\|_1,

        d_{max} = \max(d_{max}, \hat d_t), \quad
        d_{t+1} = \min(d_{max}, \omega\, d'_t), \quad
        d'_t = \max(d_t, \hat d_t) \text{ if } d_t = d_0 \text{ else } d_t,

        u_t = d_t \rho_t \Big(\frac{m_t}{\sqrt{v_t} + d_{t+1} \epsilon} + \lambda x_t\Big)

    (:math:`\omega` = ``growth_rate``; the alias multiplies :math:`u_t` by :math:`-\gamma_t`;
    ``learning_rate`` is keyword-only here, it is the alias' first argument).
    ``decouple=False`` adds :math:`\lambda x_t` to :math:`g_t` instead (an L2 penalty, before
    everything above). A step whose :math:`\|s_t\|_1` is zero (a learning rate of 0, or only
    zero gradients so far) is skipped as prodigyopt skips it: zero update, state unchanged, its
    :math:`k` not advanced (the schedules' ``count`` is).

    The estimate is ``optimizers.get_hyperparams(state)["d"]`` (:math:`d_{t+1}`, the one the
    next step uses); :math:`r_t`, :math:`\|s_t\|_1` and :math:`\langle g, x_0 - x\rangle` are sums
    over every leaf (plain ``jnp`` reductions: global under sharded ``jit``).

    .. warning::
        ``optax.contrib.prodigy`` always bias-corrects; prodigyopt (and this, by default) does
        not, so optax's first step is :math:`\rho_1 = \sqrt{1-\beta_2}/(1-\beta_1) \approx 0.32`
        of this one. ``use_bias_correction=True`` gives optax's update (optax has no
        ``growth_rate``, ``decouple=False`` or skipped steps: at a learning rate of 0 its
        estimate becomes NaN). optax's ``estim_lr0``, ``estim_lr_coef`` are prodigyopt's ``d0``,
        ``d_coef``.

    Args:
        learning_rate: :math:`\gamma_t \ge 0` (it enters the estimate), a number or a schedule.
        betas: :math:`(\beta_1, \beta_2)`, each in ``[0, 1)``.
        beta3: :math:`\beta_3 \in [0, 1)`, or ``None`` for :math:`\sqrt{\beta_2}`.
        eps: :math:`\epsilon > 0`.
        estim_lr0: :math:`d_0 > 0` (optax's name; ``None``: :math:`10^{-6}`).
        estim_lr_coef: :math:`c > 0` (optax's name; ``None``: 1).
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        safeguard_warmup: :math:`d_t` instead of :math:`\delta_t` in :math:`s_t`.
        use_bias_correction: Adam's bias correction :math:`\rho_t`.
        decouple: decoupled (AdamW) decay; ``False``: L2 added to the gradient.
        growth_rate: :math:`\omega \ge 1`, the most :math:`d` may grow per step.
        d0, d_coef: prodigyopt's names of ``estim_lr0``, ``estim_lr_coef`` (give one of each pair).

    References:
        Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", ICML
        2024, Algorithm 4 as implemented in PyPI ``prodigyopt`` 1.1.2 (``Prodigy``).
    """
    owner = "scale_by_prodigy"
    check_range(owner, "d0", d0, 0.0, low_open=True)  # prodigyopt's names, checked by their names
    check_range(owner, "d_coef", d_coef, 0.0, low_open=True)
    estim_lr0 = either(owner, "d0", d0, "estim_lr0", estim_lr0, default=1e-6)
    estim_lr_coef = either(owner, "d_coef", d_coef, "estim_lr_coef", estim_lr_coef, default=1.0)
    _check(owner, learning_rate, betas, beta3, eps, estim_lr0, estim_lr_coef, weight_decay, growth_rate)
    b1, b2 = (float(b) for b in betas)
    b3 = math.sqrt(b2) if beta3 is None else float(beta3)
    values = given(learning_rate=learning_rate, weight_decay=weight_decay)

    def init_fn(params):
        reject_complex("prodigy", params, "its estimate compares signed dot products of the real parameters")
        dt = float_dtype()
        scalar = lambda v: jnp.asarray(v, dt)  # noqa: E731
        hp = {**init_hyperparams(**values), "d": scalar(estim_lr0)}
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return ScaleByProdigyState(jnp.zeros([], jnp.int32), hp, jnp.zeros([], jnp.int32), scalar(estim_lr0),
                                   scalar(0.0), zeros(), zeros(), zeros(), jax.tree.map(jnp.array, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        lr, wd, d = hp["learning_rate"], hp["weight_decay"], state.hyperparams["d"]
        dt = d.dtype
        d0 = jnp.asarray(estim_lr0, dt)
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
        ratio = d / d0
        dot = sum((jnp.sum(gi * (jnp.asarray(x0, gi.dtype) - xi)) for gi, x0, xi in
                   zip(jax.tree.leaves(g), jax.tree.leaves(state.params0), jax.tree.leaves(x))), jnp.zeros([], dt))
        numerator = b3 * state.numerator + ratio * dlr * dot.astype(dt)
        m = jax.tree.map(lambda mi, gi: b1 * widen(mi) + d * (1 - b1) * gi, state.exp_avg, g)
        v = jax.tree.map(lambda vi, gi: b2 * widen(vi) + d * d * (1 - b2) * gi * gi, state.exp_avg_sq, g)
        weight = ratio * (d if safeguard_warmup else dlr)
        s = jax.tree.map(lambda si, gi: b3 * widen(si) + weight * gi, state.s, g)
        denominator = sum((jnp.sum(jnp.abs(si)) for si in jax.tree.leaves(s)), jnp.zeros([], dt)).astype(dt)
        d_hat = estim_lr_coef * numerator / denominator
        d_max = jnp.maximum(state.d_max, d_hat)
        d_new = jnp.minimum(d_max, jnp.where(d == d0, jnp.maximum(d, d_hat), d) * growth_rate)
        skip = (denominator == 0) | (lr == 0)
        out = jax.tree.map(
            lambda gi, mi, vi, xi: store(jnp.where(skip, 0, d * rho * (mi / (jnp.sqrt(vi) + d_new * eps)
                                                                     + (wd * xi if decouple else 0))), gi.dtype),
            updates, m, v, x)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(skip, b, store(a, b.dtype)), new, old)  # noqa: E731
        new_state = ScaleByProdigyState(
            optax.safe_increment(state.count), {**hp, "d": jnp.where(skip, d, d_new)},
            jnp.where(skip, state.k, optax.safe_increment(state.k)), jnp.where(skip, state.d_max, d_max),
            jnp.where(skip, state.numerator, numerator), keep(m, state.exp_avg), keep(v, state.exp_avg_sq),
            keep(s, state.s), state.params0)
        return out, new_state

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Mishchenko & Defazio 2024",
                   update="`d̂=r/‖s‖₁; d=max(d,d̂); θ-=γd(m/(√v+dε)+λθ)`",
                   test_kwargs=dict(learning_rate=1.0, estim_lr0=1e-2, estim_lr_coef=0.3))
def prodigy(learning_rate: ScalarOrSchedule = 1.0, betas: tuple[float, float] = (0.9, 0.999),
            beta3: Optional[float] = None, eps: float = 1e-8, estim_lr0: Optional[float] = None,
            estim_lr_coef: Optional[float] = None, weight_decay: ScalarOrSchedule = 0.0,
            safeguard_warmup: bool = False, *, use_bias_correction: bool = False, decouple: bool = True,
            growth_rate: float = math.inf, d0: Optional[float] = None,
            d_coef: Optional[float] = None) -> optax.GradientTransformation:
    r"""Prodigy: :math:`x_{t+1} = x_t - \gamma_t u_t` with :func:`scale_by_prodigy`'s :math:`u_t`.

    The defaults are ``prodigyopt.Prodigy``'s (no bias correction, decoupled decay, :math:`d_0 =
    10^{-6}`, unbounded growth); the keywords and their order are ``optax.contrib.prodigy``'s, with
    prodigyopt's other options keyword-only. ``learning_rate`` is a multiplier of the estimate
    (leave it at 1, or give a schedule with 1 as its peak).

    .. warning::
        ``optax.contrib.prodigy`` bias-corrects: its first step is about a third of this one's.
        ``use_bias_correction=True`` is its form (see :func:`scale_by_prodigy`).

    References:
        Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", ICML
        2024; PyPI ``prodigyopt`` 1.1.2.
    """
    return optax.chain(
        scale_by_prodigy(betas, beta3, eps, estim_lr0, estim_lr_coef, weight_decay, safeguard_warmup,
                         learning_rate=learning_rate, use_bias_correction=use_bias_correction, decouple=decouple,
                         growth_rate=growth_rate, d0=d0, d_coef=d_coef),
        scale_by_learning_rate(learning_rate))
