"""SM3: AdaGrad with one accumulator per row, per column (per index of each dim) of a tensor."""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.momentum.ema import scale_by_ema
from optimizers.contract.backend import accelerated
from optimizers.contract.dtypes import abs2, check_state_dtype, moment_dtype, store
from optimizers.contract.hyperparams import check_range, current_hyperparams, either, given, init_hyperparams, is_zero
from optimizers.contract.layers import (LayerAxes, check_layer_axes, falls_back, leaf_layer_axes, over_layers,
                                        update_layer_axes)
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule

_VARIANTS = ("I", "II")


def _others(ndim, axis):
    """Every axis of a rank-``ndim`` leaf but ``axis`` (none for a scalar)."""
    return tuple(a for a in range(ndim) if a != axis)


def _cover_axes(ndim):
    """One family of covers per dim; a scalar is its own single cover."""
    return range(max(ndim, 1))


def _max_over_covers(x, ndim):
    """For each dim, the max of ``x >= 0`` over each cover (the entries sharing an index of that dim).

    0 over an empty cover (a zero-size leaf), where ``jnp.max`` alone has no identity; a
    vector's covers are its entries (no reduction).
    """
    axes = [_others(ndim, a) for a in _cover_axes(ndim)]
    return [jnp.max(x, axis=ax, initial=0.0) if ax else x for ax in axes]


def _min_of_covers(accumulators, ndim):
    r""":math:`\nu(i) = \min_{r: S_r \ni i} \mu(r)`, broadcast to the leaf's shape."""
    return functools.reduce(jnp.minimum, [jnp.expand_dims(acc, _others(ndim, a))
                                          for a, acc in zip(_cover_axes(ndim), accumulators)])


def _split(flat, shape):
    """The accumulators of a leaf, stored end to end: one (n_d,) per dim, or one () for a scalar."""
    sizes = list(shape) or [1]
    pieces = jnp.split(flat, list(itertools.accumulate(sizes))[:-1])
    return [a.reshape((n,) if shape else ()) for a, n in zip(pieces, sizes)]


@declare_state(nonnegative=('mu',), elementwise=False)
class ScaleBySm3State(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"eps_root": ...}
    mu: optax.Updates  # per leaf, its accumulators end to end: shape (sum(p.shape),), or (1,) for a scalar;
    # with k layer axes, per layer: shape p.shape[:k] + (sum(p.shape[k:]) or 1,)


