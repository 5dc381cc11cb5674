"""AdEMAMix: Adam's direction plus a slow EMA of the gradients; and its simplified one-EMA form."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, given, init_hyperparams
from optimizers.contract.moments import bias_correction, check_betas, check_eps_root, ema, step_number
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


def alpha_scheduler(alpha: float, warmup: int):
    r"""The paper's warm-up of :math:`\alpha`: :math:`\alpha_t = \min(t\alpha/T_\alpha, \alpha)`.

    A schedule of the 0-based count (``t`` = count + 1, the paper's and ``pytorch_optimizer``'s
    1-based step), for the ``alpha`` of :func:`ademamix` (and of ``optax.contrib.ademamix``).

    Args:
        alpha: the final :math:`\alpha \ge 0`.
        warmup: :math:`T_\alpha > 0` steps.

    References:
        Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025, Eq. (3).
    """
    check_range("alpha_scheduler", "alpha", alpha, 0.0)
    check_range("alpha_scheduler", "warmup", warmup, 0.0, low_open=True)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32) + 1
        return jnp.minimum(t * alpha / warmup, alpha)

    return schedule


def beta3_scheduler(b3: float, b_start: float, warmup: int):
    r"""The paper's warm-up of :math:`\beta_3`, linear in the half-life:

    .. math::
        \beta_{3,t} = \min\Big(\exp\Big(\frac{\ln\beta_{start} \ln\beta_3}
        {(1-t/T)\ln\beta_3 + (t/T)\ln\beta_{start}}\Big), \beta_3\Big)

    A schedule of the 0-based count (``t`` = count + 1), for the ``b3`` of :func:`ademamix`; the
    paper starts at :math:`\beta_{start} = \beta_1`.

    Args:
        b3: the final :math:`\beta_3 \in (0, 1)`.
        b_start: :math:`\beta_{start} \in (0, 1)`.
        warmup: :math:`T_{\beta_3} > 0` steps.

    References:
        Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025, Eq. (3).
    """
    check_range("beta3_scheduler", "b3", b3, 0.0, 1.0, low_open=True, high_open=True)
    check_range("beta3_scheduler", "b_start", b_start, 0.0, 1.0, low_open=True, high_open=True)
    check_range("beta3_scheduler", "warmup", warmup, 0.0, low_open=True)
    log_start, log_end = math.log(b_start), math.log(b3)

    def schedule(count):
        frac = (jnp.asarray(count, jnp.float32) + 1) / warmup
        return jnp.minimum(jnp.exp(log_start * log_end / ((1 - frac) * log_end + frac * log_start)), b3)

    return schedule


@declare_state(nonnegative=("nu",), elementwise=True)
class ScaleByAdemamixState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1", "b2", "b3", "alpha", "eps"} (and "eps_root" when given)
    m1: optax.Updates  # the fast EMA
    m2: optax.Updates  # the slow EMA
    nu: optax.Updates  # the second moment (real, non-negative)


def scale_by_ademamix(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, b3: ScalarOrSchedule = 0.9999,
                      alpha: ScalarOrSchedule = 6.0, eps: ScalarOrSchedule = 1e-8,
                      eps_root: Optional[ScalarOrSchedule] = None, mu_dtype=None) -> optax.GradientTransformation:
    r"""AdEMAMix's direction: the bias-corrected fast EMA plus :math:`\alpha` times the slow one.

    .. math::
        m_{1,t} = \beta_1 m_{1,t-1} + (1-\beta_1) g_t, \quad
        m_{2,t} = \beta_{3,t} m_{2,t-1} + (1-\beta_{3,t}) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

    .. math::
        u_t = \frac{m_{1,t}/(1-\beta_1^t) + \alpha_t m_{2,t}}{\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    (the slow EMA is not bias-corrected). :math:`\alpha_t` and :math:`\beta_{3,t}` are numbers or
    schedules of the 0-based count; :func:`alpha_scheduler` and :func:`beta3_scheduler` are the
    paper's warm-ups. ``eps_root=None`` (optax's default ``0.0``) adds nothing. Complex params:
    :math:`g_t^2` is :math:`|g_t|^2`.

    .. warning::
        ``optax.contrib.scale_by_ademamix`` computes the same; its ``eps_root`` defaults to ``0.0``.
        ``pytorch_optimizer.AdEMAMix(t_alpha_beta3=T)`` warms up at the 1-based step: here
        ``alpha=alpha_scheduler(alpha, T), b3=beta3_scheduler(b3, b1, T)``, which give it.

    Args:
        b1: :math:`\beta_1 \in [0, 1)` of the fast EMA.
        b2: :math:`\beta_2 \in [0, 1)` of the second moment.
        b3: :math:`\beta_3 \in [0, 1)` of the slow EMA, or a schedule of it.
        alpha: :math:`\alpha \ge 0`, the weight of the slow EMA, or a schedule of it.
        eps: :math:`\epsilon > 0`.
        eps_root: :math:`\epsilon_{root} \ge 0` inside the root, or ``None``.
        mu_dtype: the dtype of the three buffers, or ``None`` (the params'), as optax's.

    References:
        Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025,
        Algorithm 1.
    """
    check_betas("scale_by_ademamix", b1, b2, eps)
    check_range("scale_by_ademamix", "b3", b3, 0.0, 1.0, high_open=True)
    check_range("scale_by_ademamix", "alpha", alpha, 0.0)
    check_eps_root("scale_by_ademamix", eps_root)
    check_state_dtype("scale_by_ademamix", "mu_dtype", mu_dtype)
    values = given(b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, eps_root=eps_root)

    def init_fn(params):
        return ScaleByAdemamixState(jnp.zeros([], jnp.int32), init_hyperparams(**values), zeros_in(params, mu_dtype),
                                    zeros_in(params, mu_dtype), zeros_in(params, mu_dtype, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t = step_number(state.count, hp["b1"].dtype)
        m1, m2, v = ema(updates, state.m1, hp["b1"]), ema(updates, state.m2, hp["b3"]), ema(updates, state.nu, hp["b2"], 2)
        c1, c2 = bias_correction(hp["b1"], t), bias_correction(hp["b2"], t)
        root = hp.get("eps_root", 0.0)
        out = jax.tree.map(lambda g, a, b, s: store((a / c1 + hp["alpha"] * b) / (jnp.sqrt(s / c2 + root) + hp["eps"]),
                                                    g.dtype), updates, m1, m2, v)
        buffers = store_like(m1, state.m1), store_like(m2, state.m2), store_like(v, state.nu)
        return out, ScaleByAdemamixState(optax.safe_increment(state.count), hp, *buffers)

    return transformation("scale_by_ademamix", init_fn, update_fn)


@declare_optimizer(paper="Pagliardini et al. 2024",
                   update="`m₁,v` Adam's, `m₂=β₃m₂+(1-β₃)g`; `θ-=γ((m̂₁+αm₂)/(√v̂+ε)+λθ)`",
                   test_kwargs=dict(learning_rate=0.01, b3=0.99, alpha=2.0))
def ademamix(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
             b3: ScalarOrSchedule = 0.9999, alpha: ScalarOrSchedule = 5.0, eps: ScalarOrSchedule = 1e-8,
             eps_root: Optional[ScalarOrSchedule] = None, mu_dtype=None, weight_decay: ScalarOrSchedule = 0.0,
             mask=None) -> optax.GradientTransformation:
    r"""AdEMAMix: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda_t \theta_{t-1})` (:func:`scale_by_ademamix`).

    The paper's warm-ups: ``alpha=alpha_scheduler(alpha, T), b3=beta3_scheduler(b3, b1, T)``.
    ``eps_root``, ``mu_dtype``: see :func:`scale_by_ademamix`; ``weight_decay`` (decoupled, times
    the learning rate, as the paper) and ``mask`` as :func:`add_decayed_weights`. No fused kernel:
    ``ademamix`` runs its chain on every backend (no kernel of the fused backend keeps two
    first moments).

    .. warning::
        ``optax.contrib.ademamix`` computes the same (``eps_root`` default ``0.0``);
        ``pytorch_optimizer.AdEMAMix``'s ``weight_decay`` is an L2 term by default
        (``weight_decouple=False``): ``weight_decouple=True`` is this one.

    References:
        Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025,
        Algorithm 1.
    """
    return optax.chain(scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
                       add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))


@declare_state(nonnegative=("nu",), elementwise=True)
class ScaleBySimplifiedAdemamixState(NamedTuple):  # optax.contrib's ScaleBySimplifiedAdEMAMixState
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1", "b2", "alpha", "eps"} (and "eps_root" when given)
    mu: optax.Updates  # m_t, an undamped EMA (sum of β1-discounted gradients)
    nu: optax.Updates  # v_t (real, non-negative)


def scale_by_simplified_ademamix(b1: ScalarOrSchedule = 0.99, b2: ScalarOrSchedule = 0.95,
                                 alpha: ScalarOrSchedule = 0.0, eps: ScalarOrSchedule = 1e-8,
                                 eps_root: Optional[ScalarOrSchedule] = None) -> optax.GradientTransformation:
    r"""Simplified AdEMAMix's direction: one undamped momentum plus :math:`\alpha` times the gradient.

    .. math::
        m_t = \beta_1 m_{t-1} + g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u_t = \frac{\alpha_t g_t + m_t}{\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    ``alpha=0`` is Adam with :math:`\beta_1`'s EMA undamped (a learning rate :math:`1/(1-\beta_1)`
    times larger, no first-moment bias correction). ``eps_root=None`` adds nothing.

    .. warning::
        ``optax.contrib.scale_by_simplified_ademamix`` computes the same (``eps_root`` default
        ``0.0``). ``pytorch_optimizer.SimplifiedAdEMAMix`` (4.1.0) does not: its momentum is the
        damped EMA :math:`\beta_1 m + (1-\beta_1) g` and it divides by :math:`\sqrt{1-\beta_2^t}`
        where this (and optax) multiplies.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        alpha: :math:`\alpha \ge 0`, or a schedule of it.
        eps: :math:`\epsilon > 0`.
        eps_root: :math:`\epsilon_{root} \ge 0` inside the root, or ``None``.

    References:
        Morwani, Vyas, Kakade et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
        Accelerated SGD Variants", 2025, Algorithm 2 (simplified AdEMAMix).
    """
    check_betas("scale_by_simplified_ademamix", b1, b2, eps)
    check_range("scale_by_simplified_ademamix", "alpha", alpha, 0.0)
    check_eps_root("scale_by_simplified_ademamix", eps_root)
    values = given(b1=b1, b2=b2, alpha=alpha, eps=eps, eps_root=eps_root)

    def init_fn(params):
        return ScaleBySimplifiedAdemamixState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                              zeros_in(params), zeros_in(params, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t = step_number(state.count, hp["b1"].dtype)
        m = jax.tree.map(lambda g, m: hp["b1"] * widen(m) + widen(g), updates, state.mu)
        v = ema(updates, state.nu, hp["b2"], 2)
        c2 = bias_correction(hp["b2"], t)
        root = hp.get("eps_root", 0.0)
        out = jax.tree.map(lambda g, a, s: store((hp["alpha"] * widen(g) + a) / (jnp.sqrt(s / c2 + root) + hp["eps"]),
                                                 g.dtype), updates, m, v)
        return out, ScaleBySimplifiedAdemamixState(optax.safe_increment(state.count), hp, store_like(m, state.mu),
                                                   store_like(v, state.nu))

    return transformation("scale_by_simplified_ademamix", init_fn, update_fn)


@declare_optimizer(paper="Morwani et al. 2025",
                   update="`m=β₁m+g; v=β₂v+(1-β₂)g²; θ-=γ((αg+m)/(√v̂+ε)+λθ)`",
                   test_kwargs=dict(learning_rate=0.002, b1=0.9, b2=0.99, alpha=1.0))
def simplified_ademamix(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.99, b2: ScalarOrSchedule = 0.95,
                        alpha: ScalarOrSchedule = 0.0, eps: ScalarOrSchedule = 1e-8,
                        eps_root: Optional[ScalarOrSchedule] = None, weight_decay: ScalarOrSchedule = 0.0,
                        mask=None) -> optax.GradientTransformation:
    r"""Simplified AdEMAMix: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda_t \theta_{t-1})`
    (:func:`scale_by_simplified_ademamix`).

    ``weight_decay`` (decoupled, times the learning rate) and ``mask`` as :func:`add_decayed_weights`.
    No fused kernel: it runs its chain on every backend.

    .. warning::
        ``optax.contrib.simplified_ademamix`` computes the same (``eps_root`` default ``0.0``).

    References:
        Morwani, Vyas, Kakade et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
        Accelerated SGD Variants", 2025.
    """
    return optax.chain(scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
                       add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))
