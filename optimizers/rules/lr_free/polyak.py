"""The stochastic Polyak step size: the step that would reach f* on the linearised loss, capped."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.contract.registry import declare_state
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule

_VARIANTS = ("sps", "sps+")


@declare_state(elementwise=False)
class ScaleByPolyakState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"f_min": ..., "max_learning_rate": ..., "eps": ...}


def scale_by_polyak(f_min: ScalarOrSchedule = 0.0, max_learning_rate: ScalarOrSchedule = 1.0,
                    eps: ScalarOrSchedule = 0.0, variant: str = "sps") -> optax.GradientTransformationExtraArgs:
    r"""Scales the whole update by the Polyak step size of the loss value ``value``.

    .. math::
        \gamma_t = \min\Big(\frac{f(x_t) - f^\star}{\|d_t\|^2 + \epsilon}, \gamma_{\max}\Big),
        \qquad u_t = \gamma_t d_t,

    with :math:`\|d_t\|` the norm of the whole incoming update (every leaf), and
    :math:`\gamma_t = 0` where :math:`\|d_t\|^2 + \epsilon` is at most float64's machine epsilon
    (optax's guard: a zero gradient takes no step). ``variant="sps+"`` uses the non-negative
    gap :math:`(f(x_t) - f^\star)_+` (Garrigos et al. 2023). It is an
    ``optax.GradientTransformationExtraArgs``: ``update(updates, state, params, value=loss)``;
    ``optax.chain`` hands ``value=`` to it (and to no transform that does not take it), and
    the norm is then that of the update reaching it (after a clip, say). Leaving out ``value``
    raises ``ValueError``.

    Args:
        f_min: :math:`f^\star`, a lower bound of the loss (0 for models that interpolate).
        max_learning_rate: :math:`\gamma_{\max} > 0`.
        eps: :math:`\epsilon \ge 0` added to :math:`\|d_t\|^2`.
        variant: ``"sps"`` or ``"sps+"``.

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An
        Adaptive Learning Rate for Fast Convergence", AISTATS 2021, Eq. (5) (SPS_max);
        Garrigos, Gower & Schaipp, "Function value learning: Adaptive learning rates based on
        the Polyak stepsize and function splitting in ERM", 2023 (SPS+).
    """
    check_range("scale_by_polyak", "f_min", f_min)
    check_range("scale_by_polyak", "max_learning_rate", max_learning_rate, 0.0, low_open=True)
    check_range("scale_by_polyak", "eps", eps, 0.0)
    if variant not in _VARIANTS:
        raise ValueError(f"scale_by_polyak: variant must be one of {_VARIANTS}, got {variant!r}")
    values = dict(f_min=f_min, max_learning_rate=max_learning_rate, eps=eps)

    def init_fn(params):
        del params
        return ScaleByPolyakState(jnp.zeros([], jnp.int32), init_hyperparams(**values))

    def update_fn(updates, state, params=None, *, value=None, **extra):
        del params, extra
        if value is None:
            raise ValueError("scale_by_polyak: update needs the loss, update(..., value=loss)")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        dtype = hp["eps"].dtype
        sq_norm = sum((jnp.sum(abs2(u)).astype(dtype) for u in jax.tree.leaves(updates)), jnp.zeros([], dtype))
        gap = jnp.asarray(value, dtype) - hp["f_min"]
        if variant == "sps+":
            gap = jnp.maximum(gap, 0.0)
        den = sq_norm + hp["eps"]
        tiny = den <= jnp.finfo(jnp.float64).eps
        step = jnp.where(tiny, 0.0, jnp.minimum(gap / jnp.where(tiny, 1.0, den), hp["max_learning_rate"]))
        out = jax.tree.map(lambda u: (step * u).astype(u.dtype), updates)
        return out, ScaleByPolyakState(optax.safe_increment(state.count), hp)

    return transformation("scale_by_polyak", init_fn, update_fn, extra_args=True)


def polyak_sgd(max_learning_rate: ScalarOrSchedule = 1.0, scaling: ScalarOrSchedule = 1.0,
               f_min: ScalarOrSchedule = 0.0, eps: ScalarOrSchedule = 0.0,
               variant: str = "sps") -> optax.GradientTransformationExtraArgs:
    r"""SGD with the stochastic Polyak step size: ``update(grads, state, params, value=loss)``.

    .. math::
        \theta_t = \theta_{t-1} - s_t \min\Big(\frac{f(\theta_{t-1}) - f^\star}{s_t^2\|g_t\|^2 + \epsilon},
        \gamma_{\max}\Big) g_t

    (:func:`scale_by_learning_rate` of ``scaling`` :math:`s_t`, then :func:`scale_by_polyak`,
    optax's chain). With :math:`s = 1` this is SPS_max of the paper,
    :math:`\min((f - f^\star)/\|g\|^2, \gamma_b)` (:math:`c = 1`); with :math:`s = c` it is
    SPS_max with constant :math:`c` and bound :math:`\gamma_b = c\,\gamma_{\max}`. In a jitted
    loop pass the loss as ``value=`` (a traced scalar is fine). Inside ``optax.chain`` the
    ``value`` keyword reaches this transform; the step is computed from the norm of the update
    that reaches it.

    .. warning::
        optax's ``scaling`` sits before the Polyak step, so it enters the step squared: it is
        the paper's :math:`c` only together with ``max_learning_rate`` :math:`=\gamma_b/c`. Ours
        is optax's chain (the same numbers), not a separate :math:`c`.

    Args:
        max_learning_rate: :math:`\gamma_{\max} > 0`.
        scaling: :math:`s_t > 0`, or a schedule of it.
        f_min: :math:`f^\star`.
        eps: :math:`\epsilon \ge 0`.
        variant: ``"sps"`` or ``"sps+"`` (the non-negative gap).

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An
        Adaptive Learning Rate for Fast Convergence", AISTATS 2021, Eq. (5) (SPS_max).
    """
    check_range("polyak_sgd", "scaling", scaling, 0.0, low_open=True)
    return optax.chain(scale_by_learning_rate(scaling), scale_by_polyak(f_min, max_learning_rate, eps, variant))