def scale_by_sm3(
    b1: Optional[ScalarOrSchedule] = None,
    b2: Optional[ScalarOrSchedule] = None,
    eps: Optional[ScalarOrSchedule] = None,
    *,
    eps_root: Optional[ScalarOrSchedule] = None,
    variant: str = "I",
    nu_dtype=None,
    mu_dtype=None,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""Divides by the root of SM3's cover-wise accumulated squared gradients.

    The covers of a rank-:math:`k` leaf are, for each dim, the slices sharing one index of
    it (rows and columns of a matrix); a vector's covers are its single entries and a
    scalar is one cover, so vectors and scalars get exact AdaGrad. ``variant="I"``
    (SM3-I, the update table of “Optimization algorithms in deep learning”):

    .. math::
        \mu_t(r) = \mu_{t-1}(r) + \max_{j \in S_r} g_t(j)^2, \qquad
        \nu_t(i) = \min_{r: S_r \ni i} \mu_t(r)

    ``variant="II"`` (SM3-II, the paper's recommendation, optax's form; tighter,
    :math:`\nu'_t \le \nu_t`):

    .. math::
        \nu'_t(i) = \min_{r: S_r \ni i} \mu'_{t-1}(r) + g_t(i)^2, \qquad
        \mu'_t(r) = \max_{j \in S_r} \nu'_t(j)

    and then :math:`u_t(i) = g_t(i) / \sqrt{\nu_t(i) + \epsilon}` with the paper's
    convention :math:`0/0 = 0` (:math:`\nu_t(i) = 0` only where :math:`g_t(i) = 0`). A
    ``(1024, 512)`` matrix keeps 1024 + 512 accumulators.

    .. warning::
        ``optax.sm3(lr)`` is ``sm3(lr, momentum=0.9, eps_root=1e-8, variant="II")``: SM3-II,
        momentum 0.9 and :math:`\epsilon = 10^{-8}` inside the root by default, a full-size
        momentum buffer even when ``momentum=0``, and an error on scalar (0-d) leaves. The
        paper and the table have no :math:`\epsilon` (``eps_root=0``) and no momentum.
        ``optax.scale_by_sm3(b1, b2, eps)`` is SM3-II (``variant="II"``); its ``eps`` is
        ``eps_root`` here (the other spelling; give one), its ``b1`` a momentum
        :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) u_t` after the division
        (:func:`~optimizers.rules.momentum.ema.scale_by_ema`, so the state is then a pair), its ``b2`` a
        decay of the accumulators: :math:`\mu_t(r) = \beta_2 \mu_{t-1}(r) + (1-\beta_2)\max_{j}
        g_t(j)^2` (SM3-I), :math:`\nu'_t(i) = \beta_2 \min_r \mu'_{t-1}(r) + (1-\beta_2) g_t(i)^2`
        (SM3-II); :math:`\beta_2 = 1` is the paper's sum. optax's defaults ``b1=0.9``,
        ``eps=1e-8`` are not the paper's; here ``None`` is (no momentum, no :math:`\epsilon`).

    Args:
        eps_root: :math:`\epsilon \ge 0` inside the root (0), or optax's spelling ``eps``.
        variant: ``"I"`` (SM3-I) or ``"II"`` (SM3-II).
        b1: momentum :math:`\beta_1 \in [0, 1)`, or ``None`` (none).
        b2: accumulator decay :math:`\beta_2 \in [0, 1]`, or ``None`` (1: the sum).
        eps: optax's name for ``eps_root``.
        nu_dtype: the accumulators' dtype (saturating), or ``None`` (the params' real dtype).
        mu_dtype: the momentum's dtype (with ``b1``), or ``None`` (the params').
        layer_axes: the leading axes of each leaf that index stacked layers (a prefix tree
            of ints or a function of the params, see the scanned-layers guide): the
            covers
            are those of each layer, its accumulators kept per layer (layer axes first).
            ``None``: the covers of the whole leaf.

    References:
        Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive Optimization", NeurIPS 2019,
        Algorithm 1 (SM3-I) and Algorithm 2 (SM3-II).
    """
    check_range("scale_by_sm3", "eps", eps, 0.0)
    eps_root = either("scale_by_sm3", "eps_root", eps_root, "eps", eps, default=0.0)
    check_range("scale_by_sm3", "eps_root", eps_root, 0.0)
    if b2 is not None:
        check_range("scale_by_sm3", "b2", b2, 0.0, 1.0)
    check_state_dtype("scale_by_sm3", "nu_dtype", nu_dtype)
    check_state_dtype("scale_by_sm3", "mu_dtype", mu_dtype)
    if variant not in _VARIANTS:
        raise ValueError(f"scale_by_sm3: variant must be 'I' or 'II', got {variant!r}")
    check_layer_axes("scale_by_sm3", layer_axes)
    if b1 is not None:
        check_range("scale_by_sm3", "b1", b1, 0.0, 1.0, high_open=True)
        core = scale_by_sm3(eps_root=eps_root, variant=variant, b2=b2, nu_dtype=nu_dtype, layer_axes=layer_axes)
        return optax.chain(core, scale_by_ema(b1, mu_dtype))
    values = given(eps_root=eps_root, b2=b2)

    def zeros(p, k):
        layer = p.shape[k:]
        return jnp.zeros(p.shape[:k] + (sum(layer) if layer else 1,), moment_dtype(p.dtype, nu_dtype, real=True))

    def init_fn(params):
        mu = jax.tree.map(zeros, params, leaf_layer_axes("scale_by_sm3", layer_axes, params))
        return ScaleBySm3State(jnp.zeros([], jnp.int32), init_hyperparams(**values), mu)

    def update_leaf(g, flat, eps, decay):
        x, old = g.astype(jnp.promote_types(g.dtype, eps.dtype)), _split(flat, g.shape)
        if decay is None:
            keep, take = (lambda a: a), (lambda a: a)
        else:  # b2 = 1 is the sum: its new term keeps the weight 1
            keep, take = (lambda a: decay * a), (lambda a: jnp.where(decay == 1, 1.0, 1 - decay) * a)
        old = [a.astype(x.real.dtype) for a in old]
        if variant == "I":
            new = [keep(acc) + take(m) for acc, m in zip(old, _max_over_covers(abs2(x), g.ndim))]
            nu = _min_of_covers(new, g.ndim)
        else:
            nu = keep(_min_of_covers(old, g.ndim)) + take(abs2(x))
            new = _max_over_covers(nu, g.ndim)
        u = jnp.where(nu > 0, x * jax.lax.rsqrt(jnp.where(nu > 0, nu + eps, 1.0)), 0.0)
        return store(u, g.dtype), store(jnp.concatenate([jnp.ravel(acc) for acc in new]), flat.dtype)

    def update_fn(updates, state, params=None):
        hp = current_hyperparams(values, state.hyperparams, state.count)
        axes = update_layer_axes("scale_by_sm3", layer_axes, updates, params)
        leaf = lambda x, f: update_leaf(x, f, hp["eps_root"], hp.get("b2"))  # noqa: E731
        out = jax.tree.map(lambda g, flat, k: over_layers(leaf, k)(g, flat), updates, state.mu, axes)
        u = jax.tree.map(lambda _, o: o[0], updates, out)
        mu = jax.tree.map(lambda _, o: o[1], updates, out)
        return u, ScaleBySm3State(optax.safe_increment(state.count), hp, mu)

    return transformation("scale_by_sm3", init_fn, update_fn)


@declare_optimizer(paper="Anil, Gupta, Koren & Singer 2019",
                   update="`μ(r)+=max_{S_r}g²`, `ν=min_{r∋i}μ(r)`; `θ-=γ g/√ν`",
                   test_kwargs=dict(learning_rate=0.3))
def sm3(
    learning_rate: ScalarOrSchedule,
    momentum: Optional[ScalarOrSchedule] = None,
    *,
    eps_root: ScalarOrSchedule = 0.0,
    variant: str = "I",
    nu_dtype=None,
    mu_dtype=None,
    fused: bool = False,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""SM3: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`scale_by_sm3`), memory linear in the dims.

    With ``momentum`` :math:`\beta`, :math:`u_t` is first averaged,
    :math:`m_t = \beta m_{t-1} + (1-\beta) u_t` (:func:`~optimizers.rules.momentum.ema.scale_by_ema`,
    optax's momentum), at the cost of a full-size buffer.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.
        momentum: :math:`\beta \in [0, 1)`, or ``None`` (the paper's SM3, no momentum).
        eps_root, variant, nu_dtype: see :func:`scale_by_sm3`.
        mu_dtype: the momentum buffer's dtype, or ``None`` (the params').
        fused: the same update on the CPU as one pass over memory (SM3-II; SM3-I reads the
            gradient once more for the covers' maxima first), the maxima taken in the same pass
            (see :func:`adam`); for a state dtype other than float32 the chain runs.
        layer_axes: the covers of each stacked layer (see :func:`scale_by_sm3`); with it
            ``fused=True`` runs the unfused chain (the kernel takes the covers of whole leaves).
    """
    check_state_dtype("sm3", "mu_dtype", mu_dtype)
    if momentum is not None:
        check_range("sm3", "momentum", momentum, 0.0, 1.0, high_open=True)
    chain = optax.chain(
        scale_by_sm3(eps_root=eps_root, variant=variant, nu_dtype=nu_dtype, layer_axes=layer_axes),
        optax.identity() if is_zero(momentum) else scale_by_ema(momentum, mu_dtype),
        scale_by_learning_rate(learning_rate),
    )
    return accelerated("sm3", chain, fused=fused, unsupported=fused and falls_back("sm3", layer_axes),
                       learning_rate=learning_rate, eps_root=eps_root, momentum=momentum, two=variant == "II",
                       has_momentum=not is_zero(momentum))
