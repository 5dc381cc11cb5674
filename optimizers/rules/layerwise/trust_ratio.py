"""Layer-wise trust ratios (one per pytree leaf): the trust ratio itself, LARS and LAMB."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.adaptive.adam import scale_by_adam
from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import _is_number, check_range, current_hyperparams, given, init_hyperparams
from optimizers.contract.layers import LayerAxes, check_layer_axes, falls_back, leaf_layer_axes, per_layer, within
from optimizers.rules.momentum.momentum import trace
from optimizers.rules.scaling import MaskOrFn, add_decayed_weights, leaf_masks, scale_by_learning_rate
from schedules import ScalarOrSchedule

_INF = float("inf")


def _norm(x, dtype, n=0):
    """The L2 norm of a whole leaf (of each layer, over all but ``n`` leading axes), in ``dtype`` or wider."""
    x = x.astype(jnp.promote_types(x.dtype, dtype))
    return jnp.sqrt(jnp.sum(abs2(x), axis=within(x, n)))


def _ratio(coefficient, num, den, zero):
    """``coefficient * num / den``, or 1 where ``zero`` (a zero norm), without dividing by zero."""
    return jnp.where(zero, 1.0, coefficient * num / jnp.where(zero, 1.0, den))


def _check_eps(owner, eps):
    if eps is not None:  # 0 (optax's default) is fine: a zero norm gives a ratio of 1, no division by it
        check_range(owner, "eps", eps, 0.0)


@declare_state(elementwise=False)
class ScaleByTrustRatioState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"trust_coefficient": ...} and "eps" when one is given


def scale_by_trust_ratio(
    min_norm: Optional[float] = None,
    trust_coefficient: ScalarOrSchedule = 1.0,
    eps: Optional[ScalarOrSchedule] = None,
    *,
    min_param_norm: float = 0.0,
    max_param_norm: float = _INF,
    mask: MaskOrFn = None,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""Rescales each leaf's update by the trust ratio :math:`\eta\,\phi(\|\theta\|) / \|u\|`.

    For every leaf (layer) :math:`\theta^{(i)}` with incoming update :math:`u^{(i)}`:

    .. math::
        \phi(z) = \min(\max(z, \gamma_l), \gamma_u), \quad
        d^{(i)} = \frac{\eta\, \phi(\|\theta^{(i)}\|)}{\|u^{(i)}\| + \epsilon}\, u^{(i)},

    and :math:`d^{(i)} = u^{(i)}` (ratio 1) where :math:`\phi(\|\theta^{(i)}\|) = 0` or
    :math:`\|u^{(i)}\| = 0`, so zero-initialised leaves still move and nothing divides by
    zero. Norms are Frobenius norms of the whole leaf (of each layer, with ``layer_axes``).

    The defaults (:math:`\eta = 1`, no :math:`\epsilon`, :math:`\phi(z) = z`) are LAMB's
    ratio and ``optax.scale_by_trust_ratio()``. After :func:`trace` this is the table's
    LARS row, :math:`\|\theta\| / \|m_t\|` applied to the momentum.

    .. warning::
        ``optax.scale_by_trust_ratio(min_norm=c)`` clips both norms from below by
        :math:`c`; the paper's :math:`\phi` (``min_param_norm``, ``max_param_norm``) clips only
        the parameter norm. ``min_norm=c`` here is optax's: both norms at least :math:`c` (so
        with :math:`c > 0` the ratio is never the rule of one). With the defaults all agree.

    Args:
        trust_coefficient: :math:`\eta > 0`.
        eps: :math:`\epsilon \ge 0` added to :math:`\|u\|`, or ``None`` for none (optax's 0).
        min_param_norm: :math:`\gamma_l \ge 0`, lower clip of :math:`\|\theta\|`.
        max_param_norm: :math:`\gamma_u > 0` (at least :math:`\gamma_l`), upper clip.
        mask: leaves to rescale, as in :func:`add_decayed_weights`; ``False`` leaves pass
            through unchanged (biases, norm scales).
        min_norm: optax's lower clip :math:`c \ge 0` of both norms, or ``None`` for none.
        layer_axes: the leading axes of each leaf that index stacked layers (a prefix tree
            of ints or a function of the params, see the scanned-layers guide): one
            ratio
            per layer. ``None``: one per leaf.

    References:
        You, Li, Reddi et al., "Large Batch Optimization for Deep Learning: Training BERT in
        76 minutes", ICLR 2020, Section 3.1 (:math:`\phi`) and Algorithm 2.
    """
    check_range("scale_by_trust_ratio", "trust_coefficient", trust_coefficient, 0.0, low_open=True)
    _check_eps("scale_by_trust_ratio", eps)
    if min_norm is not None:
        check_range("scale_by_trust_ratio", "min_norm", min_norm, 0.0)
    check_range("scale_by_trust_ratio", "min_param_norm", min_param_norm, 0.0, _INF, high_open=True)
    check_range("scale_by_trust_ratio", "max_param_norm", max_param_norm, 0.0, low_open=True)
    if _is_number(min_param_norm) and _is_number(max_param_norm):
        check_range("scale_by_trust_ratio", "max_param_norm", max_param_norm, min_param_norm)
    check_layer_axes("scale_by_trust_ratio", layer_axes)
    values = given(trust_coefficient=trust_coefficient, eps=eps)

    def init_fn(params):
        leaf_layer_axes("scale_by_trust_ratio", layer_axes, params)  # a bad prefix fails here
        return ScaleByTrustRatioState(jnp.zeros([], jnp.int32), init_hyperparams(**values))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_trust_ratio: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        coefficient = hp["trust_coefficient"]

        def scale(u, p, on, n):
            if not on:
                return u
            p_norm = jnp.clip(_norm(p, coefficient.dtype, n), min_param_norm, max_param_norm)
            u_norm = _norm(u, coefficient.dtype, n)
            if min_norm is not None:
                p_norm, u_norm = jnp.maximum(p_norm, min_norm), jnp.maximum(u_norm, min_norm)
            ratio = _ratio(coefficient, p_norm, u_norm + hp.get("eps", 0.0), (p_norm == 0) | (u_norm == 0))
            return (per_layer(ratio, u) * u).astype(u.dtype)

        axes = leaf_layer_axes("scale_by_trust_ratio", layer_axes, params)
        updates = jax.tree.map(scale, updates, params, leaf_masks(mask, params), axes)
        return updates, ScaleByTrustRatioState(optax.safe_increment(state.count), hp)

    return transformation("scale_by_trust_ratio", init_fn, update_fn)


