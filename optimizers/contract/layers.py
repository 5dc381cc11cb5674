r"""Stacked layers (scanned models): which leading axes of a leaf index layers, and statistics per layer.

A scanned model (``nnx.scan``, ``flax.linen.scan``, ``jax.lax.scan`` over stacked weights)
keeps its :math:`L` layers' kernels as one leaf of shape :math:`(L, d_{in}, d_{out})`. The
transforms whose rule reduces over a leaf (LARS's and LAMB's trust ratios, NovoGrad's
second moment, Adafactor's factoring, clipping and parameter scale, SM3's covers, Amos's
shared slots) take ``layer_axes``: for each leaf, the number :math:`k \ge 0` of its leading
axes that index layers. Their statistics are then taken over the other axes, separately
for each of the :math:`\prod_{i<k} n_i` slices, exactly as if every slice were a leaf of
its own. ``layer_axes`` is

* ``None`` (the default): every leaf is one layer (``k = 0``);
* a pytree of ints (or ``None``, meaning 0) that is a prefix of the params, such as
  ``{"blocks": 1, "embed": 0}``, or a single int for every leaf;
* a function ``params -> such a prefix`` (given the params' float leaves, non-float ones
  ``None``; transforms that take no params give it the updates).

Per-layer statistics are reductions over the trailing axes only (or :func:`jax.vmap` over
the leading ones), so a leaf whose layer axis is sharded across devices needs no
communication to compute them. Global statistics stay global: ``clip_by_global_norm``,
Funnelled SGDM's dot product and :func:`~optimizers.apply_if_finite`'s check see the whole
tree.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional, Union

import jax
import numpy as np
import optax

from optimizers.contract.checks import nnx_values

LayerAxes = Optional[Union[int, Any, Callable[[optax.Params], Any]]]
"""``None``, a pytree prefix of the params of non-negative ints (or ``None``), or a function
``params -> such a prefix``."""


def _is_none(x) -> bool:
    return x is None


def _where(path) -> str:
    return jax.tree_util.keystr(tuple(path)) or "the root"


def _count(owner: str, path, n) -> int:
    """``n`` as a number of layer axes (``None`` is 0), or ``ValueError`` naming ``path``."""
    if n is None:
        return 0
    try:
        value = operator.index(n)
    except TypeError:
        value = None
    if isinstance(n, (bool, np.bool_)) or value is None or value < 0:
        raise ValueError(f"{owner}: layer_axes must be non-negative ints (or None), got {n!r} at {_where(path)}")
    return value


def check_layer_axes(owner: str, layer_axes: LayerAxes) -> None:
    """Checks, when the transform is built, every count given in a prefix tree (not a function's)."""
    if layer_axes is None or callable(layer_axes):
        return
    for path, n in jax.tree_util.tree_flatten_with_path(layer_axes, is_leaf=_is_none)[0]:
        _count(owner, path, n)


def _mismatch(prefix, params) -> str:
    """Where ``prefix`` is not a prefix of ``params``: the first path one has and the other lacks."""
    want = [p for p, _ in jax.tree_util.tree_flatten_with_path(prefix, is_leaf=_is_none)[0]]
    have = [p for p, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)[0]]
    for p in want:
        if not any(tuple(h[:len(p)]) == tuple(p) for h in have):
            return f"{_where(p)} is in layer_axes but not in the params"
    for h in have:
        if not any(tuple(h[:len(p)]) == tuple(p) for p in want):
            return f"the params' {_where(h)} has no entry in layer_axes"
    return (f"other node types: {jax.tree.structure(prefix, is_leaf=_is_none)}, params "
            f"{jax.tree.structure(params, is_leaf=_is_none)}")


def leaf_layer_axes(owner: str, layer_axes: LayerAxes, params):
    """The number of layer axes of every leaf of ``params``: a tree of ints of the params' structure.

    Raises ``ValueError`` naming the path for a count that is negative or not an int, larger
    than its leaf's rank, or a prefix that does not match the params.
    """
    if layer_axes is None:
        return jax.tree.map(lambda _: 0, params)
    prefix = layer_axes(params) if callable(layer_axes) else layer_axes
    counts, treedef = jax.tree_util.tree_flatten_with_path(prefix, is_leaf=_is_none)
    try:
        subtrees = treedef.flatten_up_to(params)
    except (ValueError, TypeError):
        plain = nnx_values(params)  # Flax NNX hands the params as State nodes of Param variables
        if jax.tree.structure(plain) != jax.tree.structure(params):
            try:
                treedef.flatten_up_to(plain)
            except (ValueError, TypeError):
                pass
            else:
                counts_of_plain = leaf_layer_axes(owner, prefix, plain)
                return jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(counts_of_plain))
        raise ValueError(f"{owner}: layer_axes is not a prefix of the params: {_mismatch(prefix, params)}") from None
    out = []
    for (path, n), sub in zip(counts, subtrees):
        n = _count(owner, path, n)
        for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
            shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
            if n > len(shape):
                raise ValueError(f"{owner}: layer_axes gives {_where(tuple(path) + tuple(leaf_path))} {n} layer "
                                 f"axes, more than its {len(shape)} (shape {shape})")
        out.append(jax.tree.map(lambda _, n=n: n, sub))
    return treedef.unflatten(out)


