"""Sharding an optimizer state like its params, for ``jax.jit`` over a ``Mesh``.

optax gives no way to know where each leaf of an optimizer state should live when the params
are sharded. :func:`state_shardings` derives it from the params' shardings and the state's
*abstract* shape (``jax.eval_shape(tx.init, params)``), so the state is created directly
sharded and never materialised on one device::

    param_sh = fsdp_shardings(params, mesh, "model")
    state_sh = state_shardings(tx, params, param_sh)
    opt_state = jax.jit(tx.init, out_shardings=state_sh)(params)

How a state leaf finds its sharding:

1. **Which param.** The state is walked from its root. A subtree whose structure has the
   params' structure as a prefix, with an array or a flat container of arrays at each param's
   place (Adam's ``mu``, Adafactor's ``v_row``, SM3's list of covers per param, a tree with
   ``optax.MaskedNode`` holes), *mirrors* the params: its leaves belong to the param at the
   same place. A leaf outside every mirror (a list of leaves, another layout) belongs to the
   params of exactly its shape, if any.
2. **Which axes.** A leaf follows its param's axes when its shape is the param's shape with
   some axes removed and some set to 1, in order: a moment (same shape) takes the param's
   sharding; Adafactor's row statistic of an ``(n, m)`` matrix, shape ``(n,)`` or ``(n, 1)``,
   takes the sharding of axis 0 and its column statistic that of axis 1; an SM3 cover of axis
   ``d``, shape ``(n_d,)``, takes axis ``d``'s; a scalar (a count, a hyperparameter, a
   per-leaf norm) is replicated. An axis set to 1 is not split. A leaf of rank 2 or more that
   fits no other way but starts with the param's leading axes (per-layer statistics of stacked
   layers, ``layer_axes``: SM3's covers of each layer end to end) takes those axes' sharding.
3. **Otherwise replicated.** When the shape does not say which axes (the ``(n,)`` row and
   column statistics of a square ``(n, n)`` matrix fit either axis) or fits none (a
   transposed or stacked buffer), the leaf is replicated: always correct, and such leaves
   are vectors or small. Empty leaves, shape ``(0,)``, are replicated.
4. **Evenly.** JAX cannot split a dimension that the mesh axes do not divide (``device_put``
   and ``jit`` raise ``ValueError``), so mesh axes are dropped, last first, from every
   dimension they do not divide; a dimension no axis divides is replicated. The same rule
   gives :func:`fsdp_shardings` for the params.

5. **Quantized buffers** (:func:`~optimizers.with_quantized_state`). The codes have their
   buffer's shape and follow rule 2. The scales, one per block, have the shape
   ``lead + (blocks,)`` (the leading axes of the buffer, then its blocks; see
   ``_quantized_codes.Layout``): they are split like the codes along ``lead``, and along
   the blocks too when the codes' first blocked axis is split, no later axis is, and each
   device's share holds whole blocks (a (1024, 1024) moment in blocks of 256 split on axis 1
   over 4 devices: 256 columns, one block, each). Otherwise the scales are not split along
   that axis (replicated there: 4 bytes per block), and XLA moves what each device needs.

Which placement is chosen never changes the result: ``jit`` computes the same values for any
sharding of its inputs (reductions such as LAMB's norms or Adafactor's row means over a
sharded axis become global reductions), the placement only sets memory and communication.
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import Any, Callable, Optional, Union

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from optimizers.contract.checks import child_nodes, param_groups
from optimizers.wrappers.quantized.codes import QuantizedBuffer, layout_of

_Entries = tuple  # one tuple of mesh axis names per array dimension ("()" for not split)


def _entries(spec: PartitionSpec, ndim: int, where: str) -> _Entries:
    """A spec as one tuple of axis names per dimension (padded with unsplit dimensions)."""
    if len(spec) > ndim:
        raise ValueError(f"{where}: sharding spec {spec} has {len(spec)} entries for an array of rank {ndim}")
    out = []
    for e in tuple(spec) + (None,) * (ndim - len(spec)):
        if e is None or e is PartitionSpec.UNCONSTRAINED:
            out.append(())
        else:
            out.append((e,) if isinstance(e, str) else tuple(e))
    return tuple(out)


def _spec(entries: _Entries) -> PartitionSpec:
    return PartitionSpec(*[None if not e else e[0] if len(e) == 1 else e for e in entries])


def _fit(entries: _Entries, shape, mesh) -> _Entries:
    """Each dimension keeps the longest prefix of its mesh axes whose total size divides it."""

    def fit_dim(axes, size):
        while axes and size % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        return axes

    return tuple(fit_dim(axes, size) for axes, size in zip(entries, shape))


def fit_sharding(sharding: NamedSharding, shape) -> NamedSharding:
    """``sharding`` made valid for an array of ``shape``: mesh axes that do not divide a dimension dropped.

    A spec shorter than ``shape`` leaves the last dimensions unsplit. From each dimension the
    mesh axes are dropped, last first, until their total size divides it, so a dimension of
    12 under ``("data", "model")`` on a 2 x 4 mesh keeps ``"data"``; one that no axis divides
    (5 on any even axis) is replicated.

    Raises:
        ValueError: ``sharding`` is not a ``NamedSharding``, or its spec is longer than ``shape``.
    """
    if not isinstance(sharding, NamedSharding):
        raise ValueError(f"fit_sharding: needs a jax.sharding.NamedSharding, got {type(sharding).__name__}")
    entries = _fit(_entries(sharding.spec, len(shape), "fit_sharding"), shape, sharding.mesh)
    return NamedSharding(sharding.mesh, _spec(entries), memory_kind=sharding.memory_kind)


def fsdp_shardings(params, mesh: jax.sharding.Mesh, axis: str = "model", dim: Optional[int] = None):
    """One ``NamedSharding`` per param: one dimension split over the mesh axis ``axis``.

    The fully sharded data parallel layout (each device keeps ``1/N`` of every param that
    ``N`` divides). Params may be arrays or ``jax.ShapeDtypeStruct``.

    Args:
        params: the params pytree.
        mesh: the device mesh.
        axis: the name of the mesh axis to split over.
        dim: the dimension to split (negative counts from the end), or ``None`` for each
            param's largest dimension that ``axis`` divides (the last of equal ones). A param
            whose chosen dimension ``axis`` does not divide evenly, or that has none (a
            scalar, a bias of odd size), is replicated.

    Raises:
        ValueError: ``axis`` is not an axis of ``mesh``.
    """
    if axis not in mesh.axis_names:
        raise ValueError(f"fsdp_shardings: axis must be one of the mesh's axes {mesh.axis_names}, got {axis!r}")
    size = mesh.shape[axis]

    def one(p):
        shape = p.shape
        if dim is not None:
            d = dim % len(shape) if -len(shape) <= dim < len(shape) else None
            chosen = d if d is not None and shape[d] % size == 0 else None
        else:
            fits = [i for i, n in enumerate(shape) if n % size == 0 and n > 0]
            chosen = max(fits, key=lambda i: (shape[i], i)) if fits else None
        entries = tuple((axis,) if i == chosen else () for i in range(len(shape)))
        return NamedSharding(mesh, _spec(entries))

    return jax.tree.map(one, jax.eval_shape(lambda p: p, params))


def _follow(shape, param_shape, entries: _Entries) -> set:
    """The entries a leaf of ``shape`` takes from a param, one per way its shape fits the param's.

    A way to fit is an increasing choice of the param's axes, one per leaf axis, where each
    leaf axis has the param axis's size (it takes that axis's mesh axes) or size 1 (unsplit).
    """
    found = set()
    for axes in itertools.combinations(range(len(param_shape)), len(shape)):
        if all(n == param_shape[a] or n == 1 for n, a in zip(shape, axes)):
            found.add(tuple(entries[a] if n == param_shape[a] else () for n, a in zip(shape, axes)))
    return found


def _leading(shape, param_shape, entries: _Entries) -> set:
    """The entries of the param's leading axes that a leaf of rank >= 2 starts with (its stacked
    layers' axes), the rest unsplit; none if it starts with none."""
    k = next((i for i, (n, m) in enumerate(zip(shape, param_shape)) if n != m), min(len(shape), len(param_shape)))
    if len(shape) < 2 or k == 0 or k == len(shape):
        return set()
    return {tuple(entries[:k]) + ((),) * (len(shape) - k)}


