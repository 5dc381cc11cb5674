"""Funnelled SGDM: momentum SGD with per-coordinate gains and a global scale adapted by exponentiated gradients.

The global scale's dot product runs over the whole tree: it stays global for stacked
(scanned) layers, and the transform takes no ``layer_axes`` (``docs/guides/scanned_layers.md``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.elementwise import after
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.dtypes import reject_complex, store, store_like, widen
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, float_dtype,
                                             init_hyperparams)
from optimizers.contract.moments import ema
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(elementwise=False)
class ScaleByFunnelledSgdmState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": eta, "momentum": mu, "beta": ..., "gamma_p": ..., "gamma_s": ...}
    scale: jax.Array  # s_t, global float scalar (starts at 1)
    gain: optax.Updates  # p_t, per coordinate (starts at 1)
    grad_avg: optax.Updates  # m_t, moving average of the gradients
    trace: optax.Updates  # u_t / eta: the momentum of the gained gradients p_t * g_t


def _dot(a, b, dtype):
    """Sum over all leaves of the elementwise products, accumulated in ``dtype``."""
    terms = [jnp.sum(x.astype(dtype) * y.astype(dtype)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(terms, jnp.zeros([], dtype))


def scale_by_funnelled_sgdm(eta: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9, beta: ScalarOrSchedule = 0.9,
                            gamma_p: ScalarOrSchedule = 1e-3, gamma_s: ScalarOrSchedule = 1e-3
                            ) -> optax.GradientTransformation:
    r"""Funnelled SGDM's direction: the momentum step divided by the learning rate :math:`\eta`.

    With :math:`p_0 = 1`, :math:`s_0 = 1`, :math:`m_0 = 0`, :math:`u_0 = 0`, exactly document
    003's table:

    .. math::
        p_t = p_{t-1} \odot \exp(\gamma_p\, m_{t-1} \odot g_t), \quad
        s_t = s_{t-1} \exp(\gamma_s\, u_{t-1} \cdot g_t),

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t, \quad
        u_t = \mu u_{t-1} + \eta\, p_t \odot g_t, \quad
        \theta_t = \theta_{t-1} - s_t u_t

    The gains :math:`p` are per coordinate and multiply the gradient before it enters the
    momentum; the scale :math:`s` is one scalar for the whole pytree (the dot product runs
    over every leaf). This transform returns :math:`s_t u_t / \eta`, so that
    :func:`funnelled_sgdm` multiplies by :math:`\eta`; :math:`\eta` also enters the exponent
    of :math:`s` (:math:`u_{t-1} = \eta \tilde u_{t-1}`), so the transform needs it: give it
    the same value (or schedule) as the learning rate that multiplies its output.

    Signs: both exponents are exponentiated-gradient steps on the loss after the step,
    :math:`\partial L(\theta_{t-1}) / \partial s_{t-1} = -u_{t-1} \cdot g_t` (and, through the
    momentum, :math:`\partial L / \partial p \propto -m_{t-1} \odot g_t`), so ``+`` descends:
    a gain grows while the new gradient agrees with the momentum (the steps were too short)
    and shrinks when they disagree (the last step overshot). Complex params raise ``TypeError``
    at ``init``: the gains are per real coordinate.

    .. warning::
        The table puts :math:`\eta_t` inside the momentum; here :math:`\theta_t = \theta_{t-1}
        - \eta_t s_t \tilde u_t` with :math:`\tilde u_t = \mu\tilde u_{t-1} + p_t \odot g_t`,
        the same for a constant :math:`\eta` and, with a schedule, PyTorch's convention
        (a learning rate of 0 stops the parameters); the exponent of :math:`s` then uses the
        current :math:`\eta_t \tilde u_{t-1}`. The table gives no defaults; the
        exponents have the units of :math:`g^2` (and :math:`\gamma_s u \cdot g` grows with
        the number of parameters), so :math:`\gamma_p, \gamma_s` must be set for the problem.
        Nothing bounds :math:`p` and :math:`s`. Neither optax nor PyTorch has this optimizer.

    Args:
        eta: the learning rate :math:`\eta \ge 0`.
        momentum: :math:`\mu \in [0, 1)` of :math:`u` (0.9).
        beta: :math:`\beta \in [0, 1)` of :math:`m` (0.9).
        gamma_p: rate :math:`\gamma_p \ge 0` of the gains (1e-3, ours; 0 keeps :math:`p = 1`).
        gamma_s: rate :math:`\gamma_s \ge 0` of the scale (1e-3, ours; 0 keeps :math:`s = 1`).

    References:
        Amid, Anil, Fifty & Warmuth, "Step-size Adaptation Using Exponentiated Gradient
        Updates", arXiv:2202.00145, 2022.
    """
    owner = "scale_by_funnelled_sgdm"
    check_range(owner, "eta", eta, 0.0)
    check_range(owner, "momentum", momentum, 0.0, 1.0, high_open=True)
    check_range(owner, "beta", beta, 0.0, 1.0, high_open=True)
    check_range(owner, "gamma_p", gamma_p, 0.0)
    check_range(owner, "gamma_s", gamma_s, 0.0)
    values = dict(learning_rate=eta, momentum=momentum, beta=beta, gamma_p=gamma_p, gamma_s=gamma_s)

    def init_fn(params):
        reject_complex("scale_by_funnelled_sgdm", params, "its gains exp(gamma_p m g) are per real coordinate, "
                       "which a complex gain would not be (it would rotate the gradient); split complex params "
                       "into real and imaginary leaves")
        return ScaleByFunnelledSgdmState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                         jnp.ones([], float_dtype()), optax.tree.ones_like(params),
                                         optax.tree.zeros_like(params), optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        s = _scale(hp, state, updates)
        p = jax.tree.map(lambda g, q, m: store(q * jnp.exp(hp["gamma_p"] * m * g), q.dtype),
                         updates, state.gain, state.grad_avg)
        # m and u overwrite buffers that the gains and the dot product read: written after them.
        m = store_like(jax.tree.map(after, ema(updates, state.grad_avg, hp["beta"]), p), state.grad_avg)
        u = jax.tree.map(lambda g, q, t: store(hp["momentum"] * after(t, s) + q * widen(g), t.dtype),
                         updates, p, state.trace)
        out = jax.tree.map(lambda g, t: store(s * t, g.dtype), updates, u)
        return out, ScaleByFunnelledSgdmState(optax.safe_increment(state.count), hp, s, p, m, u)

    return transformation("scale_by_funnelled_sgdm", init_fn, update_fn)


def _scale(hp, state, updates):
    r""":math:`s_t = s_{t-1} \exp(\gamma_s \eta\, \tilde u_{t-1} \cdot g_t)`, the dot product over every leaf."""
    corr = _dot(state.trace, updates, state.scale.dtype)
    return (state.scale * jnp.exp(hp["gamma_s"] * hp["learning_rate"] * corr)).astype(state.scale.dtype)


@declare_optimizer(paper="Amid, Anil, Fifty & Warmuth 2022",
                   update="`p*=exp(γₚ m⊙g); s*=exp(γₛ γ u·g); u=μu+p⊙g; θ-=γ s u`",
                   test_kwargs=dict(learning_rate=2e-3))
def funnelled_sgdm(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9, beta: ScalarOrSchedule = 0.9,
                   gamma_p: ScalarOrSchedule = 1e-3, gamma_s: ScalarOrSchedule = 1e-3, *, fused: bool = False,
                   flat_state: bool = False) -> optax.GradientTransformation:
    r"""Funnelled SGDM: :math:`\theta_t = \theta_{t-1} - \eta_t s_t \tilde u_t` (:func:`scale_by_funnelled_sgdm`).

    Args:
        learning_rate: :math:`\eta \ge 0`, a number or a schedule.
        momentum, beta, gamma_p, gamma_s: as in :func:`scale_by_funnelled_sgdm`.
        fused: the same update on the CPU as one pass over memory after XLA's dot product
            :math:`\tilde u_{t-1} \cdot g_t` (see :func:`adam`); ``flat_state`` as there.
    """
    check_learning_rate("funnelled_sgdm", learning_rate)
    chain = optax.chain(scale_by_funnelled_sgdm(learning_rate, momentum, beta, gamma_p, gamma_s),
                        scale_by_learning_rate(learning_rate))
    values = dict(learning_rate=learning_rate, momentum=momentum, beta=beta, gamma_p=gamma_p, gamma_s=gamma_s)
    return accelerated("funnelled_sgdm", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate,
                       values=values, scale=_scale)
