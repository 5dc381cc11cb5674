"""NovoGrad: momentum on gradients normalised by a per-leaf second moment of their norm."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, check_state_dtype, moment_dtype, store, store_like, zeros_in
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, current_hyperparams, given, init_hyperparams
from optimizers.contract.layers import LayerAxes, check_layer_axes, falls_back, leaf_layer_axes, per_layer, within
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('nu',), elementwise=False)
class ScaleByNovogradState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"b1": ..., "b2": ..., "eps": ..., "weight_decay": ...}
    mu: optax.Updates  # m_t, same tree and dtype as params
    nu: optax.Updates  # v_t, one scalar per leaf (per layer: shape p.shape[:k] with layer_axes), the leaf's dtype


def scale_by_novograd(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.25,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mu_dtype=None,
    *,
    nu_dtype=None,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""NovoGrad's direction, per leaf (layer) :math:`i`.

    .. math::
        v_1 = \|g_1\|^2, \quad m_1 = \frac{g_1}{\sqrt{v_1}} + \lambda w_1, \\
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \|g_t\|^2, \quad
        m_t = \beta_1 m_{t-1} + \frac{g_t}{\sqrt{v_t} + \epsilon} + \lambda w_t \quad (t > 1),

    and the direction is :math:`m_t`. :math:`\|g\|` is the Frobenius norm of the leaf, so
    :math:`v_t` is one scalar per leaf. A zero first gradient gives :math:`g_1/\sqrt{v_1} = 0`.

    .. warning::
        The first step has no :math:`\epsilon`, as in the paper and the update table of “Optimization algorithms in
        deep learning”;
        ``optax.scale_by_novograd`` divides by :math:`\sqrt{v_1} + \epsilon` there too (a
        relative difference of :math:`\epsilon/\|g_1\|` at step 1 that the momentum
        carries on). The first moment is not averaged (no :math:`1-\beta_1`), as in the
        paper, the table and optax.

    Args:
        b1: :math:`\beta_1 \in [0, 1)` (the table's 0.9).
        b2: :math:`\beta_2 \in [0, 1)` (the table's 0.25).
        eps: :math:`\epsilon > 0`.
        weight_decay: :math:`\lambda \ge 0`, added inside the momentum.
        eps_root: optax's :math:`\epsilon_{root} \ge 0` under the root, :math:`\sqrt{v_t + \epsilon_{root}}`
            (at every step, the first too, as optax), or ``None``.
        mu_dtype, nu_dtype: the dtypes of :math:`m_t` and of the per-leaf :math:`v_t`
            (saturating), or ``None`` (the params'); the update is computed in at least float32.
        layer_axes: the leading axes of each leaf that index stacked layers (a prefix tree
            of ints or a function of the params, see the scanned-layers guide): one
            :math:`v_t` per layer, of shape ``p.shape[:k]``. ``None``: one per leaf.

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
        Training of Deep Networks", arXiv:1905.11286, 2019, Algorithm 1.
    """
    check_range("scale_by_novograd", "b1", b1, 0.0, 1.0, high_open=True)
    check_range("scale_by_novograd", "b2", b2, 0.0, 1.0, high_open=True)
    check_range("scale_by_novograd", "eps", eps, 0.0, low_open=True)
    check_range("scale_by_novograd", "weight_decay", weight_decay, 0.0)
    if eps_root is not None:
        check_range("scale_by_novograd", "eps_root", eps_root, 0.0)
    check_state_dtype("scale_by_novograd", "mu_dtype", mu_dtype)
    check_state_dtype("scale_by_novograd", "nu_dtype", nu_dtype)
    check_layer_axes("scale_by_novograd", layer_axes)
    values = given(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, eps_root=eps_root)

    def init_fn(params):
        axes = leaf_layer_axes("scale_by_novograd", layer_axes, params)
        nu = jax.tree.map(lambda p, k: jnp.zeros(p.shape[:k], moment_dtype(p.dtype, nu_dtype, real=True)),
                          params, axes)
        return ScaleByNovogradState(jnp.zeros([], jnp.int32), init_hyperparams(**values),
                                    zeros_in(params, mu_dtype), nu)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_novograd: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        nu, dens = _second_moments(updates, state, hp, leaf_layer_axes("scale_by_novograd", layer_axes, params))
        b1_, wd = hp["b1"], hp["weight_decay"]
        wide = _widen(hp)
        mu = jax.tree.map(lambda g, w, m, den: b1_ * m + wide(g) / per_layer(den, g) + wd * w, updates, params,
                          state.mu, dens)
        out = jax.tree.map(lambda g, m: store(m, g.dtype), updates, mu)
        return out, ScaleByNovogradState(optax.safe_increment(state.count), hp, store_like(mu, state.mu),
                                         store_like(nu, state.nu))

    return transformation("scale_by_novograd", init_fn, update_fn)