def update_layer_axes(owner: str, layer_axes: LayerAxes, updates, params):
    """:func:`leaf_layer_axes` of ``params``, or of ``updates`` for a transform given no params."""
    return leaf_layer_axes(owner, layer_axes, updates if params is None else params)


def within(x, n: int):
    """The axes of one layer of ``x`` (all but its ``n`` leading ones); ``None`` (all) for ``n = 0``."""
    return None if n == 0 else tuple(range(n, np.ndim(x)))


def per_layer(stat, x):
    """A statistic of shape ``x.shape[:n]`` (one per layer) broadcast against ``x``."""
    return stat if np.ndim(stat) == 0 else stat.reshape(stat.shape + (1,) * (np.ndim(x) - np.ndim(stat)))


def over_layers(fn: Callable, n: int) -> Callable:
    """``fn`` of one layer's arrays mapped over ``n`` leading (layer) axes of all its arguments."""
    for _ in range(n):
        fn = jax.vmap(fn)
    return fn


def falls_back(owner: str, layer_axes: LayerAxes, flat_state: bool = False) -> Optional[str]:
    """Why ``fused=True`` runs the chain instead (for :func:`~optimizers.contract.backend.accelerated`), or
    ``None``: with ``layer_axes`` (the kernels take one statistic per leaf); ``flat_state``, the kernels'
    layout, then has no meaning: ``ValueError``."""
    if layer_axes is None:
        return None
    if flat_state:
        raise ValueError(f"{owner}: flat_state=True is the fused kernels' layout, and with layer_axes the "
                         f"unfused chain runs: use flat_state=False")
    return "its kernel takes one statistic per leaf, not per stacked layer (layer_axes)"


def _flax_boxes():
    """The Flax types that carry partition names: linen's ``AxisMetadata`` boxes, nnx's ``Variable``."""
    try:
        from flax import nnx
        from flax.core import meta
    except ImportError:  # no Flax: no boxes
        return ()
    return meta.AxisMetadata, nnx.Variable


def _partition_names(x) -> tuple:
    """The partition names of a boxed param: linen's ``names``, nnx's ``out_sharding`` metadata."""
    names = getattr(x, "names", None)
    if names is None and hasattr(x, "get_metadata"):
        names = x.get_metadata().get("out_sharding")
    return tuple(names or ())


def layer_axes_from_flax(tree, names="layers"):
    r"""``layer_axes`` from the partition names Flax's scans put on stacked params.

    ``nn.scan(..., metadata_params={nn.PARTITION_NAME: "layers"})`` (linen) and
    ``nnx.vmap``/``nnx.scan(..., transform_metadata={nnx.PARTITION_NAME: "layers"})`` (nnx)
    insert ``"layers"`` into the partition names of every param they stack, where it has
    them: linen's ``nn.Partitioned``/``nn.LogicallyPartitioned`` boxes
    (``nn.with_partitioning``), nnx's ``out_sharding`` metadata
    (``nnx.with_partitioning``, ``kernel_metadata={"out_sharding": ...}``). The count of a
    param is the number of its leading names in ``names``; a param without names is one layer.

    Args:
        tree: the boxed params (linen's ``variables["params"]`` before ``nn.unbox``), an
            ``nnx.State`` of ``Variable``\ s (``nnx.state(model, nnx.Param)``) or an nnx
            module (its ``nnx.Param`` state).
        names: the scan axes' partition name, or a collection of them (nested scans).

    Returns:
        A prefix of ``tree`` (and of its unboxed arrays) with one int per param, to give as
        ``layer_axes``. Compute it once from the model: nnx's optimizer hands ``update``
        plain arrays, without the metadata.

    Raises:
        ValueError: a param has a scan name after an unnamed or other axis (layer axes lead), or
            no param carries a scan name at all (stacked params without the scan's metadata, or
            params already unboxed: the result would be all zeros, one layer everywhere).
    """
    names = {names} if isinstance(names, str) else set(names)
    boxes = _flax_boxes()
    if boxes and isinstance(tree, _nnx_module()):
        from flax import nnx
        tree = nnx.state(tree, nnx.Param)

    def count(path, x):
        axes = _partition_names(x) if isinstance(x, boxes) else ()
        k = next((i for i, a in enumerate(axes) if a not in names), len(axes))
        if any(a in names for a in axes[k:]):
            raise ValueError(f"layer_axes_from_flax: {_where(path)} has partition names {axes}: the layer "
                             f"axes ({sorted(names)}) must lead")
        return k

    axes = jax.tree_util.tree_map_with_path(count, tree, is_leaf=lambda x: isinstance(x, boxes))
    if not any(jax.tree.leaves(axes)):
        raise ValueError(f"layer_axes_from_flax: no param carries the partition name {sorted(names)}: scan with "
                         "metadata_params={nn.PARTITION_NAME: 'layers'} (linen) or transform_metadata="
                         "{nnx.PARTITION_NAME: 'layers'} (nnx) and pass the boxed params, or give layer_axes by "
                         "hand (a dict prefix such as {'blocks': 1})")
    return axes


def _nnx_module():
    from flax import nnx
    return nnx.Module
