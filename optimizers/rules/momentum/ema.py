"""An exponential moving average of the updates: the optional momentum of Adafactor and SM3."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, store, store_like, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.contract.moments import ema
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
        m = ema(updates, state.ema, hp["decay"])
        out = jax.tree.map(lambda g, a: store(a, g.dtype), updates, m)
        return out, ScaleByEmaState(optax.safe_increment(state.count), hp, store_like(m, state.ema))

    return transformation("scale_by_ema", init_fn, update_fn)
