r"""Adafactor's links after the factored second moments: update clipping, the parameter scale, the
relative step, and optax's decay of the weights after the step (see :func:`~optimizers.adafactor`)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, store
from optimizers.contract.hyperparams import check_range, current_hyperparams, either, float_dtype, init_hyperparams
from optimizers.contract.layers import (LayerAxes, check_layer_axes, leaf_layer_axes, per_layer, update_layer_axes,
                                        within)
from optimizers.contract.moments import step_number
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import AddDecayedWeightsState, MaskOrFn, leaf_masks
from schedules import ScalarOrSchedule


def _rms(x, dtype, n=0):
    """The root mean square of a whole leaf (of each layer, over all but ``n`` leading axes), broadcast
    against it, computed in ``dtype`` (or wider)."""
    x = x.astype(jnp.promote_types(x.dtype, dtype))
    return per_layer(jnp.sqrt(jnp.mean(abs2(x), axis=within(x, n))), x)


@declare_state(elementwise=False)
class ClipByBlockRmsState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {}: the threshold is a constant


def clip_by_block_rms(
    threshold: Optional[float] = None,
    *,
    clipping_threshold: Optional[float] = None,
    layer_axes: LayerAxes = None,
) -> optax.GradientTransformation:
    r"""Update clipping: scales each leaf down to a root mean square of at most :math:`d`.

    .. math::
        \hat U_t = \frac{U_t}{\max(1, \mathrm{RMS}(U_t) / d)}, \qquad
        \mathrm{RMS}(U) = \sqrt{\operatorname{mean}(U^2)}

    The same as ``optax.clip_by_block_rms``. the update table of “Optimization algorithms in deep learning” writes
    :math:`\|u_t\|`;
    the paper, optax and PyTorch use the root mean square.

    Args:
        clipping_threshold: :math:`d \ge 1` (1).
        threshold: optax's name for ``clipping_threshold`` (give one).
        layer_axes: clip each stacked layer by its own RMS (see the scanned-layers guide; a
            function of the params is given the updates when ``update`` gets no params).

    References:
        Shazeer & Stern, ICML 2018, Section 6 (update clipping).
    """
    check_range("clip_by_block_rms", "threshold", threshold, 1.0)
    clipping_threshold = either("clip_by_block_rms", "clipping_threshold", clipping_threshold, "threshold", threshold,
                                default=1.0)
    check_range("clip_by_block_rms", "clipping_threshold", clipping_threshold, 1.0)
    check_layer_axes("clip_by_block_rms", layer_axes)

    def init_fn(params):
        leaf_layer_axes("clip_by_block_rms", layer_axes, params)  # a bad prefix fails here
        return ClipByBlockRmsState(jnp.zeros([], jnp.int32), init_hyperparams())

    def update_fn(updates, state, params=None):
        dtype = float_dtype()
        updates = jax.tree.map(
            lambda u, k: (u / jnp.maximum(1.0, _rms(u, dtype, k) / clipping_threshold)).astype(u.dtype), updates,
            update_layer_axes("clip_by_block_rms", layer_axes, updates, params))
        return updates, ClipByBlockRmsState(optax.safe_increment(state.count), state.hyperparams)

    return transformation("clip_by_block_rms", init_fn, update_fn)


@declare_state(elementwise=False)
class ScaleByParamBlockRmsState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {}: the floor is a constant


def scale_by_param_block_rms(min_scale: float = 1e-3, *, layer_axes: LayerAxes = None) -> optax.GradientTransformation:
    r"""Multiplies each leaf by the scale of its parameters, floored at :math:`\epsilon_2`.

    .. math::
        d_t = \max\bigl(\epsilon_2, \mathrm{RMS}(X_{t-1})\bigr)\, \hat U_t

    so that the learning rate is a *relative* step; the floor lets zero-initialised leaves
    move. The same as ``optax.scale_by_param_block_rms``; the update table of “Optimization algorithms in deep
    learning” writes
    :math:`\|\theta_{t-1}\|` for the root mean square.

    Args:
        min_scale: :math:`\epsilon_2 > 0` (:math:`10^{-3}`).
        layer_axes: the scale of each stacked layer (see the scanned-layers guide).

    References:
        Shazeer & Stern, ICML 2018, Section 8 (relative step size), Algorithms 4 and 5.
    """
    check_range("scale_by_param_block_rms", "min_scale", min_scale, 0.0, low_open=True)
    check_layer_axes("scale_by_param_block_rms", layer_axes)

    def init_fn(params):
        leaf_layer_axes("scale_by_param_block_rms", layer_axes, params)  # a bad prefix fails here
        return ScaleByParamBlockRmsState(jnp.zeros([], jnp.int32), init_hyperparams())

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_param_block_rms: update needs params, got params=None")
        dtype = float_dtype()
        updates = jax.tree.map(lambda u, p, k: store(u * jnp.maximum(min_scale, _rms(p, dtype, k)), u.dtype),
                               updates, params, leaf_layer_axes("scale_by_param_block_rms", layer_axes, params))
        return updates, ScaleByParamBlockRmsState(optax.safe_increment(state.count), state.hyperparams)

    return transformation("scale_by_param_block_rms", init_fn, update_fn)


@declare_state(elementwise=True)
class ScaleByRelativeStepState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": gamma of the latest update}


@declare_optimizer(paper="", update="",
                   test_kwargs=dict(learning_rate=2e-3))
def scale_by_relative_step(learning_rate: ScalarOrSchedule = 1e-2) -> optax.GradientTransformation:
    r"""Scales by the relative step size, decaying as :math:`1/\sqrt t` and capped: :math:`u_t = -\rho_t d_t`.

    .. math::
        \rho_t = \min\bigl(\gamma_t, 1/\sqrt{t}\bigr)

    The paper's :math:`\rho_t = \min(10^{-2}, 1/\sqrt t)` is :math:`\gamma = 10^{-2}`; like
    ``torch.optim.Adafactor``, the cap is the learning rate, which may be a schedule.

    Args:
        learning_rate: the cap :math:`\gamma_t \ge 0`, a number or a schedule.

    References:
        Shazeer & Stern, ICML 2018, Section 8 and Section 9 (proposed hyperparameters).
    """
    check_range("scale_by_relative_step", "learning_rate", learning_rate, 0.0)

    def init_fn(params):
        del params
        return ScaleByRelativeStepState(jnp.zeros([], jnp.int32), init_hyperparams(learning_rate=learning_rate))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(learning_rate=learning_rate), state.hyperparams, state.count)
        gamma = hp["learning_rate"]
        rho = jnp.minimum(gamma, jax.lax.rsqrt(step_number(state.count, gamma.dtype)))
        updates = jax.tree.map(lambda u: (-rho * u).astype(u.dtype), updates)
        return updates, ScaleByRelativeStepState(optax.safe_increment(state.count), hp)

    return transformation("scale_by_relative_step", init_fn, update_fn)


def decay_after_step(weight_decay_rate: ScalarOrSchedule, mask: MaskOrFn = None) -> optax.GradientTransformation:
    r"""optax's Adafactor weight decay, after the step: :math:`u_t \leftarrow u_t - \lambda_t X_{t-1}`.

    Not multiplied by the learning rate (``optax.adafactor(weight_decay_rate=...)``, which adds
    :math:`\lambda X_{t-1}` before its final sign flip); ``mask`` as in
    :func:`~optimizers.add_decayed_weights`.
    """
    check_range("adafactor", "weight_decay_rate", weight_decay_rate, 0.0)

    def init_fn(params):
        del params
        return AddDecayedWeightsState(jnp.zeros([], jnp.int32), init_hyperparams(weight_decay_rate=weight_decay_rate))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("adafactor: weight_decay_rate needs params in update, got params=None")
        hp = current_hyperparams(dict(weight_decay_rate=weight_decay_rate), state.hyperparams, state.count)
        lam = hp["weight_decay_rate"]
        updates = jax.tree.map(lambda u, p, on: (u - lam * p).astype(u.dtype) if on else u,
                               updates, params, leaf_masks(mask, params))
        return updates, AddDecayedWeightsState(optax.safe_increment(state.count), hp)

    return transformation("adafactor", init_fn, update_fn)
