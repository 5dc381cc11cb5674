"""D-Adaptation AdaGrad: AdaGrad with a step size estimated as it goes (Defazio & Mishchenko 2023)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import reject_complex, store, widen
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, float_dtype, given,
                                             init_hyperparams)
from optimizers.contract.registry import declare_optimizer, declare_state
from schedules import ScalarOrSchedule

from optimizers.rules.scaling import negated


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
                       negated("dadapt_adagrad"))