@declare_state(elementwise=False)
class ScaleByLarsState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"weight_decay": ..., "trust_coefficient": ...} and "eps" when given


def scale_by_lars(weight_decay: ScalarOrSchedule = 0.0, trust_coefficient: ScalarOrSchedule = 0.001,
                  eps: Optional[ScalarOrSchedule] = None, weight_decay_mask: MaskOrFn = None,
                  trust_ratio_mask: MaskOrFn = None, *, layer_axes: LayerAxes = None
                  ) -> optax.GradientTransformation:
    r"""LARS's direction before the momentum: the decayed gradient times the local learning rate.

    For every leaf (layer) :math:`w^{(i)}`, with :math:`\beta` the weight decay:

    .. math::
        \lambda^{(i)} = \frac{\eta\, \|w^{(i)}\|}{\|g^{(i)}\| + \beta \|w^{(i)}\| + \epsilon},
        \quad d^{(i)} = \lambda^{(i)} (g^{(i)} + \beta w^{(i)}),

    with :math:`\lambda^{(i)} = 1` where :math:`\|w^{(i)}\| = 0` or
    :math:`\|g^{(i)}\| + \beta\|w^{(i)}\| = 0`. A leaf that ``weight_decay_mask`` leaves
    out has :math:`\beta = 0` (in the ratio too); one that ``trust_ratio_mask`` leaves out
    has :math:`\lambda = 1`.

    .. warning::
        The paper divides by :math:`\|g\| + \beta\|w\|`; ``optax.lars`` (decay, then
        ``scale_by_trust_ratio``) divides by :math:`\|g + \beta w\|`, which is smaller
        unless :math:`g` and :math:`w` are parallel. The two agree when
        ``weight_decay=0``.

    Args:
        weight_decay: :math:`\beta \ge 0`.
        trust_coefficient: :math:`\eta > 0` (the paper's LARS coefficient, 0.001).
        eps: :math:`\epsilon \ge 0` added to the denominator, or ``None`` (the paper) for none.
        weight_decay_mask: leaves to decay, as in :func:`add_decayed_weights`.
        trust_ratio_mask: leaves to rescale; ``False`` leaves keep :math:`\lambda = 1`.
        layer_axes: one :math:`\lambda` per stacked layer, as in :func:`scale_by_trust_ratio`.

    References:
        You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks",
        arXiv:1708.03888, 2017, Eq. (6) and Algorithm 1.
    """
    check_range("scale_by_lars", "weight_decay", weight_decay, 0.0)
    check_range("scale_by_lars", "trust_coefficient", trust_coefficient, 0.0, low_open=True)
    _check_eps("scale_by_lars", eps)
    check_layer_axes("scale_by_lars", layer_axes)
    values = given(weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps)

    def init_fn(params):
        leaf_layer_axes("scale_by_lars", layer_axes, params)  # a bad prefix fails here
        return ScaleByLarsState(jnp.zeros([], jnp.int32), init_hyperparams(**values))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_lars: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        beta, coefficient = hp["weight_decay"], hp["trust_coefficient"]

        def scale(g, w, decay_on, ratio_on, n):
            b = beta if decay_on else jnp.zeros_like(beta)
            d = g + b * w
            if ratio_on:
                w_norm, g_norm = _norm(w, beta.dtype, n), _norm(g, beta.dtype, n)
                den = g_norm + b * w_norm
                ratio = _ratio(coefficient, w_norm, den + hp.get("eps", 0.0), (w_norm == 0) | (den == 0))
                d = per_layer(ratio, d) * d
            return d.astype(g.dtype)

        masks = leaf_masks(weight_decay_mask, params), leaf_masks(trust_ratio_mask, params)
        updates = jax.tree.map(scale, updates, params, *masks, leaf_layer_axes("scale_by_lars", layer_axes, params))
        return updates, ScaleByLarsState(optax.safe_increment(state.count), hp)

    return transformation("scale_by_lars", init_fn, update_fn)


