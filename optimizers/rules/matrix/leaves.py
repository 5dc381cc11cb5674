"""Which leaves Muon takes as matrices: layer axes, optax's dimension numbers, masks, and the reshapes."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

from optimizers.contract.checks import transformation
from optimizers.contract.layers import LayerAxes, leaf_layer_axes
from optimizers.rules.matrix.newton_schulz import WeightDimNumOrFn
from optimizers.rules.scaling import MaskOrFn


# ---------------------------------------------------------------------------------------------
# Which axes of which leaves


class _Spec(NamedTuple):
    """One Muon leaf: its batch (layer) axes, the reduction (fan-in) axes and the output (fan-out) axes."""
    batch: tuple
    reduction: tuple
    output: tuple


def _where(path) -> str:
    return jax.tree_util.keystr(tuple(path)) or "the root"


def _is_dim_nums(x) -> bool:
    return isinstance(x, MuonDimensionNumbers)


def _prefix_leaves(owner: str, what: str, prefix, tree, is_leaf):
    """For every leaf of ``tree`` (in order), the entry of the prefix tree ``prefix`` above it."""
    entries, treedef = jax.tree_util.tree_flatten(prefix, is_leaf=is_leaf)
    try:
        subtrees = treedef.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(f"{owner}: {what} is not a prefix of the params: {treedef} vs "
                         f"{jax.tree.structure(tree)}") from None
    out = []
    for entry, sub in zip(entries, subtrees):
        out.extend([entry] * len(jax.tree.leaves(sub)))
    return out


def _axes(owner: str, path, name: str, axes, ndim: int) -> tuple:
    axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    out = []
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)) or not -ndim <= ax < ndim:
            raise ValueError(f"{owner}: the dimension numbers of {_where(path)} (rank {ndim}) have {name} "
                             f"{ax!r}, out of range")
        out.append(int(ax) % ndim)
    if not out:
        raise ValueError(f"{owner}: the dimension numbers of {_where(path)} have no {name}")
    return tuple(out)


def _leaf_spec(owner: str, path, leaf, k: int, dims, mask, dims_given: bool) -> Optional[_Spec]:
    """The Muon spec of one leaf, or ``None`` for the fallback; ``ValueError`` naming ``path`` when
    ``layer_axes``, the dimension numbers and the mask describe the leaf inconsistently."""
    shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
    ndim = len(shape)
    if mask is not None and not mask:
        return None
    if dims_given and dims is None:
        if mask:
            raise ValueError(f"{owner}: {_where(path)} is in the Muon mask but its dimension numbers are None")
        return None
    if dims is not None:
        if not _is_dim_nums(dims):
            raise ValueError(f"{owner}: the dimension numbers of {_where(path)} must be a MuonDimensionNumbers "
                             f"or None, got {dims!r}")
        red = _axes(owner, path, "reduction_axis", dims.reduction_axis, ndim)
        out = _axes(owner, path, "output_axis", dims.output_axis, ndim)
        if set(red) & set(out) or len(set(red)) < len(red) or len(set(out)) < len(out):
            raise ValueError(f"{owner}: the dimension numbers of {_where(path)} repeat an axis: reduction "
                             f"{red}, output {out}")
        layer = set(range(k)) & (set(red) | set(out))
        if layer:
            raise ValueError(f"{owner}: {_where(path)} (shape {shape}): layer_axes gives it {k} layer axes, but "
                             f"its dimension numbers use axes {sorted(layer)} as matrix axes")
        batch = tuple(a for a in range(ndim) if a not in red and a not in out)
        return _Spec(batch, red, out)
    if ndim - k == 2:
        return _Spec(tuple(range(k)), (k,), (k + 1,))
    if mask and ndim - k > 2:  # a stack the mask calls Muon's, without its layer axes: not silently AdamW
        raise ValueError(f"{owner}: {_where(path)} (shape {shape}) is in the Muon mask but has {ndim - k} axes "
                         f"besides its {k} layer axes, not 2: give it layer_axes or dimension numbers")
    return None  # a vector or a scalar (of each layer): nothing to orthogonalize


def _specs(owner: str, tree, layer_axes: LayerAxes, dims: WeightDimNumOrFn, mask: MaskOrFn = None) -> list:
    """The :class:`_Spec` (or ``None``) of every leaf of ``tree``, in order."""
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    leaves = jax.tree.leaves(tree)
    ks = jax.tree.leaves(leaf_layer_axes(owner, layer_axes, tree))
    dims_given = dims is not None
    if dims_given:
        resolved = dims(tree) if callable(dims) and not _is_dim_nums(dims) else dims
        per_leaf = _prefix_leaves(owner, "the weight dimension numbers", resolved, tree,
                                  lambda x: x is None or _is_dim_nums(x))
    else:
        per_leaf = [None] * len(leaves)
    if mask is not None:
        resolved = mask(tree) if callable(mask) else mask
        masks = [bool(m) for m in _prefix_leaves(owner, "muon_mask", resolved, tree, lambda x: x is None)]
    else:
        masks = [None] * len(leaves)
    return [_leaf_spec(owner, p, x, k, d, m, dims_given) for p, x, k, d, m in zip(paths, leaves, ks, per_leaf, masks)]


def _spec_tree(owner, tree, layer_axes, dims, mask=None):
    return jax.tree.unflatten(jax.tree.structure(tree), _specs(owner, tree, layer_axes, dims, mask))


def _to_matrices(x, spec: _Spec):
    """``x`` as batch shape + (fan_in, fan_out), and the function back."""
    perm = spec.batch + spec.reduction + spec.output
    batch_shape = tuple(x.shape[a] for a in spec.batch)
    fan_in = math.prod(x.shape[a] for a in spec.reduction)
    fan_out = math.prod(x.shape[a] for a in spec.output)
    moved = x if perm == tuple(range(x.ndim)) else jnp.transpose(x, perm)
    inner_shape = moved.shape
    mats = moved.reshape(batch_shape + (fan_in, fan_out)) if moved.ndim != len(batch_shape) + 2 else moved
    inverse = tuple(np.argsort(perm))

    def back(m):
        m = m.reshape(inner_shape)
        return m if perm == tuple(range(x.ndim)) else jnp.transpose(m, inverse)

    return mats, back


def _fans(shape, spec: _Spec):
    return math.prod(shape[a] for a in spec.reduction), math.prod(shape[a] for a in spec.output)


def scale_by_shape(owner, layer_axes, dims, consistent_rms) -> optax.GradientTransformation:
    r"""Each Muon leaf times :math:`\sqrt{\max(1, d_{out}/d_{in})}`, or :math:`c\sqrt{\max(d_{in}, d_{out})}`."""

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        out = []
        for g, spec in zip(leaves, _specs(owner, updates, layer_axes, dims)):
            if spec is None:
                out.append(g)
                continue
            fan_in, fan_out = _fans(g.shape, spec)
            if consistent_rms is None:
                scale = math.sqrt(max(1.0, fan_out / fan_in)) if fan_in else 1.0  # an empty matrix: any
            else:
                scale = math.sqrt(max(fan_in, fan_out)) * consistent_rms
            out.append((scale * g).astype(g.dtype))
        return treedef.unflatten(out), state

    return transformation(owner, lambda params: optax.EmptyState(), update_fn)