def _is_leaf(node) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree.structure(node)) and jax.tree.leaves(node) != []


def _is_flat(group) -> bool:
    """A leaf or a container of leaves (SM3's covers, a ``MaskedNode``): one param's share of a mirror."""
    return _is_leaf(group) or all(_is_leaf(c) for c in child_nodes(group)[0])


class _Rules:
    """The params' layout and the rules of the module docstring, applied to abstract leaves."""

    def __init__(self, params, param_shardings):
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(jax.eval_shape(lambda p: p, params))
        shardings = _per_param(param_shardings, params)
        bad = [(jax.tree_util.keystr(k), s) for (k, _), s in zip(flat, shardings) if not isinstance(s, NamedSharding)]
        if bad:
            raise ValueError("state_shardings: param shardings must be jax.sharding.NamedSharding, got "
                             f"{type(bad[0][1]).__name__} at {bad[0][0] or 'the root'}")
        meshes = {s.mesh for s in shardings}
        if len(meshes) != 1:
            raise ValueError("state_shardings: the param shardings must share one mesh, got "
                             f"{len(meshes)} meshes" + (" (params are empty)" if not meshes else ""))
        (self.mesh,) = meshes
        self.params = [
            (p.shape, _fit(_entries(s.spec, p.ndim, f"state_shardings: param {jax.tree_util.keystr(k)}"),
                           p.shape, self.mesh), s.memory_kind)
            for (k, p), s in zip(flat, shardings)
        ]

    def sharding(self, entries: Optional[_Entries], memory_kind=None) -> NamedSharding:
        return NamedSharding(self.mesh, _spec(entries or ()), memory_kind=memory_kind)

    def of_param(self, leaf, index) -> NamedSharding:
        shape, entries, memory_kind = self.params[index]
        found = _follow(leaf.shape, shape, entries) or _leading(leaf.shape, shape, entries)
        fitted = _fit(found.pop(), leaf.shape, self.mesh) if len(found) == 1 else None
        return self.sharding(fitted, memory_kind)

    def of_quantized(self, buffer, index) -> QuantizedBuffer:
        """A quantized buffer's shardings: the codes as the buffer would be; the scales split along the
        leading axes they share with the codes, and along the first blocked axis when no later axis is
        split and each device's part of it holds whole blocks (rule 5 of the module docstring)."""
        shape, entries, memory_kind = self.params[index]
        found = _follow(buffer.codes.shape, shape, entries)
        codes = _fit(found.pop(), buffer.codes.shape, self.mesh) if len(found) == 1 else None
        if codes is None:
            return QuantizedBuffer(self.sharding(None, memory_kind), self.sharding(None, memory_kind))
        lay = layout_of(buffer.codes.shape, buffer.scales.shape)
        k = len(lay.lead)
        blocked = codes[k] if not lay.pad and not any(codes[k + 1:]) else ()
        scales = _fit(codes[:k] + (blocked,), buffer.scales.shape, self.mesh)
        return QuantizedBuffer(self.sharding(codes, memory_kind), self.sharding(scales, memory_kind))

    def of_shape(self, leaf) -> NamedSharding:
        found = {(e, m) for shape, e, m in self.params if shape == leaf.shape}
        return self.sharding(*found.pop()) if len(found) == 1 else self.sharding(None)

    def assign(self, node):
        """The shardings of the abstract state subtree ``node``, mirrors found from the top."""
        groups = param_groups(node, self.treedef)
        if groups is not None and all(_is_flat(g) for g in groups):
            return self.treedef.unflatten(
                [self.of_quantized(g, i) if isinstance(g, QuantizedBuffer)
                 else jax.tree.map(lambda leaf, i=i: self.of_param(leaf, i), g) for i, g in enumerate(groups)])
        if not jax.tree.leaves(node):
            return node
        if _is_leaf(node):
            return self.of_shape(node)
        children, structure = child_nodes(node)
        return structure.unflatten([self.assign(c) for c in children])


