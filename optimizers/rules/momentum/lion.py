"""Lion: the sign of an interpolated momentum, with decoupled weight decay."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, reject_complex, store, zeros_in
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(elementwise=True)
class ScaleByLionState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ...}
    mu: optax.Updates  # m_t, same tree and dtype as params


_MODES = ("hard", "smooth", "refined")


def _sign(mode, smooth_beta):
    r"""optax's variants of the sign: ``hard`` (the paper's), ``smooth`` :math:`\tanh(\kappa x)`,
    ``refined`` (:math:`x` where :math:`|x| < 1`, else its sign)."""
    if mode == "smooth":
        return lambda x: jnp.tanh(smooth_beta * x)
    if mode == "refined":
        return lambda x: jnp.where(jnp.abs(x) < 1, x, jnp.sign(x))
    return jnp.sign


def scale_by_lion(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype=None,
    *,
    mode: str = "hard",
    smooth_beta: float = 1.0,
) -> optax.GradientTransformation:
    r"""Lion's direction: the sign of an interpolation of the momentum and the gradient.

    .. math::
        u_t = \operatorname{sign}\bigl(\beta_1 m_{t-1} + (1-\beta_1) g_t\bigr), \qquad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    with :math:`m_0 = 0` and :math:`\operatorname{sign}(0) = 0`. The update uses the momentum
    *before* it takes in :math:`g_t`; the momentum decays more slowly (:math:`\beta_2`) than the
    interpolation (:math:`\beta_1`). The same as ``optax.scale_by_lion`` (``mode="hard"``).
    Complex params raise ``TypeError`` at ``init``: the sign is per real coordinate.
    optax's ``mode="smooth"`` replaces the sign by :math:`\tanh(\kappa x)` (``smooth_beta``
    :math:`\kappa`), ``mode="refined"`` by :math:`x` where :math:`|x| < 1`; neither is in the paper.

    Args:
        b1: interpolation :math:`\beta_1 \in [0, 1)` (0.9).
        b2: momentum decay :math:`\beta_2 \in [0, 1)` (0.99).
        mu_dtype: the dtype of :math:`m_t` (saturating), or ``None`` (the params'); the
            interpolation is computed in at least float32.
        mode: ``"hard"`` (the paper's sign), ``"smooth"`` or ``"refined"``.
        smooth_beta: :math:`\kappa` of ``mode="smooth"``.

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, Program 1.
    """
    check_range("scale_by_lion", "b1", b1, 0.0, 1.0, high_open=True)
    check_range("scale_by_lion", "b2", b2, 0.0, 1.0, high_open=True)
    check_state_dtype("scale_by_lion", "mu_dtype", mu_dtype)
    check_range("scale_by_lion", "smooth_beta", smooth_beta, 0.0, low_open=True)
    if mode not in _MODES:
        raise ValueError(f"scale_by_lion: mode must be one of {_MODES}, got {mode!r}")
    sign = _sign(mode, smooth_beta)
    keep = (lambda x, m: x.astype(m.dtype)) if mu_dtype is None else (lambda x, m: store(x, m.dtype))

    def init_fn(params):
        reject_complex("scale_by_lion", params, "its step is the sign of each real coordinate; split complex "
                       "params into real and imaginary leaves to run Lion on the real pair")
        return ScaleByLionState(jnp.zeros([], jnp.int32), init_hyperparams(b1=b1, b2=b2), zeros_in(params, mu_dtype))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(b1=b1, b2=b2), state.hyperparams, state.count)
        out = jax.tree.map(lambda g, m: sign(hp["b1"] * m + (1 - hp["b1"]) * g).astype(g.dtype),
                           updates, state.mu)
        mu = jax.tree.map(lambda g, m: keep(hp["b2"] * m + (1 - hp["b2"]) * g, m), updates, state.mu)
        return out, ScaleByLionState(optax.safe_increment(state.count), hp, mu)

    return transformation("scale_by_lion", init_fn, update_fn)


# Conformance: sign steps need a decay to settle.
@declare_optimizer(paper="Chen et al. 2023", update="`u=sign(β₁m+(1-β₁)g); m=β₂m+(1-β₂)g; θ-=γ(u+λθ)`",
                   test_kwargs=dict(learning_rate=lambda t: 3e-3 * 0.9997**t, weight_decay=0.0))
def lion(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype=None,
    weight_decay: ScalarOrSchedule = 1.0,
    mask: MaskOrFn = None,
    *,
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""Lion: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda \theta_{t-1})`.

    :math:`u_t` from :func:`scale_by_lion`; the decay is decoupled and multiplied by the
    learning rate, as in the paper's Program 1, the update table of “Optimization algorithms in deep learning” and
    ``optax.lion``.

    .. warning::
        The default ``weight_decay=1.0`` is the table's; ``optax.lion`` defaults to ``1e-3``
        and pytorch-optimizer's ``Lion`` to ``0``. The paper gives no default; it advises a
        learning rate 3-10x smaller and a decay 3-10x larger than AdamW's, so that
        :math:`\gamma\lambda` stays about the same. The table writes the decay on
        :math:`\theta_t`; it is the parameter before the update, :math:`\theta_{t-1}`, in the
        paper and here.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.
        b1, b2: as in :func:`scale_by_lion`.
        weight_decay: :math:`\lambda \ge 0` (1.0).
        mask: which leaves are decayed (see :func:`add_decayed_weights`).
        mu_dtype: as in :func:`scale_by_lion` (keyword-only: optax's ``lion`` has it before
            ``weight_decay``); ``fused=True`` runs the chain for a dtype other than float32.
        fused: the same update as one pass over memory on the CPU (see :func:`adam`).
        flat_state: with ``fused``, the momentum as one flat float32 array (see :func:`adam`).

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, Program 1.
    """
    chain = optax.chain(
        scale_by_lion(b1, b2, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
    return accelerated("lion", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate, b1=b1, b2=b2,
                       weight_decay=weight_decay, mask=mask)
