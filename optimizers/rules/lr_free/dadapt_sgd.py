"""D-Adaptation SGD: SGD with a step size estimated as it goes (Defazio & Mishchenko 2023)."""

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
                       negated("dadapt_sgd"))
