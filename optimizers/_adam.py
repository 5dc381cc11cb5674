"""Adam and its close relatives: AdamW, AMSGrad and Adamax."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers._checks import transformation
from optimizers._dtypes import real_zeros_like, store, store_like, widen
from optimizers._flat_state import check_flat_state
from optimizers._fused import fused_direction
from optimizers._hyperparams import current_hyperparams, init_hyperparams
from optimizers._moments import adam_moments, bias_correction, check_betas, ema, step_number
from optimizers._scaling import MaskOrFn, add_decayed_weights, scale_by_learning_rate
from schedules import ScalarOrSchedule


def _init(state_cls, b1, b2, eps, params, n_buffers):
    """The first moment has the params' dtype; the others (of :math:`|g|^2` or :math:`|g|`) its real form."""
    buffers = [optax.tree.zeros_like(params)] + [real_zeros_like(params) for _ in range(n_buffers - 1)]
    return state_cls(jnp.zeros([], jnp.int32), init_hyperparams(b1=b1, b2=b2, eps=eps), *buffers)


class ScaleByAdamState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t, first moment
    nu: optax.Updates  # v_t, second moment


def scale_by_adam(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
                  eps: ScalarOrSchedule = 1e-8) -> optax.GradientTransformation:
    r"""Adam's direction.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    The same as ``optax.scale_by_adam`` and ``torch.optim.Adam``.

    Args:
        b1: :math:`\beta_1 \in [0, 1)`.
        b2: :math:`\beta_2 \in [0, 1)`.
        eps: :math:`\epsilon > 0`.

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 1.
    """
    check_betas("scale_by_adam", b1, b2, eps)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(b1=b1, b2=b2, eps=eps), state.hyperparams, state.count)
        t, m, v, c1, c2 = adam_moments(updates, state, hp)
        # eps + sqrt, not sqrt + eps (the same sum): XLA then gives the first leaf of each shape the
        # others' kernel, fewer kernels to compile (README, "Compile time"); so the other adds of eps.
        out = jax.tree.map(lambda g, a, b: store(a / c1 / (hp["eps"] + jnp.sqrt(b / c2)), g.dtype), updates, m, v)
        moments = store_like(m, state.mu), store_like(v, state.nu)
        return out, ScaleByAdamState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_adam", lambda p: _init(ScaleByAdamState, b1, b2, eps, p, 2), update_fn)


def adam_scalars(hp, state):
    """The fused kernel's scalars: :math:`\\beta_1, 1-\\beta_1, \\beta_2, 1-\\beta_2, 1-\\beta_1^t, 1-\\beta_2^t, \\epsilon`."""
    t = step_number(state.count, hp["b1"].dtype)
    return [hp["b1"], 1 - hp["b1"], hp["b2"], 1 - hp["b2"], bias_correction(hp["b1"], t),
            bias_correction(hp["b2"], t), hp["eps"]]


def _fused_adam(owner, chain, fused, flat_state, learning_rate, b1, b2, eps, weight_decay=None, mask=None):
    check_flat_state(owner, fused, flat_state)
    if not fused:
        return chain
    return fused_direction(owner, chain, "optimizers_adam", dict(b1=b1, b2=b2, eps=eps), adam_scalars, ("mu", "nu"),
                           learning_rate, weight_decay, mask, flat=flat_state)


def adam(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
         eps: ScalarOrSchedule = 1e-8, *, fused: bool = False, flat_state: bool = False
         ) -> optax.GradientTransformation:
    r"""Adam: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` with :func:`scale_by_adam`'s :math:`u_t`.

    ``fused=True``: the same update as one pass over memory on the CPU (``_fused.py``; with
    :func:`update_and_apply`, the whole step in place, as ``torch.optim.Adam(fused=True)``).
    ``flat_state=True`` (with ``fused``): :math:`m` and :math:`v` each one flat float32 array
    (the leaves one after another) instead of a tree: the same numbers, two buffers for JAX to
    pass instead of two per leaf (for float32 params; its checkpoints are not the tree form's).
    """
    chain = optax.chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))
    return _fused_adam("adam", chain, fused, flat_state, learning_rate, b1, b2, eps)


