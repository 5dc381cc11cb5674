"""Heavy-ball and Nesterov momentum, and SGD built from them."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, store, store_like, widen, zeros_in
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams, is_zero
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(elementwise=True)
class TraceState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"momentum": mu of the latest update} (named as in sgd, rmsprop)
    trace: optax.Updates  # momentum buffer, same tree and dtype as params


def trace(decay: ScalarOrSchedule = 0.9, nesterov: bool = False, accumulator_dtype=None
          ) -> optax.GradientTransformation:
    r"""Accumulates a momentum trace of the updates.

    .. math::
        m_t = \mu_t m_{t-1} + g_t, \qquad
        u_t = m_t \ \text{(heavy ball)}, \quad u_t = g_t + \mu_t m_t \ \text{(Nesterov)}

    The same as ``torch.optim.SGD(momentum=mu, dampening=0, nesterov=...)`` and
    ``optax.trace``.

    Args:
        decay: momentum :math:`\mu_t` in ``[0, 1)``, or a schedule of it.
        nesterov: use the Nesterov form of :math:`u_t`.
        accumulator_dtype: the dtype of :math:`m_t` (saturating), or ``None`` (the params');
            the update is computed in at least float32 and returned in the gradients' dtype.

    References:
        Polyak, "Some methods of speeding up the convergence of iteration methods", 1964;
        Sutskever et al., "On the importance of initialization and momentum in deep
        learning", ICML 2013, Eq. (3)-(4).
    """
    check_range("trace", "decay", decay, 0.0, 1.0, high_open=True)
    check_state_dtype("trace", "accumulator_dtype", accumulator_dtype)

    def init_fn(params):
        return TraceState(jnp.zeros([], jnp.int32), init_hyperparams(momentum=decay),
                          zeros_in(params, accumulator_dtype))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(momentum=decay), state.hyperparams, state.count)
        mu = hp["momentum"]
        m = jax.tree.map(lambda g, t: widen(g) + mu * t, updates, state.trace)
        if nesterov:
            out = jax.tree.map(lambda g, t: store(widen(g) + mu * t, g.dtype), updates, m)
        else:
            out = jax.tree.map(lambda g, t: store(t, g.dtype), updates, m)
        return out, TraceState(optax.safe_increment(state.count), hp, store_like(m, state.trace))

    return transformation("trace", init_fn, update_fn)


@declare_optimizer(paper="Polyak 1964; Sutskever et al. 2013", update="`m=μm+g+λθ; θ-=γm` (Nesterov: `γ(g+μm)`)",
                   test_kwargs=dict(learning_rate=2e-3, momentum=0.9))
def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: Optional[ScalarOrSchedule] = None,
    nesterov: bool = False,
    accumulator_dtype=None,
    *,
    weight_decay: Optional[ScalarOrSchedule] = None,
    mask: MaskOrFn = None,
    fused: bool = False,
    flat_state: bool = False,
) -> optax.GradientTransformation:
    r"""Stochastic gradient descent, with optional momentum and L2 weight decay.

    .. math::
        g_t \leftarrow g_t + \lambda \theta_{t-1}, \quad
        m_t = \mu m_{t-1} + g_t, \quad
        \theta_t = \theta_{t-1} - \gamma m_t \ \text{(or } \gamma (g_t + \mu m_t)
        \text{ with Nesterov)}

    “Optimization algorithms in deep learning”'s SGD, momentum (:math:`\mu = 0.9` in its table) and NAG rows. The decay
    is
    added to the gradient before the momentum (coupled L2), exactly as
    ``torch.optim.SGD(lr, momentum, dampening=0, nesterov, weight_decay)``; for SGDW put
    :func:`add_decayed_weights` after :func:`trace` in a chain.

    Args:
        learning_rate: :math:`\gamma \ge 0`, a number or a schedule.
        momentum: :math:`\mu \in [0, 1)`; ``None`` (the default, as optax's) or ``0`` for plain
            SGD, with no momentum buffer.
        nesterov: Nesterov's accelerated gradient (needs ``momentum``).
        weight_decay: L2 coefficient :math:`\lambda \ge 0`; ``None`` (the default) or ``0``
            for none (no link in the chain).
        mask: which leaves are decayed (see :func:`add_decayed_weights`).
        accumulator_dtype: the momentum buffer's dtype (see :func:`trace`); ``fused=True`` runs
            the chain for a dtype other than float32.
        fused: the same update as one pass over memory on the CPU (see :func:`adam`), as
            ``torch.optim.SGD(fused=True)``.
        flat_state: with ``fused``, the momentum as one flat float32 array (see :func:`adam`).
    """
    if momentum is not None:
        check_range("sgd", "momentum", momentum, 0.0, 1.0, high_open=True)
    check_state_dtype("sgd", "accumulator_dtype", accumulator_dtype)
    if nesterov and is_zero(momentum):
        raise ValueError(f"sgd: nesterov=True needs a momentum in (0, 1), got momentum={momentum!r}")
    chain = optax.chain(
        optax.identity() if is_zero(weight_decay) else add_decayed_weights(weight_decay, mask),
        optax.identity() if is_zero(momentum) else trace(momentum, nesterov, accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )
    return accelerated("sgd", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate,
                       momentum=momentum, nesterov=bool(nesterov), weight_decay=weight_decay, mask=mask)
