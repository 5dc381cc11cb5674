"""NovoGrad: momentum on gradients normalised by a per-leaf second moment of their norm."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers._checks import transformation
from optimizers._dtypes import abs2, real_dtype, store, store_like
from optimizers._hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers._scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


class ScaleByNovogradState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ..., "weight_decay": ...}
    mu: optax.Updates  # m_t, same tree and dtype as params
    nu: optax.Updates  # v_t, one scalar per leaf (the leaf's dtype)


def scale_by_novograd(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.25, eps: ScalarOrSchedule = 1e-8,
                      weight_decay: ScalarOrSchedule = 0.0) -> optax.GradientTransformation:
    r"""NovoGrad's direction, per leaf (layer) :math:`i`.

    .. math::
        v_1 = \|g_1\|^2, \quad m_1 = \frac{g_1}{\sqrt{v_1}} + \lambda w_1, \\
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \|g_t\|^2, \quad
        m_t = \beta_1 m_{t-1} + \frac{g_t}{\sqrt{v_t} + \epsilon} + \lambda w_t \quad (t > 1),

    and the direction is :math:`m_t`. :math:`\|g\|` is the Frobenius norm of the leaf, so
    :math:`v_t` is one scalar per leaf. A zero first gradient gives :math:`g_1/\sqrt{v_1} = 0`.

    .. warning::
        The first step has no :math:`\epsilon`, as in the paper and document 003's table;
        ``optax.scale_by_novograd`` divides by :math:`\sqrt{v_1} + \epsilon` there too (a
        relative difference of :math:`\epsilon/\|g_1\|` at step 1 that the momentum
        carries on). The first moment is not averaged (no :math:`1-\beta_1`), as in the
        paper, the table and optax.

    Args:
        b1: :math:`\beta_1 \in [0, 1)` (the table's 0.9).
        b2: :math:`\beta_2 \in [0, 1)` (the table's 0.25).
        eps: :math:`\epsilon > 0`.
        weight_decay: :math:`\lambda \ge 0`, added inside the momentum.

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
        Training of Deep Networks", arXiv:1905.11286, 2019, Algorithm 1.
    """
    check_range("scale_by_novograd", "b1", b1, 0.0, 1.0, high_open=True)
    check_range("scale_by_novograd", "b2", b2, 0.0, 1.0, high_open=True)
    check_range("scale_by_novograd", "eps", eps, 0.0, low_open=True)
    check_range("scale_by_novograd", "weight_decay", weight_decay, 0.0)
    values = dict(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)

    def init_fn(params):
        nu = jax.tree.map(lambda p: jnp.zeros([], real_dtype(p.dtype)), params)
        return ScaleByNovogradState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                    optax.tree.zeros_like(params), nu)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_novograd: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        first = state.count == 0
        b1_, b2_, eps_, wd = hp["b1"], hp["b2"], hp["eps"], hp["weight_decay"]
        wide = lambda x: x.astype(jnp.promote_types(x.dtype, b2_.dtype))  # noqa: E731
        norm2 = jax.tree.map(lambda g: jnp.sum(abs2(wide(g))), updates)
        nu = jax.tree.map(lambda n, v: jnp.where(first, n, b2_ * v + (1 - b2_) * n), norm2, state.nu)

        def moment(g, w, m, v):
            den = jnp.sqrt(wide(v)) + jnp.where(first, 0.0, eps_)
            return b1_ * m + wide(g) / jnp.where(den == 0, 1.0, den) + wd * w

        mu = jax.tree.map(moment, updates, params, state.mu, nu)
        out = jax.tree.map(lambda g, m: store(m, g.dtype), updates, mu)
        return out, ScaleByNovogradState(optax.safe_increment(state.count), hp, store_like(mu, state.mu),
                                         store_like(nu, state.nu))

    return transformation("scale_by_novograd", init_fn, update_fn)


def novograd(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.25,
             eps: ScalarOrSchedule = 1e-8, weight_decay: ScalarOrSchedule = 0.0) -> optax.GradientTransformation:
    r"""NovoGrad: :math:`\theta_t = \theta_{t-1} - \gamma_t m_t` (:func:`scale_by_novograd`).

    .. warning::
        ``optax.novograd`` defaults to ``eps=1e-6`` and adds it at the first step too; the
        table's :math:`\epsilon = 10^{-8}` is the default here (see :func:`scale_by_novograd`).

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
        Training of Deep Networks", arXiv:1905.11286, 2019, Algorithm 1.
    """
    return optax.chain(scale_by_novograd(b1, b2, eps, weight_decay), scale_by_learning_rate(learning_rate))
