"""Adadelta: RMSProp with the units corrected by a moving average of squared steps."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, inner, store, store_like, widen, zeros_in
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('nu', 'delta_nu'), elementwise=True)
class ScaleByAdadeltaState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"rho": ..., "eps": ...}
    nu: optax.Updates  # v_t: moving average of g^2
    delta_nu: optax.Updates  # X_t: moving average of the squared steps


def scale_by_adadelta(rho: ScalarOrSchedule = 0.9, eps: ScalarOrSchedule = 1e-6, *, nu_dtype=None
                      ) -> optax.GradientTransformation:
    r"""Adadelta's direction.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) g_t^2, \quad
        d_t = \frac{\sqrt{X_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t, \quad
        X_t = \rho X_{t-1} + (1-\rho) d_t^2

    the update table of “Optimization algorithms in deep learning” (:math:`\rho = 0.9`, :math:`\epsilon = 10^{-6}`)
    with the step
    :math:`\Delta\theta_t = -d_t`; the same as ``torch.optim.Adadelta`` and
    ``optax.scale_by_adadelta``, which also accumulate :math:`d_t` before the learning rate.

    Args:
        rho: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        nu_dtype: the dtype of both moving averages, :math:`v_t` and :math:`X_t` (saturating), or
            ``None`` (the params' real dtype); the update is computed in at least float32.

    References:
        Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, Algorithm 1.
    """
    check_range("scale_by_adadelta", "rho", rho, 0.0, 1.0, high_open=True)
    check_range("scale_by_adadelta", "eps", eps, 0.0, low_open=True)
    check_state_dtype("scale_by_adadelta", "nu_dtype", nu_dtype)

    def init_fn(params):
        return ScaleByAdadeltaState(jnp.zeros([], jnp.int32), init_hyperparams(rho=rho, eps=eps),
                                    zeros_in(params, nu_dtype, real=True), zeros_in(params, nu_dtype, real=True))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(rho=rho, eps=eps), state.hyperparams, state.count)
        r, e = hp["rho"], hp["eps"]
        v = jax.tree.map(lambda g, s: r * widen(s) + inner((1 - r) * widen(g), widen(g)), updates, state.nu)
        # One root of the ratio, not a root over a root: XLA:CPU rewrites the latter to a slow rsqrt
        # and writes both roots, which the step and the new X share, to temporaries.
        d = jax.tree.map(lambda g, s, x: jnp.sqrt((widen(x) + e) / (s + e)) * widen(g), updates, v, state.delta_nu)
        x = jax.tree.map(lambda dd, s: r * widen(s) + inner((1 - r) * dd, dd), d, state.delta_nu)
        out = jax.tree.map(lambda dd, g: store(dd, g.dtype), d, updates)
        return out, ScaleByAdadeltaState(optax.safe_increment(state.count), hp, store_like(v, state.nu),
                                         store_like(x, state.delta_nu))

    return transformation("scale_by_adadelta", init_fn, update_fn)


# Conformance: Adadelta needs a decay to settle.
@declare_optimizer(paper="Zeiler 2012", update="`v=ρv+(1-ρ)g²; d=√(X+ε)/√(v+ε)·g; X=ρX+(1-ρ)d²; θ-=γd`",
                   test_kwargs=dict(learning_rate=lambda t: 0.9997**t))
def adadelta(learning_rate: ScalarOrSchedule = 1.0, rho: ScalarOrSchedule = 0.9,
             eps: ScalarOrSchedule = 1e-6, weight_decay: Optional[ScalarOrSchedule] = None,
             weight_decay_mask: MaskOrFn = None, *, nu_dtype=None, fused: bool = False, flat_state: bool = False
             ) -> optax.GradientTransformation:
    r"""Adadelta: :math:`\theta_t = \theta_{t-1} - \gamma_t d_t` (:func:`scale_by_adadelta`).

    The paper has no learning rate (:math:`\gamma = 1`, the default). optax's ``adadelta``
    defaults to ``learning_rate=None``, which ascends. ``fused=True``: the same update as one
    pass over memory on the CPU (see :func:`adam`); ``flat_state`` as there.

    optax's ``weight_decay`` :math:`\lambda` (with ``weight_decay_mask``, as in
    :func:`add_decayed_weights`) is added to the gradient before the direction, coupled L2 as
    in ``optax.adadelta`` and ``torch.optim.Adadelta(weight_decay=...)``:
    :math:`g_t \leftarrow g_t + \lambda \theta_{t-1}`. ``None`` (the default): no decay and no
    link in the chain; with a decay, or ``nu_dtype`` other than float32, ``fused=True`` runs the
    chain (the kernel has no coupled decay). ``nu_dtype``: see :func:`scale_by_adadelta`.
    """
    chain = optax.chain(
        *([] if weight_decay is None else [add_decayed_weights(weight_decay, weight_decay_mask)]),
        scale_by_adadelta(rho, eps, nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))
    return accelerated("adadelta", chain, fused=fused, flat_state=flat_state,
                       unsupported=None if weight_decay is None else "its kernel has no weight_decay",
                       learning_rate=learning_rate, rho=rho, eps=eps)
