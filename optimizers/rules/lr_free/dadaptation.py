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
                                             given,
                                             init_hyperparams)
from optimizers.contract.registry import declare_optimizer, declare_state
from schedules import ScalarOrSchedule


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
        _descend())


def _descend() -> optax.GradientTransformation:
    """:math:`-u` (the step :math:`u` already holds the learning rate); non-float leaves pass through."""
    return transformation("dadapt_adamw", lambda params: optax.EmptyState(),
                          lambda updates, state, params=None: (jax.tree.map(jnp.negative, updates), state))


@declare_state(elementwise=False)
class ScaleByDadaptSgdState(NamedTuple):
    count: jax.Array  # int32 scalar: updates seen (the schedules' step)
    hyperparams: dict  # {"learning_rate", "weight_decay", "d"}: "d" is the estimate after the latest update
    k: jax.Array  # int32 scalar: steps taken (dadaptation's k: a skipped step does not count)
    numerator: jax.Array  # the weighted sum of d_t gamma_t / ||g_0|| <g_t, s_{t-1}>
    g0_norm: jax.Array  # ||g_0||, the first gradient's norm (before the L2 term, as dadaptation takes it)
    x0: optax.Params  # x_0
    s: optax.Updates  # s_t, the sum of the step-size-scaled gradients


