"""An exponential moving average of the updates: optax's ``ema``, and the optional momentum of Adafactor and SM3."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, store, store_like, widen, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.contract.moments import bias_correction, ema as moving_average, step_number
from optimizers.contract.registry import declare_state
from schedules import ScalarOrSchedule


@declare_state(elementwise=True)
class ScaleByEmaState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"decay": beta of the latest update}
    ema: optax.Updates  # m_t, same tree and dtype as params


def scale_by_ema(decay: ScalarOrSchedule = 0.9, accumulator_dtype=None) -> optax.GradientTransformation:
    r"""Replaces the updates by their exponential moving average (momentum without bias correction).

    .. math::
        m_t = \beta_t m_{t-1} + (1 - \beta_t) u_t, \qquad m_0 = 0, \qquad \text{output } m_t

    The first moment that :func:`adafactor` (``b1``) and :func:`sm3` (``momentum``) put after
    their preconditioners, as the Tensor2Tensor Adafactor and ``optax.sm3`` do.

    .. warning::
        ``optax.ema`` bias-corrects by default; this is ``optax.ema(decay, debias=False)``.
        It averages *updates*; the Polyak average of the *weights* is a different tool.

    Args:
        decay: :math:`\beta_t \in [0, 1)`, or a schedule of it.
        accumulator_dtype: the dtype of :math:`m_t` (saturating), or ``None`` (the params'); the
            average is computed in at least float32.
    """
    check_range("scale_by_ema", "decay", decay, 0.0, 1.0, high_open=True)
    check_state_dtype("scale_by_ema", "accumulator_dtype", accumulator_dtype)

    def init_fn(params):
        return ScaleByEmaState(jnp.zeros([], jnp.int32), init_hyperparams(decay=decay),
                               zeros_in(params, accumulator_dtype))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(decay=decay), state.hyperparams, state.count)
        m = moving_average(updates, state.ema, hp["decay"])
        out = jax.tree.map(lambda g, a: store(a, g.dtype), updates, m)
        return out, ScaleByEmaState(optax.safe_increment(state.count), hp, store_like(m, state.ema))

    return transformation("scale_by_ema", init_fn, update_fn)


EmaState = ScaleByEmaState  # optax's name for the state of its ``ema``


def ema(decay: ScalarOrSchedule, debias: bool = True, accumulator_dtype=None) -> optax.GradientTransformation:
    r"""optax's ``ema``: the updates replaced by their exponential moving average, bias-corrected.

    .. math::
        m_t = \beta_t m_{t-1} + (1 - \beta_t) u_t, \qquad m_0 = 0, \qquad
        \text{output } m_t / (1 - \beta_t^{\,t}) \text{ (debias) or } m_t

    Step for step ``optax.ema(decay, debias, accumulator_dtype)`` (the state keeps :math:`m_t`,
    uncorrected). A scheduled :math:`\beta_t` corrects with its current value, as Adam's moments
    here do. It is a momentum transform (put it before a learning rate); the moving average of
    the *weights* is :func:`~optimizers.weight_ema`.

    Args:
        decay: :math:`\beta_t \in [0, 1)`, or a schedule of it.
        debias: divide by :math:`1 - \beta_t^{\,t}` (``True``, optax's default).
        accumulator_dtype: the dtype of :math:`m_t` (saturating), or ``None`` (the params').
    """
    check_range("ema", "decay", decay, 0.0, 1.0, high_open=True)
    check_state_dtype("ema", "accumulator_dtype", accumulator_dtype)
    inner = scale_by_ema(decay, accumulator_dtype)
    if not debias:
        return transformation("ema", inner.init, inner.update)

    def update_fn(updates, state, params=None):
        moving, new_state = inner.update(updates, state, params)
        hp = new_state.hyperparams
        correction = bias_correction(hp["decay"], step_number(state.count, hp["decay"].dtype))
        return jax.tree.map(lambda m: store(widen(m) / correction, m.dtype), moving), new_state

    return transformation("ema", inner.init, update_fn)
