"""Fromage: the per-layer step of relative size η, shrunk back onto the sphere by sqrt(1+η²)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2
from optimizers.contract.hyperparams import check_learning_rate, check_range, current_hyperparams, init_hyperparams
from optimizers.contract.layers import LayerAxes, check_layer_axes, leaf_layer_axes, per_layer, within
from optimizers.contract.registry import declare_optimizer, declare_state
from schedules import ScalarOrSchedule

_FORMS = ("paper", "optax")


@declare_state(elementwise=False)
class FromageState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": ...}


def _norm(x, dtype, n):
    x = x.astype(jnp.promote_types(x.dtype, dtype))
    return jnp.sqrt(jnp.sum(abs2(x), axis=within(x, n)))


def _ratio(p_norm, g_norm, min_norm, optax_form):
    r""":math:`\|\theta\| / \|g\|` per layer, 1 where a norm is zero (before the clip in the paper form)."""
    zero = (p_norm == 0) | (g_norm == 0)
    if min_norm is not None:
        p_norm, g_norm = jnp.maximum(p_norm, min_norm), jnp.maximum(g_norm, min_norm)
    if optax_form:
        zero = (p_norm == 0) | (g_norm == 0)
    return jnp.where(zero, 1.0, p_norm / jnp.where(zero, 1.0, g_norm))


@declare_optimizer(paper="Bernstein et al. 2020", update="`θ←(θ-γ‖θ‖/‖g‖ g)/√(1+γ²)` per layer",
                   test_kwargs=dict(learning_rate=lambda t: 0.3 / jnp.sqrt(1.0 + t)))
def fromage(learning_rate: ScalarOrSchedule, min_norm: Optional[float] = None, *, form: str = "paper",
            layer_axes: LayerAxes = None) -> optax.GradientTransformation:
    r"""Fromage (Frobenius matched gradient descent): a step of relative size :math:`\gamma_t` per layer.

    For every leaf (layer) :math:`\theta^{(i)}` with gradient :math:`g^{(i)}`:

    .. math::
        \theta^{(i)}_t = \frac{1}{\sqrt{1+\gamma_t^2}}
            \Big(\theta^{(i)}_{t-1} - \gamma_t \frac{\|\theta^{(i)}_{t-1}\|}{\|g^{(i)}_t\|} g^{(i)}_t\Big),

    returned as the update :math:`u_t = \theta_t - \theta_{t-1}`. ``form="paper"`` (the
    authors' code, and ``pytorch_optimizer.Fromage``): the ratio is 1 where
    :math:`\|\theta^{(i)}\| = 0`, so zero-initialised layers move by :math:`-\gamma g`, and a
    layer whose gradient is all zero is left unchanged (not shrunk): JAX's zero gradient of an
    unused or frozen leaf is PyTorch's ``grad=None``, which the authors' code skips.
    ``min_norm=c`` clips both norms from below by :math:`c` (for the layers
    whose norms are not zero). ``form="optax"`` (``optax.fromage``): both norms are clipped
    by ``min_norm`` (``None``: optax's :math:`10^{-6}`) and the ratio is 1 only where a
    clipped norm is zero. Norms are Frobenius norms of the leaf (of each layer with
    ``layer_axes``). The step needs ``params`` and is not followed by a learning-rate link:
    :math:`\gamma_t` enters twice.

    .. warning::
        A layer with an all-zero gradient is shrunk by :math:`1/\sqrt{1+\gamma^2}` in optax
        (and in PyTorch when its ``grad`` is a zero tensor, not ``None``); here it is left as it is
        unless ``form="optax"``.
        ``optax.fromage(learning_rate, min_norm=1e-6)`` clips a zero parameter norm to
        :math:`10^{-6}`: a zero-initialised layer (a bias) moves by
        :math:`10^{-6}\gamma g/\|g\|`, almost nothing, where the authors' code moves it by
        :math:`\gamma g`. ``form="optax"`` gives optax's; elsewhere the two agree up to the
        clip of norms under :math:`10^{-6}`.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`, or a schedule of it.
        min_norm: lower clip :math:`c \ge 0` of both norms, or ``None`` (none in the paper form,
            optax's :math:`10^{-6}` in the optax form).
        form: ``"paper"`` or ``"optax"``.
        layer_axes: the leading axes of each leaf that index stacked layers: one ratio per
            layer. ``None``: one per leaf.

    References:
        Bernstein, Vahdat, Yue & Liu, "On the distance between two neural networks and the
        stability of learning", NeurIPS 2020, Algorithm 1 (and the authors' ``fromage.py``).
    """
    check_learning_rate("fromage", learning_rate)
    if min_norm is not None:
        check_range("fromage", "min_norm", min_norm, 0.0)
    if form not in _FORMS:
        raise ValueError(f"fromage: form must be one of {_FORMS}, got {form!r}")
    check_layer_axes("fromage", layer_axes)
    optax_form = form == "optax"
    clip = 1e-6 if optax_form and min_norm is None else min_norm
    values = dict(learning_rate=learning_rate)

    def init_fn(params):
        leaf_layer_axes("fromage", layer_axes, params)  # a bad prefix fails here
        return FromageState(jnp.zeros([], jnp.int32), init_hyperparams(**values))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("fromage: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        lr = hp["learning_rate"]
        shrink = 1.0 / jnp.sqrt(1.0 + lr * lr)

        def step(g, p, n):
            ratio = per_layer(_ratio(_norm(p, lr.dtype, n), _norm(g, lr.dtype, n), clip, optax_form), g)
            wide = jnp.promote_types(g.dtype, lr.dtype)
            u = -lr * shrink * ratio * g.astype(wide) + (shrink - 1.0) * p.astype(wide)
            if not optax_form:  # a layer without gradient (JAX's zero, PyTorch's None) is left as it is
                u = jnp.where(per_layer(_norm(g, lr.dtype, n) == 0, g), 0.0, u)
            return u.astype(g.dtype)

        axes = leaf_layer_axes("fromage", layer_axes, params)
        out = jax.tree.map(step, updates, params, axes)
        return out, FromageState(optax.safe_increment(state.count), hp)

    return transformation("fromage", init_fn, update_fn)