def _per_param(param_shardings, params) -> list:
    """One sharding per param leaf, from a tree with the params' structure or a prefix of it."""
    try:
        full = jax.tree.map(lambda s, p: jax.tree.map(lambda _: s, p), param_shardings, params)
    except ValueError as e:
        raise ValueError(f"state_shardings: param_shardings must have the params' structure or a prefix of it: {e}")
    return jax.tree.leaves(full)


def state_shardings(tx: Union[optax.GradientTransformation, Callable[[Any], Any]], params, param_shardings):
    """The shardings of ``tx``'s state for params with ``param_shardings``, without building it.

    Works on ``jax.eval_shape(tx.init, params)``: nothing is computed or allocated, and
    ``params`` may be abstract (``jax.ShapeDtypeStruct``). The result is a pytree of
    ``NamedSharding`` with the state's structure, for
    ``jax.jit(tx.init, out_shardings=...)`` and the train step's in and out shardings. The
    rules (mirrors, axes, replication, even splits) are the module docstring's.

    Args:
        tx: an optimizer, or its ``init`` function.
        params: the params, arrays or ``jax.ShapeDtypeStruct``.
        param_shardings: a ``NamedSharding`` per param (a tree with the params' structure), or
            one for a whole subtree (a prefix of it); all on one mesh.

    Raises:
        ValueError: a sharding that is not a ``NamedSharding``, shardings on different meshes
            or none (empty params), a spec longer than its param's rank, or a
            ``param_shardings`` tree that does not fit the params.
    """
    rules = _Rules(params, param_shardings)
    return rules.assign(jax.eval_shape(getattr(tx, "init", tx), params))


def bytes_per_device(tree) -> dict:
    """The bytes of ``tree``'s arrays held by each (addressable) device, as ``{device: bytes}``."""
    held = collections.Counter()
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return dict(held)
