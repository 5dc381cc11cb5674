"""Optimistic gradients: the step extrapolated by the last direction (OGD, Optimistic Adam)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import check_learning_rate, check_range, current_hyperparams, init_hyperparams
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import scale_by_adam
from optimizers.rules.scaling import negated, scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(elementwise=True)
class ScaleByOptimisticGradientState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far (0: no previous direction yet)
    hyperparams: dict  # {"alpha": ..., "beta": ...}
    previous_gradient: optax.Updates  # d_{t-1}, the last incoming direction


def scale_by_optimistic_gradient(alpha: ScalarOrSchedule = 1.0, beta: ScalarOrSchedule = 1.0, *,
                                 mu_dtype=None) -> optax.GradientTransformation:
    r"""The generalised optimistic direction: the incoming one extrapolated by its change.

    .. math::
        u_t = (\alpha_t + \beta_t)\, d_t - \beta_t\, d_{t-1}, \qquad d_0 := d_1,

    so the first update is :math:`\alpha_1 d_1` (no previous direction: optax's choice, its
    issue 1082). With :math:`\alpha = \beta = 1` and :math:`d = g` this is optimistic gradient
    descent, :math:`\theta_{t} = \theta_{t-1} - \eta(2 g_t - g_{t-1})`; after Adam's direction
    :math:`r_t = \hat m_t/(\sqrt{\hat v_t}+\epsilon)` it is Optimistic Adam.

    Args:
        alpha: :math:`\alpha_t \ge 0`, the weight of the current direction.
        beta: :math:`\beta_t \ge 0`, the weight of its change (negative momentum).
        mu_dtype: the dtype of the kept :math:`d_{t-1}`, or ``None`` (the params').

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with Optimism", ICLR 2018, Eq. (3);
        Mokhtari, Ozdaglar & Pattathil, "A Unified Analysis of Extra-gradient and Optimistic
        Gradient Methods for Saddle Point Problems", AISTATS 2020 (the :math:`\alpha, \beta` form).
    """
    return _optimistic("scale_by_optimistic_gradient", dict(alpha=alpha, beta=beta), mu_dtype)


def _optimistic(owner, weights: dict, mu_dtype):
    """:func:`scale_by_optimistic_gradient` whose two weights (current, change) have the names of ``weights``
    (optimistic_adam keeps them as its ``learning_rate`` and ``optimism``)."""
    (a_name, alpha), (b_name, beta) = weights.items()
    check_range(owner, a_name, alpha, 0.0)
    check_range(owner, b_name, beta, 0.0)
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    values = dict(weights)

    def init_fn(params):
        return ScaleByOptimisticGradientState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                              zeros_in(params, mu_dtype))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        first = state.count == 0

        def step(d, prev):
            d, prev = widen(d), widen(prev)
            prev = jnp.where(first, d, prev)
            return (hp[a_name] + hp[b_name]) * d - hp[b_name] * prev

        out = jax.tree.map(lambda d, p: store(step(d, p), d.dtype), updates, state.previous_gradient)
        prev = store_like(updates, state.previous_gradient)
        return out, ScaleByOptimisticGradientState(optax.safe_increment(state.count), hp, prev)

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Daskalakis et al. 2018", update="`θ-=γ((α+β)gₜ-βgₜ₋₁)`",
                   test_kwargs=dict(learning_rate=1.5e-3, beta=0.1))
def optimistic_gradient_descent(learning_rate: ScalarOrSchedule, alpha: ScalarOrSchedule = 1.0,
                                beta: ScalarOrSchedule = 1.0) -> optax.GradientTransformation:
    r"""Optimistic gradient descent: :math:`\theta_t = \theta_{t-1} - \eta_t u_t` with
    :func:`scale_by_optimistic_gradient`'s :math:`u_t` of the gradient (``optax.optimistic_gradient_descent``).

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with Optimism", ICLR 2018, Eq. (3);
        Mokhtari, Ozdaglar & Pattathil, AISTATS 2020 (the :math:`\alpha, \beta` form).
    """
    return optax.chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))


@declare_optimizer(paper="Daskalakis et al. 2018", update="`r=m̂/(√v̂+ε); θ-=γ r+o(r-rₜ₋₁)`",
                   test_kwargs=dict(learning_rate=0.01))
def optimistic_adam(learning_rate: ScalarOrSchedule, optimism: Optional[ScalarOrSchedule] = None,
                    b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
                    eps_root: Optional[ScalarOrSchedule] = None, mu_dtype=None, *,
                    nesterov: bool = False, nu_dtype=None) -> optax.GradientTransformation:
    r"""Optimistic Adam: Adam's direction :math:`r_t` extrapolated by its change.

    .. math::
        r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon}, \qquad
        \theta_t = \theta_{t-1} - \gamma_t r_t - o_t (r_t - r_{t-1}), \quad r_0 := r_1,

    (:func:`scale_by_adam`, then :func:`scale_by_optimistic_gradient` with
    :math:`\alpha = \gamma`, :math:`\beta = o`, kept in the state as ``learning_rate`` and
    ``optimism``, then the sign flipped), :math:`o` = ``optimism`` (``None``: the learning
    rate, the paper's :math:`\theta_t = \theta_{t-1} - 2\gamma r_t + \gamma r_{t-1}`). Unlike
    optax's, the learning rate and ``optimism`` may be schedules.

    .. warning::
        ``optax.optimistic_adam`` defaults to ``nesterov=True`` (Adam's Nesterov direction, not
        the paper's Algorithm 1); ours to ``nesterov=False``. ``nesterov=True`` gives optax's.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`.
        optimism: :math:`o_t \ge 0`, or ``None`` for the learning rate.
        b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype: :func:`scale_by_adam`'s (``mu_dtype``
            also keeps :math:`r_{t-1}`).

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with Optimism", ICLR 2018,
        Algorithm 1.
    """
    check_learning_rate("optimistic_adam", learning_rate)
    weights = dict(learning_rate=learning_rate, optimism=learning_rate if optimism is None else optimism)
    return optax.chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
                       _optimistic("optimistic_adam", weights, mu_dtype),
                       negated("optimistic_adam"))



@declare_optimizer(paper="Daskalakis et al. 2018", update="`r=m̂/(√v̂+ε); θ-=γ((α+β)r-βrₜ₋₁)`",
                   test_kwargs=dict(learning_rate=0.01))
def optimistic_adam_v2(learning_rate: ScalarOrSchedule, *, alpha: ScalarOrSchedule = 1.0,
                       beta: ScalarOrSchedule = 1.0, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
                       eps: ScalarOrSchedule = 1e-8, eps_root: Optional[ScalarOrSchedule] = None, mu_dtype=None,
                       nesterov: bool = False, nu_dtype=None) -> optax.GradientTransformation:
    r"""Optimistic Adam, optax's second interface:
    :math:`\theta_t = \theta_{t-1} - \gamma_t((\alpha+\beta) r_t - \beta r_{t-1})`.

    :math:`r_t` is :func:`scale_by_adam`'s direction (``b1``, ``b2``, ``eps``, ``eps_root``,
    ``nesterov``, ``mu_dtype``, ``nu_dtype`` are its) and :math:`r_0 := r_1`; with
    :math:`\alpha = \beta = 1` it is the paper's :math:`-2\gamma r_t + \gamma r_{t-1}`
    (:func:`optimistic_adam` with ``optimism=None``).

    .. warning::
        ``optax.optimistic_adam_v2`` defaults to ``nesterov=True``; ours to ``nesterov=False``
        (the paper's Algorithm 1). ``nesterov=True`` gives optax's.

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with Optimism", ICLR 2018,
        Algorithm 1.
    """
    return optax.chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
                       scale_by_optimistic_gradient(alpha, beta, mu_dtype=mu_dtype),
                       scale_by_learning_rate(learning_rate))