def adamw(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
          eps: ScalarOrSchedule = 1e-8, weight_decay: ScalarOrSchedule = 0.01,
          mask: MaskOrFn = None, *, fused: bool = False, flat_state: bool = False) -> optax.GradientTransformation:
    r"""AdamW: :math:`\theta_t = \theta_{t-1} - \gamma_t (u_t + \lambda \theta_{t-1})`.

    Decoupled weight decay multiplied by the learning rate, as in document 003's table
    (:math:`\lambda = 0.01`), ``torch.optim.AdamW`` and ``optax.adamw``.

    .. warning::
        optax's ``adamw`` defaults to ``weight_decay=1e-4``; this one to the table's and
        PyTorch's ``0.01``. The paper's schedule multiplier :math:`\eta_t` is the learning
        rate's schedule here.

    ``fused=True``: one pass over memory on the CPU, and ``flat_state``, as in :func:`adam`.

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, Algorithm 2.
    """
    chain = optax.chain(
        scale_by_adam(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
    return _fused_adam("adamw", chain, fused, flat_state, learning_rate, b1, b2, eps, weight_decay, mask)


class ScaleByAmsgradState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t
    nu_max: optax.Updates  # running max of v_hat_t ("corrected") or of v_t ("raw")


def scale_by_amsgrad(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
                     eps: ScalarOrSchedule = 1e-8, max_over: str = "corrected") -> optax.GradientTransformation:
    r"""AMSGrad's direction: Adam with a non-decreasing second moment.

    ``max_over="corrected"`` (document 003's table, optax):

    .. math::
        \hat v_t^{max} = \max(\hat v_{t-1}^{max}, v_t / (1-\beta_2^t)), \quad
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t^{max}} + \epsilon}

    ``max_over="raw"`` (``torch.optim.Adam(amsgrad=True)``): the max is over the raw
    :math:`v_t`, then divided by :math:`1-\beta_2^t`:
    :math:`u_t = \hat m_t / (\sqrt{v_t^{max} / (1-\beta_2^t)} + \epsilon)`. The two differ
    because :math:`1-\beta_2^t` grows with :math:`t`: the raw max remembers a large early
    :math:`v` less strongly.

    Args:
        b1, b2, eps: as in :func:`scale_by_adam`.
        max_over: ``"corrected"`` or ``"raw"``.

    References:
        Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018, Algorithm 2.
    """
    check_betas("scale_by_amsgrad", b1, b2, eps)
    if max_over not in ("corrected", "raw"):
        raise ValueError(f"scale_by_amsgrad: max_over must be 'corrected' or 'raw', got {max_over!r}")

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(b1=b1, b2=b2, eps=eps), state.hyperparams, state.count)
        t, m, v, c1, c2 = adam_moments(updates, state, hp)
        if max_over == "corrected":
            vmax = jax.tree.map(lambda b, s: jnp.maximum(widen(s), b / c2), v, state.nu_max)
            denom = jax.tree.map(lambda s: hp["eps"] + jnp.sqrt(s), vmax)
        else:
            vmax = jax.tree.map(lambda b, s: jnp.maximum(widen(s), b), v, state.nu_max)
            denom = jax.tree.map(lambda s: hp["eps"] + jnp.sqrt(s / c2), vmax)
        out = jax.tree.map(lambda g, a, d: store(a / c1 / d, g.dtype), updates, m, denom)
        moments = store_like(m, state.mu), store_like(v, state.nu), store_like(vmax, state.nu_max)
        return out, ScaleByAmsgradState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_amsgrad", lambda p: _init(ScaleByAmsgradState, b1, b2, eps, p, 3), update_fn)


def amsgrad(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
            eps: ScalarOrSchedule = 1e-8, max_over: str = "corrected", *, fused: bool = False,
            flat_state: bool = False) -> optax.GradientTransformation:
    r"""AMSGrad: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_amsgrad`).

    ``max_over="raw"`` gives ``torch.optim.Adam(amsgrad=True)``. ``fused=True``: one pass over
    memory on the CPU, and ``flat_state``, as in :func:`adam`.
    """
    chain = optax.chain(scale_by_amsgrad(b1, b2, eps, max_over), scale_by_learning_rate(learning_rate))
    check_flat_state("amsgrad", fused, flat_state)
    if not fused:
        return chain
    return fused_direction("amsgrad", chain, "optimizers_amsgrad", dict(b1=b1, b2=b2, eps=eps), adam_scalars,
                           ("mu", "nu", "nu_max"), learning_rate, flat=flat_state, raw=max_over == "raw")


class ScaleByAdamaxState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ...}
    mu: optax.Updates  # m_t
    nu: optax.Updates  # v_t, exponentially weighted infinity norm


def scale_by_adamax(b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
                    eps: ScalarOrSchedule = 1e-8) -> optax.GradientTransformation:
    r"""Adamax's direction: Adam with the infinity norm.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \max(\beta_2 v_{t-1}, |g_t| + \epsilon), \quad
        u_t = \frac{m_t}{(1-\beta_1^t)\, v_t}

    Document 003's table, which is also ``torch.optim.Adamax`` and ``optax.scale_by_adamax``
    (the paper has :math:`\epsilon = 0`; the table's :math:`\epsilon` keeps
    :math:`v_t > 0`).

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 2.
    """
    check_betas("scale_by_adamax", b1, b2, eps)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(b1=b1, b2=b2, eps=eps), state.hyperparams, state.count)
        t = step_number(state.count, hp["b1"].dtype)
        m = ema(updates, state.mu, hp["b1"])
        v = jax.tree.map(lambda g, s: jnp.maximum(hp["b2"] * widen(s), jnp.abs(widen(g)) + hp["eps"]),
                         updates, state.nu)
        c1 = bias_correction(hp["b1"], t)
        out = jax.tree.map(lambda g, a, b: store(a / (c1 * b), g.dtype), updates, m, v)
        moments = store_like(m, state.mu), store_like(v, state.nu)
        return out, ScaleByAdamaxState(optax.safe_increment(state.count), hp, *moments)

    return transformation("scale_by_adamax", lambda p: _init(ScaleByAdamaxState, b1, b2, eps, p, 2), update_fn)


def adamax(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
           eps: ScalarOrSchedule = 1e-8, *, fused: bool = False, flat_state: bool = False
           ) -> optax.GradientTransformation:
    r"""Adamax: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_adamax`).

    ``fused=True``: one pass over memory on the CPU, and ``flat_state``, as in :func:`adam`.
    """
    chain = optax.chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))
    check_flat_state("adamax", fused, flat_state)
    if not fused:
        return chain
    return fused_direction("adamax", chain, "optimizers_adamax", dict(b1=b1, b2=b2, eps=eps), _adamax_scalars,
                           ("mu", "nu"), learning_rate, flat=flat_state)


def _adamax_scalars(hp, state):
    r"""The fused kernel's scalars: :math:`\beta_1, 1-\beta_1, \beta_2, \epsilon, 1-\beta_1^t`."""
    t = step_number(state.count, hp["b1"].dtype)
    return [hp["b1"], 1 - hp["b1"], hp["b2"], hp["eps"], bias_correction(hp["b1"], t)]