def _widen(hp):
    """At least the hyperparameters' float type (float32 leaves stay float32)."""
    return lambda x: x.astype(jnp.promote_types(x.dtype, hp["b2"].dtype))


def _second_moments(updates, state, hp, axes=None):
    r"""Per leaf (per layer: ``axes``, see :func:`~optimizers.contract.layers.leaf_layer_axes`) :math:`v_t` and
    the denominator :math:`\sqrt{v_t} + \epsilon` (no :math:`\epsilon` at the first step; 1 where it
    is 0: a zero first gradient)."""
    first = state.count == 0
    b2_, wide = hp["b2"], _widen(hp)
    axes = jax.tree.map(lambda _: 0, updates) if axes is None else axes
    norm2 = jax.tree.map(lambda g, k: jnp.sum(abs2(wide(g)), axis=within(g, k)), updates, axes)
    nu = jax.tree.map(lambda n, v: jnp.where(first, n, b2_ * v + (1 - b2_) * n), norm2, state.nu)

    def denominator(v):
        root = jnp.sqrt(wide(v) + hp["eps_root"]) if "eps_root" in hp else jnp.sqrt(wide(v))
        den = root + jnp.where(first, 0.0, hp["eps"])
        return jnp.where(den == 0, 1.0, den)

    return nu, jax.tree.map(denominator, nu)


# Conformance: a per-leaf normalisation of scalar leaves is a sign step: a decaying rate settles it.
@declare_optimizer(paper="Ginsburg et al. 2019", update="`v=β₂v+(1-β₂)‖g‖²` per leaf; `m=β₁m+g/(√v+ε)+λθ; θ-=γm`",
                   test_kwargs=dict(learning_rate=lambda t: 0.01 * 0.9997**t))
def novograd(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.25,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: Optional[ScalarOrSchedule] = None,
    weight_decay: ScalarOrSchedule = 0.0,
    *,
    mu_dtype=None,
    nu_dtype=None,
    fused: bool = False,
    flat_state: bool = False,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""NovoGrad: :math:`\theta_t = \theta_{t-1} - \gamma_t m_t` (:func:`scale_by_novograd`).

    ``fused=True``: on the CPU, XLA's per-leaf sums of squares, then the moment and the params
    in one pass over memory (see :func:`adam`), 24 bytes per float32 parameter in place;
    ``flat_state``: :math:`m` as one flat float32 array (see :func:`adam`). ``eps_root``,
    ``mu_dtype``, ``nu_dtype``: see :func:`scale_by_novograd` (the kernel has ``eps_root``; with a
    state dtype other than float32 the chain runs). ``layer_axes``: one :math:`v_t` per stacked
    layer (see :func:`scale_by_novograd`); with it ``fused=True`` runs the unfused chain (the
    kernel takes one denominator per leaf).

    .. warning::
        ``optax.novograd`` defaults to ``eps=1e-6`` and adds it at the first step too; the
        table's :math:`\epsilon = 10^{-8}` is the default here (see :func:`scale_by_novograd`).

    References:
        Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
        Training of Deep Networks", arXiv:1905.11286, 2019, Algorithm 1.
    """
    chain = optax.chain(scale_by_novograd(b1, b2, eps, weight_decay=weight_decay, eps_root=eps_root,
                                          mu_dtype=mu_dtype,
                                          nu_dtype=nu_dtype, layer_axes=layer_axes),
                        scale_by_learning_rate(learning_rate))
    return accelerated("novograd", chain, fused=fused, flat_state=flat_state,
                       unsupported=fused and falls_back("novograd", layer_axes, flat_state),
                       learning_rate=learning_rate, second_moments=_second_moments,
                       values=given(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, eps_root=eps_root))