# Conformance: a per-leaf trust ratio on scalar leaves is a sign step of size lr |x|: a decaying rate settles it.
@declare_optimizer(paper="You, Gitman & Ginsburg 2017", update="`λ=η‖θ‖/(‖g‖+β‖θ‖)` per leaf; `m=μm+γλ(g+βθ); θ-=m`",
                   test_kwargs=dict(learning_rate=lambda t: 50.0 * 0.999**t, eps=1e-8))
def lars(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule = 0.0, weight_decay_mask: MaskOrFn = None,
         trust_coefficient: ScalarOrSchedule = 0.001, eps: Optional[ScalarOrSchedule] = None,
         trust_ratio_mask: MaskOrFn = None, momentum: ScalarOrSchedule = 0.9,
         nesterov: bool = False, *, fused: bool = False, flat_state: bool = False,
         layer_axes: LayerAxes = None) -> optax.GradientTransformation:
    r"""LARS: momentum SGD on the layer-wise rescaled, decayed gradient (paper, Algorithm 1).

    .. math::
        m_t = \mu m_{t-1} + \gamma_t d_t, \quad \theta_t = \theta_{t-1} - m_t

    with :math:`d_t` from :func:`scale_by_lars` (:math:`\eta\|w\|/(\|g\|+\beta\|w\|)`
    applied to :math:`g + \beta w`) and :func:`trace`'s momentum (Nesterov optional).
    The arguments are ``optax.lars``'s, in its order, with defaults that mean the same
    (``None`` masks and ``eps`` for its ``True`` and ``0.0``).

    .. warning::
        * The update table of “Optimization algorithms in deep learning” applies
          :math:`\|\theta\|/\|m_t\|` to the momentum instead, after it: that is ``optax.chain(trace(momentum), scale_by_trust_ratio(),
          scale_by_learning_rate(lr))``. The paper's form, here, rescales before it.
        * The learning rate sits inside the momentum, as in the paper and ``optax.lars``;
          ``torch.optim.SGD`` multiplies the buffer instead (:math:`\theta_t =
          \theta_{t-1} - \gamma_t m_t`, :math:`m_t = \mu m_{t-1} + d_t`). The two are equal
          for a constant learning rate; with a schedule PyTorch's form is
          ``optax.chain(scale_by_lars(...), trace(momentum), scale_by_learning_rate(lr))``.
        * With ``weight_decay > 0``, ``optax.lars`` divides by :math:`\|g + \beta w\|`
          (see :func:`scale_by_lars`); equal when ``weight_decay=0``.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.
        weight_decay, weight_decay_mask, trust_coefficient, eps, trust_ratio_mask: as in
            :func:`scale_by_lars`.
        momentum: :math:`\mu \in [0, 1)` (the table's 0.9).
        nesterov: Nesterov momentum.
        fused: the same update as two passes over memory on the CPU (the norms of each
            leaf, then the momentum and params; see :func:`adam`).
        flat_state: with ``fused``, the momentum as one flat float32 array (see :func:`adam`).
        layer_axes: one local learning rate per stacked layer (see :func:`scale_by_lars`);
            with it ``fused=True`` runs the unfused chain (the kernel takes one per leaf).

    References:
        You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks",
        arXiv:1708.03888, 2017, Algorithm 1.
    """
    check_range("lars", "momentum", momentum, 0.0, 1.0, high_open=True)
    chain = optax.chain(
        scale_by_lars(weight_decay, trust_coefficient, eps, weight_decay_mask, trust_ratio_mask, layer_axes=layer_axes),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov),
    )
    return accelerated("lars", chain, fused=fused, flat_state=flat_state,
                       unsupported=fused and falls_back("lars", layer_axes, flat_state), learning_rate=learning_rate,
                       values=given(weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps),
                       momentum=momentum, nesterov=bool(nesterov), weight_decay_mask=weight_decay_mask,
                       trust_ratio_mask=trust_ratio_mask)


