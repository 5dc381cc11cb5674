"""Cautious optimizers: the update's coordinates that disagree in sign with the gradient are zeroed."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import inner as real_inner
from optimizers.contract.dtypes import store, widen

_NORMALIZE = ("count", "mean", "none")


class CautiousState(NamedTuple):
    inner_state: optax.OptState  # the wrapped transformation's state


def _masked(u, g, normalize: str, direction: bool):
    """``u`` with the coordinates moving against ``-g`` zeroed, the rest rescaled per leaf."""
    agree = real_inner(widen(u), widen(g))
    mask = (agree > 0 if direction else agree < 0).astype(agree.dtype)
    if normalize == "count":
        mask = mask * (mask.size / (jnp.sum(mask) + 1))
    elif normalize == "mean":
        mask = mask / jnp.maximum(jnp.mean(mask), 1e-3)
    return store(widen(u) * mask, u.dtype)


def cautious(inner: optax.GradientTransformation, *, normalize: str = "count",
             direction: bool = False) -> optax.GradientTransformation:
    r"""The cautious form of any optimizer: only the coordinates that move against the gradient.

    With :math:`u_t` the wrapped transformation's update (applied as :math:`\theta + u_t`, optax's
    convention: a descent step is :math:`-\gamma\,\cdot`) and :math:`g_t` the gradient this
    wrapper receives, per pytree leaf of :math:`n` elements:

    .. math::
        \phi_t = \mathbb{1}[u_t \odot g_t < 0], \qquad
        \tilde u_t = u_t \odot \phi_t \cdot \frac{n}{\sum_i \phi_{t,i} + 1}

    (``normalize="count"``: the paper's code, as ``pytorch_optimizer``'s ``cautious=True``);
    ``normalize="mean"``: :math:`\phi_t / \max(\mathrm{mean}(\phi_t), 10^{-3})` (timm's);
    ``"none"``: the bare mask. ``direction=True`` wraps a direction (a ``scale_by_*`` chained
    before :func:`scale_by_learning_rate`): it agrees where :math:`u_t \odot g_t > 0`. A
    coordinate where either is zero is dropped. Complex params: the sign of
    :math:`\mathrm{Re}(u_t \bar g_t)` (the real pair's dot product).

    .. warning::
        Everything ``inner`` returns is masked, its weight decay included: ``cautious(adamw(...))``
        masks :math:`\gamma(\hat u + \lambda\theta)` where the paper's C-AdamW masks only the Adam
        direction and decays unmasked. For the paper's form chain
        ``cautious(scale_by_adam(), direction=True)``, :func:`add_decayed_weights` and
        :func:`scale_by_learning_rate`. ``pytorch_optimizer``'s cautious AdEMAMix masks its fast EMA
        alone, before adding the slow one: not this wrapper's form.

    Args:
        inner: the transformation to make cautious: an optimizer, or a direction with ``direction=True``.
        normalize: ``"count"``, ``"mean"`` or ``"none"``.
        direction: ``inner``'s updates point along the gradient (not yet negated).

    References:
        Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
        2024, Algorithm 1; github.com/kyleliang919/C-Optim.
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"cautious: normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if not isinstance(direction, bool):
        raise ValueError(f"cautious: direction must be a bool, got {direction!r}")

    def init_fn(params):
        return CautiousState(inner.init(params))

    def update_fn(updates, state, params=None):
        out, inner_state = inner.update(updates, state.inner_state, params)
        out = jax.tree.map(lambda u, g: _masked(u, g, normalize, direction), out, updates)
        return out, CautiousState(inner_state)

    return transformation("cautious", init_fn, update_fn)
