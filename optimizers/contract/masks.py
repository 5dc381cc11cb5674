"""Masks: which leaves of the params a term (a weight decay, a trust ratio, 8-bit state) applies to."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import optax

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def _mask_tree(mask: MaskOrFn, params):
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    return mask(params) if callable(mask) else mask


def leaf_masks(mask: MaskOrFn, params):
    """One boolean per leaf of ``params`` from a mask, a mask prefix or a function of params."""
    return jax.tree.map(lambda on, p: jax.tree.map(lambda _: on, p), _mask_tree(mask, params), params)