# Conformance: a per-leaf trust ratio on scalar leaves is a sign step of size lr |x|: a decaying rate settles it.
@declare_optimizer(paper="You et al. 2020", update="`r=m̂/(√v̂+ε)+λθ; θ-=γ·φ(‖θ‖)/‖r‖·r` per leaf",
                   test_kwargs=dict(learning_rate=lambda t: 0.01 * 0.9997**t, min_param_norm=0.1))
def lamb(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    trust_ratio_mask: MaskOrFn = None,
    min_param_norm: float = 0.0,
    max_param_norm: float = _INF,
    mu_dtype=None,
    nu_dtype=None,
    fused: bool = False,
    flat_state: bool = False,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""LAMB: Adam's direction plus decoupled decay, rescaled per leaf by :math:`\phi(\|\theta\|)/\|r\|`.

    .. math::
        r_t = \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda \theta_{t-1}, \quad
        \theta_t = \theta_{t-1} - \gamma_t \frac{\phi(\|\theta_{t-1}\|)}{\|r_t\|} r_t
        \ \text{(per leaf)}

    :func:`scale_by_adam`, :func:`add_decayed_weights`, :func:`scale_by_trust_ratio`,
    :func:`scale_by_learning_rate`. With ``weight_decay=0`` it is the table's LAMB row.

    .. warning::
        The table (and here) :math:`\epsilon = 10^{-8}`; ``optax.lamb`` defaults to
        ``eps=1e-6``. optax has no ``trust_ratio_mask`` or :math:`\phi` bounds; with
        ``eps`` equal and the other defaults the two are the same.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.
        b1, b2, eps: as in :func:`scale_by_adam`.
        weight_decay: decoupled decay :math:`\lambda \ge 0`.
        mask: leaves to decay (optax's name), as in :func:`add_decayed_weights`.
        trust_ratio_mask: leaves to rescale; others take plain AdamW steps.
        min_param_norm, max_param_norm: the bounds of :math:`\phi` (identity by default),
            as in :func:`scale_by_trust_ratio`.
        eps_root, mu_dtype, nu_dtype: as in :func:`scale_by_adam` (with ``eps_root``, or a
            state dtype other than float32, ``fused=True`` runs the chain).
        fused: the same update as two passes over memory on the CPU (the moments and both
            norms of each leaf, then the params; see :func:`adam`).
        flat_state: with ``fused``, the moments as one flat float32 array each (see :func:`adam`).
        layer_axes: one trust ratio per stacked layer (see :func:`scale_by_trust_ratio`);
            with it ``fused=True`` runs the unfused chain (the kernel takes one per leaf).

    References:
        You, Li, Reddi et al., "Large Batch Optimization for Deep Learning: Training BERT in
        76 minutes", ICLR 2020, Algorithm 2.
    """
    chain = optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(min_param_norm=min_param_norm, max_param_norm=max_param_norm, mask=trust_ratio_mask,
                             layer_axes=layer_axes),
        scale_by_learning_rate(learning_rate),
    )
    unsupported = fused and (falls_back("lamb", layer_axes, flat_state)
                             or (None if eps_root is None else "its kernel has no eps_root"))
    return accelerated("lamb", chain, fused=fused, flat_state=flat_state, unsupported=unsupported,
                       learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask,
                       trust_ratio_mask=trust_ratio_mask, min_param_norm=min_param_norm, max_param_norm=max_param_norm)
