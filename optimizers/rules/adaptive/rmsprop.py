"""RMSProp: steps scaled by an exponential moving average of squared gradients."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, full_in, inner, store, store_like, widen, zeros_in
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams, is_zero
from optimizers.contract.moments import bias_correction as correction, step_number
from optimizers.rules.momentum.momentum import trace
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('nu',), elementwise=True)
class ScaleByRmsState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"decay": ..., "eps": ...}
    nu: optax.Updates  # v_t: moving average of g^2
    mu: Optional[optax.Updates]  # moving average of g (centered form); None otherwise (no memory)


def scale_by_rms(
    decay: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    nu_dtype=None,
    mu_dtype=None,
) -> optax.GradientTransformation:
    r"""Divides by the root of a moving average of squared gradients.

    .. math::
        v_t = \rho v_{t-1} + (1 - \rho) g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t} + \epsilon}

    the update table of “Optimization algorithms in deep learning” (:math:`\rho = 0.99`, :math:`\epsilon = 10^{-8}`,
    outside the
    root), which is ``torch.optim.RMSprop``. ``eps_in_sqrt=True`` gives
    :math:`g_t / \sqrt{v_t + \epsilon}`, optax's default. ``centered=True`` also tracks
    :math:`\bar g_t = \rho \bar g_{t-1} + (1-\rho) g_t` and divides by
    :math:`\sqrt{v_t - \bar g_t^2} + \epsilon` (Graves 2013; ``RMSprop(centered=True)``). The
    variance is evaluated as the equal
    :math:`\rho\,(v_{t-1} - \bar g_{t-1}^2) + \rho (1-\rho)(g_t - \bar g_{t-1})^2`, whose new
    term does not cancel: :math:`v_t - \bar g_t^2` subtracts two rounded numbers of nearly the
    same size when :math:`\rho` is small (at :math:`\rho = 0` the variance is exactly 0, the
    difference float32 noise that the root magnifies to :math:`3 \cdot 10^{-4} |g_t|`).

    optax's ``bias_correction=True`` divides :math:`v_t` (and :math:`\bar g_t`) by
    :math:`1-\rho^t`, as Adam does; the centered variance is then
    :math:`v_t/(1-\rho^t) - |\bar g_t/(1-\rho^t)|^2`, clipped at 0.

    .. warning::
        optax's ``scale_by_rms`` defaults to ``decay=0.9`` and ``eps_in_sqrt=True``.

    Args:
        decay: :math:`\rho \in [0, 1)`.
        eps: :math:`\epsilon > 0`.
        initial_scale: :math:`v_0 \ge 0`.
        eps_in_sqrt: put :math:`\epsilon` inside the root.
        centered: divide by the root of the variance instead of the second moment.
        bias_correction: divide the moments by :math:`1-\rho^t`.
        nu_dtype, mu_dtype: the dtypes of :math:`v_t` and of :math:`\bar g_t` (saturating), or
            ``None`` (the params'); the update is computed in at least float32.

    References:
        Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks for Machine
        Learning, 2012; Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
    """
    check_range("scale_by_rms", "decay", decay, 0.0, 1.0, high_open=True)
    check_range("scale_by_rms", "eps", eps, 0.0, low_open=True)
    check_range("scale_by_rms", "initial_scale", initial_scale, 0.0)
    check_state_dtype("scale_by_rms", "nu_dtype", nu_dtype)
    check_state_dtype("scale_by_rms", "mu_dtype", mu_dtype)

    def init_fn(params):
        return ScaleByRmsState(jnp.zeros([], jnp.int32), init_hyperparams(decay=decay, eps=eps),
                               full_in(params, initial_scale, nu_dtype, real=True),
                               zeros_in(params, mu_dtype) if centered else None)

    def denominator(var, e):  # only the centered variance can round below 0 (v >= 0 from v_0 >= 0)
        var = jnp.maximum(var, 0.0) if centered else var
        return jnp.sqrt(e + var) if eps_in_sqrt else e + jnp.sqrt(var)

    def variance(g, v_old, m_old, rho):
        m_old = widen(m_old)
        d = widen(g) - m_old
        return rho * (widen(v_old) - inner(m_old, m_old)) + inner(rho * (1 - rho) * d, d)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(decay=decay, eps=eps), state.hyperparams, state.count)
        rho = hp["decay"]
        v = jax.tree.map(lambda g, s: rho * widen(s) + inner((1 - rho) * widen(g), widen(g)), updates, state.nu)
        if bias_correction:
            return _corrected(updates, state, hp, v, denominator)
        if centered:
            m = jax.tree.map(lambda g, s: rho * widen(s) + (1 - rho) * widen(g), updates, state.mu)
            out = jax.tree.map(lambda g, s, a: store(widen(g) / denominator(variance(g, s, a, rho), hp["eps"]), g.dtype),
                               updates, state.nu, state.mu)
            m = store_like(m, state.mu)
        else:
            m = None
            out = jax.tree.map(lambda g, s: store(widen(g) / denominator(s, hp["eps"]), g.dtype), updates, v)
        return out, ScaleByRmsState(optax.safe_increment(state.count), hp, store_like(v, state.nu), m)

    def _corrected(updates, state, hp, v, denominator):
        rho = hp["decay"]
        c = correction(rho, step_number(state.count, rho.dtype))
        m = None
        if centered:
            m = jax.tree.map(lambda g, s: rho * widen(s) + (1 - rho) * widen(g), updates, state.mu)
            var = jax.tree.map(lambda b, a: b / c - inner(a / c, a / c), v, m)
            m = store_like(m, state.mu)
        else:
            var = jax.tree.map(lambda b: b / c, v)
        out = jax.tree.map(lambda g, s: store(widen(g) / denominator(s, hp["eps"]), g.dtype), updates, var)
        return out, ScaleByRmsState(optax.safe_increment(state.count), hp, store_like(v, state.nu), m)

    return transformation("scale_by_rms", init_fn, update_fn)


@declare_optimizer(paper="Tieleman & Hinton 2012; Graves 2013",
                   update="`v=ρv+(1-ρ)g²; θ-=γ g/(√v+ε)` (centered, momentum)",
                   test_kwargs=dict(learning_rate=1e-3))
def rmsprop(learning_rate: ScalarOrSchedule, decay: ScalarOrSchedule = 0.99, eps: ScalarOrSchedule = 1e-8,
            initial_scale: float = 0.0, eps_in_sqrt: bool = False, centered: bool = False,
            momentum: Optional[ScalarOrSchedule] = None, nesterov: bool = False, bias_correction: bool = False, *,
            nu_dtype=None, mu_dtype=None, fused: bool = False, flat_state: bool = False
            ) -> optax.GradientTransformation:
    r"""RMSProp: :math:`\theta_t = \theta_{t-1} - \gamma_t b_t`, :math:`b_t = \mu b_{t-1} + u_t`.

    :math:`u_t` from :func:`scale_by_rms`; with ``momentum`` the buffer :math:`b_t` holds
    :math:`u_t` before the learning rate, as in ``torch.optim.RMSprop``, so a learning-rate
    schedule gives PyTorch's trajectory (optax's ``rmsprop`` scales before its momentum);
    ``nesterov`` uses :math:`u_t + \mu b_t` (:func:`trace`). ``fused=True``: the same update,
    every variant, as one pass over memory on the CPU (see :func:`adam`); ``flat_state`` as there.
    ``momentum=None`` (the default, as optax's) or ``0``: no momentum buffer.

    ``bias_correction``, ``nu_dtype``: see :func:`scale_by_rms`; ``mu_dtype`` keeps the centered
    mean and the momentum buffer. With ``bias_correction`` (which the kernel does not have), or a
    state dtype other than float32, ``fused=True`` runs the chain.
    """
    if momentum is not None:
        check_range("rmsprop", "momentum", momentum, 0.0, 1.0, high_open=True)
    if nesterov and is_zero(momentum):
        raise ValueError(f"rmsprop: nesterov=True needs a momentum in (0, 1), got momentum={momentum!r}")
    chain = optax.chain(
        scale_by_rms(decay, eps, initial_scale, eps_in_sqrt, centered=centered, bias_correction=bias_correction,
                     nu_dtype=nu_dtype, mu_dtype=mu_dtype),
        optax.identity() if is_zero(momentum) else trace(momentum, nesterov, mu_dtype),
        scale_by_learning_rate(learning_rate),
    )
    return accelerated("rmsprop", chain, fused=fused, flat_state=flat_state,
                       unsupported="its kernel has no bias_correction" if bias_correction else None,
                       learning_rate=learning_rate, decay=decay, eps=eps, momentum=momentum, centered=bool(centered),
                       eps_in_sqrt=bool(eps_in_sqrt), kind=0 if is_zero(momentum) else 1 + bool(nesterov))