def scale_by_dadapt_sgd(momentum: float = 0.0, weight_decay: ScalarOrSchedule = 0.0, d0: float = 1e-6,
                        growth_rate: float = math.inf, *, learning_rate: ScalarOrSchedule = 1.0
                        ) -> optax.GradientTransformation:
    r"""D-Adapted SGD's step, with the step size :math:`d_t` it estimates (``dadaptation.DAdaptSGD``).

    With :math:`\gamma_t` the learning rate (a multiplier, 1 by default), :math:`\beta` = ``momentum``,
    :math:`\lambda` the L2 weight decay, :math:`\tilde g_t = g_t + \lambda x_t` and
    :math:`\delta_t = d_t \gamma_t / \|g_0\|` (:math:`g_0` the first raw gradient); sums run over
    the whole model:

    .. math::
        r_t = r_{t-1} + \delta_t \langle \tilde g_t, s_{t-1} \rangle, \quad
        s_t = s_{t-1} + \delta_t \tilde g_t, \quad
        \hat d_t = \frac{2 r_t}{\|s_t\|_2}, \quad
        d_{t+1} = \max(d_t, \min(\hat d_t, \omega d_t)),

        z_{t+1} = x_0 - s_t, \quad x_{t+1} = \beta x_t + (1-\beta) z_{t+1}, \quad
        u_t = x_t - x_{t+1} = (1-\beta)(x_t - x_0 + s_t)

    (:math:`\omega` = ``growth_rate``). :math:`u_t` already holds the learning rate, so the alias
    applies :math:`x_{t+1} = x_t - u_t`. A step with :math:`\gamma_t = 0`, :math:`\|g_0\| = 0` or
    :math:`\|s_t\| = 0` is skipped (zero update, state unchanged but ``count``): dadaptation
    returns early on :math:`\|s_t\| = 0` and fails on the other two.

    The estimate is ``optimizers.get_hyperparams(state)["d"]``; the inner product and the norms
    are sums over every leaf (plain ``jnp`` reductions: global under sharded ``jit``).

    .. warning::
        optax has no D-Adapted SGD. Like ``DAdaptSGD``, :math:`\|g_0\|` is the raw first gradient's
        norm (dadaptation's first-step decay there is not in place), and the decay is L2 (it
        enters :math:`s_t` and the estimate), not decoupled.

    Args:
        momentum: :math:`\beta \in [0, 1)`.
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        d0: :math:`d_0 > 0`.
        growth_rate: :math:`\omega \ge 1`, the most :math:`d` may grow per step.
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.

    References:
        Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
        Algorithm 1 (dual averaging) with momentum as implemented in PyPI ``dadaptation`` 3.2
        (``DAdaptSGD``).
    """
    owner = "scale_by_dadapt_sgd"
    _check_sgd(owner, learning_rate, momentum, weight_decay, d0, growth_rate)
    beta = momentum
    values = given(learning_rate=learning_rate, weight_decay=weight_decay)

    def init_fn(params):
        reject_complex("dadapt_sgd", params, "its estimate compares signed dot products of the real parameters")
        dt = float_dtype()
        hp = {**init_hyperparams(**values), "d": jnp.asarray(d0, dt)}
        return ScaleByDadaptSgdState(jnp.zeros([], jnp.int32), hp, jnp.zeros([], jnp.int32), jnp.zeros([], dt),
                                     jnp.zeros([], dt), jax.tree.map(jnp.array, params),
                                     jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        lr, wd, d = hp["learning_rate"], hp["weight_decay"], state.hyperparams["d"]
        dt = d.dtype
        zero = jnp.zeros([], dt)
        x = jax.tree.map(widen, params)
        g = jax.tree.map(widen, updates)
        raw_sq = sum((jnp.sum(gi * gi) for gi in jax.tree.leaves(g)), zero).astype(dt)
        # dadaptation takes ||g_0|| at k = 0; here a zero g0_norm marks it (0 until a step is taken, > 0 after)
        g0_norm = jnp.where(state.g0_norm == 0, jnp.sqrt(raw_sq), state.g0_norm)
        g = jax.tree.map(lambda gi, xi: gi + wd * xi, g, x)
        dlr = d * lr / g0_norm
        dot = sum((jnp.sum(gi * widen(si)) for gi, si in zip(jax.tree.leaves(g), jax.tree.leaves(state.s))),
                  zero).astype(dt)
        numerator = state.numerator + dlr * dot
        s = jax.tree.map(lambda si, gi: widen(si) + dlr * gi, state.s, g)
        sk_sq = sum((jnp.sum(si * si) for si in jax.tree.leaves(s)), zero).astype(dt)
        d_hat = 2 * numerator / jnp.sqrt(sk_sq)
        d_new = jnp.maximum(d, jnp.minimum(d_hat, d * growth_rate))
        skip = (lr == 0) | (g0_norm == 0) | ~(sk_sq > 0)
        out = jax.tree.map(
            lambda gi, xi, x0i, si: store(jnp.where(skip, 0, (1 - beta) * (xi - (widen(x0i) - si))), gi.dtype),
            updates, x, state.x0, s)
        new_state = ScaleByDadaptSgdState(
            optax.safe_increment(state.count), {**hp, "d": jnp.where(skip, d, d_new)},
            jnp.where(skip, state.k, optax.safe_increment(state.k)), jnp.where(skip, state.numerator, numerator),
            jnp.where(skip, state.g0_norm, g0_norm), state.x0,
            jax.tree.map(lambda a, b: jnp.where(skip, b, store(a, b.dtype)), s, state.s))
        return out, new_state

    return transformation(owner, init_fn, update_fn)


def _check_sgd(owner, learning_rate, momentum, weight_decay, d0, growth_rate):
    check_learning_rate(owner, learning_rate)
    check_range(owner, "momentum", momentum, 0.0, 1.0, high_open=True)
    check_range(owner, "weight_decay", weight_decay, 0.0)
    check_range(owner, "d0", d0, 0.0, low_open=True)
    check_range(owner, "growth_rate", growth_rate, 1.0)


@declare_optimizer(paper="Defazio & Mishchenko 2023",
                   update="`s+=dγg/‖g₀‖; d̂=2Σ⟨g,s⟩dγ/‖g₀‖/‖s‖; d=max(d,d̂); θ=βθ+(1-β)(θ₀-s)`",
                   test_kwargs=dict(learning_rate=0.03, momentum=0.9, d0=1e-2))  # Rosenbrock: 1.0 diverges
def dadapt_sgd(learning_rate: ScalarOrSchedule = 1.0, momentum: float = 0.0, weight_decay: ScalarOrSchedule = 0.0,
               d0: float = 1e-6, growth_rate: float = math.inf) -> optax.GradientTransformation:
    r"""D-Adaptation SGD: :math:`x_{t+1} = x_t - u_t` with :func:`scale_by_dadapt_sgd`'s :math:`u_t`.

    ``dadaptation.DAdaptSGD``'s keywords (``lr`` spelled ``learning_rate``), order and defaults
    (:math:`d_0 = 10^{-6}`, no momentum, no decay, unbounded growth). ``learning_rate`` is a
    multiplier of the estimate (leave it at 1, or give a schedule with 1 as its peak).

    .. warning::
        optax has no D-Adapted SGD; ``weight_decay`` is L2 (added to the gradient), as in
        ``DAdaptSGD``. A zero learning rate skips the step (``DAdaptSGD`` fails there).

    References:
        Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023; PyPI
        ``dadaptation`` 3.2.
    """
    _check_sgd("dadapt_sgd", learning_rate, momentum, weight_decay, d0, growth_rate)
    return optax.chain(scale_by_dadapt_sgd(momentum, weight_decay, d0, growth_rate, learning_rate=learning_rate),
                       _descend())


@declare_state(nonnegative=("alphak",), elementwise=False)
class ScaleByDadaptAdagradState(NamedTuple):
    count: jax.Array  # int32 scalar: updates seen (the schedules' step)
    hyperparams: dict  # {"learning_rate", "weight_decay", "d"}: "d" is the estimate after the latest update
    k: jax.Array  # int32 scalar: steps taken (dadaptation's k: a step with ||s||_1 = 0 is skipped)
    gsq_weighted: jax.Array  # the sum of (d_t gamma_t)^2 sum g_t^2 / (sqrt(alpha_t) + eps)
    alphak: optax.Updates  # alpha_t = 1e-6 + the sum of g^2
    sk: optax.Updates  # s_t, the sum of the step-size-scaled gradients
    x0: optax.Params  # x_0


def scale_by_dadapt_adagrad(momentum: float = 0.0, log_every: int = 0, weight_decay: ScalarOrSchedule = 0.0,
                            eps: float = 1e-6, d0: float = 1e-6, growth_rate: float = math.inf, *,
                            learning_rate: ScalarOrSchedule = 1.0) -> optax.GradientTransformation:
    r"""D-Adapted AdaGrad's step, with the step size :math:`d_t` it estimates (``dadaptation.DAdaptAdaGrad``).

    With :math:`\gamma_t` the learning rate (a multiplier, 1 by default), :math:`\beta` = ``momentum``,
    :math:`\lambda` the L2 weight decay, :math:`\tilde g_t = g_t + \lambda x_t`,
    :math:`\delta_t = d_t \gamma_t` and :math:`\alpha_0 = 10^{-6}` (every entry); sums run over the
    whole model:

    .. math::
        \alpha_t = \alpha_{t-1} + \tilde g_t^2, \quad
        s_t = s_{t-1} + \delta_t \tilde g_t, \quad
        G_t = G_{t-1} + \delta_t^2 \sum \frac{\tilde g_t^2}{\sqrt{\alpha_t} + \epsilon},

        \hat d_t = \frac{\sum s_t^2 / (\sqrt{\alpha_t} + \epsilon) - G_t}{\|s_t\|_1}, \quad
        d_{t+1} = \max(d_t, \min(\hat d_t, \omega d_t)),

        z_{t+1} = x_0 - \frac{s_t}{\sqrt{\alpha_t} + \epsilon}, \quad
        x_{t+1} = \beta x_t + (1-\beta) z_{t+1}, \quad
        u_t = x_t - x_{t+1} = (1-\beta)(x_t - z_{t+1})

    (:math:`\omega` = ``growth_rate``). :math:`u_t` already holds the learning rate, so the alias
    applies :math:`x_{t+1} = x_t - u_t`. A step whose :math:`\|s_t\|_1` is zero (only zero
    gradients, or a zero learning rate, so far) is skipped as dadaptation skips it: zero update,
    :math:`G`, :math:`d` and :math:`k` unchanged (:math:`\alpha` and :math:`s` take their
    update, as there). A zero :math:`\gamma_t` later on leaves :math:`d` as it is
    (dadaptation's ``if lr > 0``) but still moves :math:`x` to the new :math:`z`.

    The estimate is ``optimizers.get_hyperparams(state)["d"]``; the sums are plain ``jnp``
    reductions over every leaf (global under sharded ``jit``).

    .. warning::
        optax has no D-Adapted AdaGrad. As in ``DAdaptAdaGrad`` the decay is L2 (it enters
        :math:`\alpha`, :math:`s` and the estimate), :math:`\alpha` starts at :math:`10^{-6}` (not
        ``eps``), and ``eps`` is added outside the root. ``DAdaptAdaGrad``'s sparse-gradient path
        (``eps`` inside the root, no decay, no momentum) has no counterpart: JAX gradients are
        dense. ``log_every > 0`` logs ``d_hat`` and ``d`` through ``logging`` (a host callback)
        every ``log_every`` steps, as there. ``momentum`` must be below 1 here (dadaptation
        accepts any non-negative value; 1 or more would never move or extrapolate).

    Args:
        momentum: :math:`\beta \in [0, 1)`.
        log_every: log every this many steps (0: never).
        weight_decay: :math:`\lambda \ge 0`, a number or a schedule.
        eps: :math:`\epsilon > 0`.
        d0: :math:`d_0 > 0`.
        growth_rate: :math:`\omega \ge 1`, the most :math:`d` may grow per step.
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.

    References:
        Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
        Algorithm 3 (AdaGrad) as implemented in PyPI ``dadaptation`` 3.2 (``DAdaptAdaGrad``).
    """
    owner = "scale_by_dadapt_adagrad"
    _check_adagrad(owner, learning_rate, momentum, log_every, weight_decay, eps, d0, growth_rate)
    beta = momentum
    period = _log_period(owner, log_every)
    values = given(learning_rate=learning_rate, weight_decay=weight_decay)

    def init_fn(params):
        reject_complex("dadapt_adagrad", params, "its estimate compares signed dot products of the real parameters")
        dt = float_dtype()
        hp = {**init_hyperparams(**values), "d": jnp.asarray(d0, dt)}
        return ScaleByDadaptAdagradState(jnp.zeros([], jnp.int32), hp, jnp.zeros([], jnp.int32), jnp.zeros([], dt),
                                         jax.tree.map(lambda p: jnp.full_like(p, 1e-6), params),
                                         jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.array, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        lr, wd, d = hp["learning_rate"], hp["weight_decay"], state.hyperparams["d"]
        dt = d.dtype
        zero = jnp.zeros([], dt)
        total = lambda tree: sum(jax.tree.leaves(tree), zero).astype(dt)  # noqa: E731
        dlr = d * lr
        x = jax.tree.map(widen, params)
        g = jax.tree.map(lambda gi, xi: widen(gi) + wd * xi, updates, x)
        alpha = jax.tree.map(lambda ai, gi: widen(ai) + gi * gi, state.alphak, g)
        den = jax.tree.map(lambda ai: jnp.sqrt(ai) + eps, alpha)
        s = jax.tree.map(lambda si, gi: widen(si) + dlr * gi, state.sk, g)
        g_sq = total(jax.tree.map(lambda gi, di: jnp.sum(gi * gi / di), g, den))
        sksq = total(jax.tree.map(lambda si, di: jnp.sum(si * si / di), s, den))
        l1 = total(jax.tree.map(lambda si: jnp.sum(jnp.abs(si)), s))
        gsq_weighted = state.gsq_weighted + dlr * dlr * g_sq
        d_hat = (sksq - gsq_weighted) / l1
        d_new = jnp.where(lr > 0, jnp.maximum(d, jnp.minimum(d_hat, d * growth_rate)), d)
        skip = ~(l1 > 0)
        if period is None or period > 0:  # traced: the callback reads it
            jax.debug.callback(_log_adagrad, state.k, skip, log_every, d_hat, d_new, sksq, l1, gsq_weighted, lr)
        out = jax.tree.map(
            lambda ui, xi, x0i, si, di: store(jnp.where(skip, 0, (1 - beta) * (xi - (widen(x0i) - si / di))), ui.dtype),
            updates, x, state.x0, s, den)
        new_state = ScaleByDadaptAdagradState(
            optax.safe_increment(state.count), {**hp, "d": jnp.where(skip, d, d_new)},
            jnp.where(skip, state.k, optax.safe_increment(state.k)),
            jnp.where(skip, state.gsq_weighted, gsq_weighted),
            jax.tree.map(lambda a, b: store(a, b.dtype), alpha, state.alphak),
            jax.tree.map(lambda a, b: store(a, b.dtype), s, state.sk), state.x0)
        return out, new_state

    return transformation(owner, init_fn, update_fn)


def _log_adagrad(k, skip, every, d_hat, d, sksq, l1, gsq, lr):
    """dadaptation's log line, every ``every`` steps taken."""
    import logging

    if not bool(skip) and int(every) > 0 and int(k) % int(every) == 0:
        logging.info(f"d_hat: {float(d_hat)}, d: {float(d)}. sksq_weighted={float(sksq):1.1e} skl1={float(l1):1.1e} "
                     f"gsq_weighted={float(gsq):1.1e} lr={float(lr)}")


def _log_period(owner, log_every):
    """``log_every`` as an int, or ``None`` when it is traced (``inject_hyperparams`` in a jitted step)."""
    integer = isinstance(log_every, int) or (isinstance(log_every, jax.Array) and
                                             jnp.issubdtype(log_every.dtype, jnp.integer) and log_every.ndim == 0)
    if isinstance(log_every, bool) or not integer:
        raise ValueError(f"{owner}: log_every must be a non-negative int, got {log_every!r}")
    try:
        period = int(log_every)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None
    if period < 0:
        raise ValueError(f"{owner}: log_every must be a non-negative int, got {log_every!r}")
    return period


def _check_adagrad(owner, learning_rate, momentum, log_every, weight_decay, eps, d0, growth_rate):
    check_learning_rate(owner, learning_rate)
    check_range(owner, "momentum", momentum, 0.0, 1.0, high_open=True)
    _log_period(owner, log_every)
    check_range(owner, "weight_decay", weight_decay, 0.0)
    check_range(owner, "eps", eps, 0.0, low_open=True)
    check_range(owner, "d0", d0, 0.0, low_open=True)
    check_range(owner, "growth_rate", growth_rate, 1.0)


@declare_optimizer(paper="Defazio & Mishchenko 2023",
                   update="`α+=g²; s+=dγg; d̂=(Σs²/(√α+ε)-Σ(dγ)²g²/(√α+ε))/‖s‖₁; θ=βθ+(1-β)(θ₀-s/(√α+ε))`",
                   test_kwargs=dict(learning_rate=1.0, d0=1e-2))
def dadapt_adagrad(learning_rate: ScalarOrSchedule = 1.0, momentum: float = 0.0, log_every: int = 0,
                   weight_decay: ScalarOrSchedule = 0.0, eps: float = 1e-6, d0: float = 1e-6,
                   growth_rate: float = math.inf) -> optax.GradientTransformation:
    r"""D-Adaptation AdaGrad: :math:`x_{t+1} = x_t - u_t` with :func:`scale_by_dadapt_adagrad`'s :math:`u_t`.

    ``dadaptation.DAdaptAdaGrad``'s keywords (``lr`` spelled ``learning_rate``), order and defaults
    (:math:`d_0 = 10^{-6}`, ``eps=1e-6``, no momentum, no decay, unbounded growth).
    ``learning_rate`` is a multiplier of the estimate (leave it at 1, or give a schedule with 1 as
    its peak).

    .. warning::
        optax has no D-Adapted AdaGrad; ``weight_decay`` is L2 (added to the gradient), as in
        ``DAdaptAdaGrad``; its sparse-gradient path has no counterpart (see
        :func:`scale_by_dadapt_adagrad`).

    References:
        Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023; PyPI
        ``dadaptation`` 3.2.
    """
    _check_adagrad("dadapt_adagrad", learning_rate, momentum, log_every, weight_decay, eps, d0, growth_rate)
    return optax.chain(scale_by_dadapt_adagrad(momentum, log_every, weight_decay, eps, d0, growth_rate,
                                               learning_rate=learning_rate),
                       _descend())
