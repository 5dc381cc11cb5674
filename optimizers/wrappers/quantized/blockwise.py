r"""Running an optimizer's update on quantized state block by block, and finding its per-parameter buffers.

XLA:CPU writes the input of a reduction out in full: the block absmax of a new moment needs
that moment as a float32 array of the whole leaf first (4 bytes per element per buffer, and
XLA keeps every leaf's alive at once). :func:`run_blockwise` bounds it instead: the large
quantized leaves (``MIN_BLOCKS`` blocks and more) run through the inner update in a loop of
``CHUNKS`` steps, each step one chunk (whole blocks) of every large leaf, dequantized,
updated and quantized again, so the step's float32 temporaries are 1/``CHUNKS`` of the
model's. One loop for all leaves: the inner update is traced once more, not once per leaf.
The loop is a ``scan`` whose inputs (old codes, scales, grads) are only read and whose
outputs (new codes, scales) are only written, so XLA copies no carry in its iterations (a
``fori_loop`` carry that several fusions read and one overwrites in place is copied whole
every iteration); the chunk's codes are decoded by a lookup in the 256 values.

That is the same computation only when the update is elementwise. It is taken when it is
checked to be, on the traced update itself: every operation on non-scalar values is
elementwise (no reduction, reshape, gather, dot, ...), and the inner update traced with the
chunk (and with the other leaves empty) is the same sequence of operations as traced with
the whole tree (a mask or a rule that looks at shapes decides alike). Otherwise (LAMB's
norms, Adafactor's factored moments, a fused kernel) the update runs leaf by leaf when no
leaf's outputs read another leaf's inputs (``optimizers.wrappers.quantized.leafwise``), else whole on the
dequantized state, and the new state of each leaf is quantized after it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import child_nodes, param_groups
from optimizers.wrappers.quantized.codes import (Layout, QuantizedBuffer, decode, dequantize, encode, is_quantized,
                                                 layout_of)

CHUNKS = 16  # iterations of the block-wise loop: each holds 1/16 of the large leaves' float32 state
MIN_BLOCKS = 64  # leaves of fewer blocks run whole

_ELEMENTWISE = frozenset(
    "abs add and atan2 cbrt ceil clamp convert_element_type copy copy_p cos cosh div eq erf erf_inv exp exp2 "
    "expm1 floor ge gt integer_pow is_finite le log log1p logistic lt max min mul ne neg nextafter not or pow "
    "reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor".split())


def _is_buffer(x) -> bool:
    return is_quantized(x) or (hasattr(x, "dtype") and hasattr(x, "shape") and jnp.issubdtype(x.dtype, jnp.floating))


def _mirror(node, treedef):
    """The per-param groups of ``node`` when it holds one floating array (or nothing) per param, else ``None``."""
    groups = param_groups(node, treedef)
    if groups is None:
        return None
    if all(_is_buffer(g) or not jax.tree.leaves(g) for g in groups) and any(_is_buffer(g) for g in groups):
        return groups
    return None


def per_param_fields(state, treedef, nonnegative: dict) -> list:
    """``(path, groups, signed)`` of each per-parameter field of ``state``, from the root down.

    A field is per-parameter when it holds one floating array (or quantized buffer, or
    nothing) per param of ``treedef``; ``path`` is the child indices that lead to it;
    ``signed`` is False for the fields ``nonnegative[type(state node)]`` names.
    """
    found = []

    def visit(node, path, signed):
        groups = _mirror(node, treedef)
        if groups is not None:
            found.append((path, groups, signed))
            return
        children, structure = child_nodes(node)
        if structure.num_nodes == 1 or is_quantized(node):
            return
        unsigned = nonnegative.get(type(node), frozenset())
        names = getattr(node, "_fields", [None] * len(children))
        for i, (name, child) in enumerate(zip(names, children)):
            visit(child, path + (i,), name not in unsigned)

    visit(state, (), True)
    return found


def replace_at(state, values: dict):
    """``state`` with the subtree at each path of ``values`` replaced by its value."""
    if () in values:
        return values[()]
    heads: dict = {}
    for path, v in values.items():
        heads.setdefault(path[0], {})[path[1:]] = v
    children, structure = child_nodes(state)
    return structure.unflatten([replace_at(c, heads[i]) if i in heads else c for i, c in enumerate(children)])


def _at(state, path):
    for i in path:
        state = child_nodes(state)[0][i]
    return state


def _signature(jaxpr, out: list) -> bool:
    """Appends the operations of ``jaxpr`` to ``out``; whether all those on arrays are elementwise."""
    ok = True
    for eqn in jaxpr.eqns:
        shapes = [getattr(v.aval, "shape", ()) for v in eqn.invars]
        out.append((eqn.primitive.name, tuple(s == () for s in shapes)))
        subs = [eqn.params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in eqn.params]
        subs += list(eqn.params.get("branches", ()))
        for sub in subs:
            ok &= _signature(getattr(sub, "jaxpr", sub), out)
        if subs or all(s == () for s in shapes):
            continue
        name = eqn.primitive.name
        ok &= name in _ELEMENTWISE or (name == "broadcast_in_dim" and math.prod(shapes[0]) == 1)
    return ok


def _trace(update, *args):
    """The operations of ``update(*args)`` (abstract), and whether they are elementwise; ``None`` if it fails."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    try:
        jaxpr = jax.make_jaxpr(update)(*abstract)
    except Exception:  # noqa: BLE001  (a rule that cannot take the chunks runs whole)
        return None
    ops: list = []
    return ops, _signature(jaxpr.jaxpr, ops)


def _empty(x):
    """A leaf of ``x``'s rank without elements; scalars and empty nodes stay."""
    shape = x.codes.shape if is_quantized(x) else getattr(x, "shape", ())
    if not _is_buffer(x) or len(shape) == 0:
        return x
    return jnp.zeros((0,) + tuple(shape[1:]), jnp.float32 if is_quantized(x) else x.dtype)


class _Call:
    """The inner update's inputs with some leaves replaced (``given``) and others emptied."""

    def __init__(self, updates, state, params, bits, nonnegative):
        self.leaves, self.treedef = jax.tree.flatten(updates)
        self.params = None if params is None else self.treedef.flatten_up_to(params)
        self.state, self.bits = state, bits
        self.fields = per_param_fields(state, self.treedef, nonnegative)

    def inputs(self, emptied, given: dict):
        """``(updates, state, params)``: ``given[i] = (grad, param, {field index: buffer})`` for leaf ``i``,
        the leaves in ``emptied`` without elements, the others as they are (dequantized)."""

        def leaf(x, i, replacement):
            if replacement is not None:
                return replacement
            if i in emptied:
                return _empty(x)
            return dequantize(x, self.bits) if is_quantized(x) else x

        n = len(self.leaves)
        g = self.treedef.unflatten([leaf(self.leaves[i], i, given[i][0] if i in given else None) for i in range(n)])
        p = None if self.params is None else self.treedef.unflatten(
            [leaf(self.params[i], i, given[i][1] if i in given else None) for i in range(n)])
        new = {path: self.treedef.unflatten([leaf(groups[i], i, given[i][2].get(f) if i in given else None)
                                             for i in range(n)])
               for f, (path, groups, _) in enumerate(self.fields)}
        return g, replace_at(self.state, new), p

    def chunked(self, i) -> bool:
        """Whether leaf ``i`` is large and all its per-parameter buffers are quantized, shaped like it."""
        shape = self.leaves[i].shape
        groups = [groups[i] for _, groups, _ in self.fields]
        quantized = [g for g in groups if is_quantized(g)]
        return (bool(quantized) and math.prod(quantized[0].scales.shape) >= MIN_BLOCKS
                and all(is_quantized(g) or not jax.tree.leaves(g) for g in groups)
                and all(g.codes.shape == shape for g in groups if is_quantized(g)))


def _chunks(x, lay, k):
    """``x`` (a leaf, or its codes) as ``(CHUNKS, k * block)``: whole blocks, padded with zeros."""
    blocks = x.reshape(lay.lead + (lay.columns,))
    if lay.pad:
        blocks = jnp.pad(blocks, [(0, 0)] * len(lay.lead) + [(0, lay.pad)])
    blocks = blocks.reshape(-1, lay.block)
    if CHUNKS * k > blocks.shape[0]:
        blocks = jnp.pad(blocks, [(0, CHUNKS * k - blocks.shape[0]), (0, 0)])
    return blocks.reshape(CHUNKS, k * lay.block)


def _scale_chunks(scales, k):
    flat = scales.reshape(-1)
    return jnp.pad(flat, (0, CHUNKS * k - flat.size)).reshape(CHUNKS, k)


def _unchunk(x, lay, shape):
    flat = x.reshape(-1)[:math.prod(lay.lead) * lay.blocks * lay.block].reshape(lay.lead + (-1,))
    return flat[..., :lay.columns].reshape(shape)


class _Leaf(NamedTuple):
    """How a large leaf is cut: its layout, ``k`` blocks a chunk, its quantized fields, a chunk's shape."""

    lay: Layout
    k: int
    fields: list
    shape: tuple


def _geometry(call: _Call, i) -> _Leaf:
    fields = [f for f, (_, groups, _) in enumerate(call.fields) if is_quantized(groups[i])]
    first = call.fields[fields[0]][1][i]
    lay = layout_of(first.codes.shape, first.scales.shape)
    k = -(-math.prod(first.scales.shape) // CHUNKS)
    return _Leaf(lay, k, fields, (1,) * (first.codes.ndim - 1) + (k * lay.block,))


def _loop(update, call: _Call, geometry: dict, bits, apply):
    """The large leaves' updates (``apply``: new params) and new quantized buffers, in ``CHUNKS`` steps of a
    ``scan``, each step a chunk of every large leaf (the small leaves emptied).

    The old codes, scales, grads (and params of ``tx.update``) are the scan's inputs, read only;
    the new codes and scales (and updates) its outputs, each written once per step, so XLA copies
    neither. ``apply``: the params are the carry, each chunk overwritten in place by the one
    fusion that reads it (a donated step needs no second copy of them).
    """
    xs, carry = {}, {}
    for i, leaf in geometry.items():
        params = None if call.params is None else _chunks(call.params[i], leaf.lay, leaf.k)
        carry[i] = params if apply else None
        xs[i] = (_chunks(call.leaves[i], leaf.lay, leaf.k), None if apply else params,
                 [(_chunks(call.fields[f][1][i].codes, leaf.lay, leaf.k),
                   _scale_chunks(call.fields[f][1][i].scales, leaf.k)) for f in leaf.fields])
    emptied = {i for i, g in enumerate(call.leaves) if g.ndim and i not in geometry}

    def body(carry, x):
        c, xs = x
        given = {}
        for i, leaf in geometry.items():
            g, params, qs = xs[i]
            pc = jax.lax.dynamic_index_in_dim(carry[i], c, keepdims=False) if apply else params
            buffers = {f: decode(codes.reshape(leaf.k, leaf.lay.block), scales, bits, lookup=True).reshape(leaf.shape)
                       for f, (codes, scales) in zip(leaf.fields, qs)}
            given[i] = (g.reshape(leaf.shape), None if pc is None else pc.reshape(leaf.shape), buffers)
        u, new = update(*call.inputs(emptied, given))
        u = call.treedef.flatten_up_to(u)
        ys = {}
        for i, leaf in geometry.items():
            pc = given[i][1]
            quantized = []
            for f, (codes, _) in zip(leaf.fields, xs[i][2]):
                value = call.treedef.flatten_up_to(_at(new, call.fields[f][0]))[i]
                q, scales = encode(value.reshape(leaf.k, leaf.lay.block), codes.dtype == jnp.int8, bits)
                quantized.append((q.reshape(-1), scales))
            if apply:
                step = (pc + u[i]).astype(pc.dtype).reshape(1, -1)
                carry[i] = jax.lax.dynamic_update_index_in_dim(carry[i], step, c, 0)
                ys[i] = (None, quantized)
            else:
                ys[i] = (u[i].reshape(-1), quantized)
        return carry, ys

    carry, ys = jax.lax.scan(body, carry, (jnp.arange(CHUNKS), xs))
    results = {}
    for i, leaf in geometry.items():
        g, (u, quantized) = call.leaves[i], ys[i]
        buffers = []
        for f, (c, sc) in zip(leaf.fields, quantized):
            old = call.fields[f][1][i]
            buffers.append(QuantizedBuffer(_unchunk(c, leaf.lay, g.shape),
                                           sc.reshape(-1)[:old.scales.size].reshape(old.scales.shape)))
        results[i] = (_unchunk(carry[i] if apply else u, leaf.lay, g.shape), buffers)
    return results


def run_blockwise(update, updates, state, params, bits: int, nonnegative: dict, requantize, apply=False):
    """``update``'s ``(updates, new state)`` on quantized ``state``, large leaves chunk by chunk; ``None``
    when the update is not elementwise or no leaf is large enough (see the module docstring).

    ``requantize(old, new)`` quantizes the new state of the leaves that run whole. ``apply``:
    the new params instead of the updates (``optax.apply_updates``), each chunk's written
    in the loop, so no float32 updates of a whole leaf are kept either.
    """
    call = _Call(updates, state, params, bits, nonnegative)
    big = [i for i in range(len(call.leaves)) if call.chunked(i)]
    if not big:
        return None
    whole = _trace(update, *call.inputs(set(), {}))
    if whole is None or not whole[1]:
        return None
    geometry = {i: _geometry(call, i) for i in big}
    zeros = lambda shape, dtype: jnp.zeros(shape, dtype)  # noqa: E731
    probe = {i: (zeros(leaf.shape, call.leaves[i].dtype),
                 None if call.params is None else zeros(leaf.shape, call.params[i].dtype),
                 {f: zeros(leaf.shape, jnp.float32) for f in leaf.fields}) for i, leaf in geometry.items()}
    emptied = {i for i, g in enumerate(call.leaves) if g.ndim and i not in geometry}
    for inputs in (call.inputs(set(big), {}), call.inputs(emptied, probe)):
        traced = _trace(update, *inputs)
        if traced is None or traced[0] != whole[0]:
            return None
    out, new = update(*call.inputs(set(big), {}))
    new = requantize(state, new)  # the leaves that ran whole
    out_leaves = call.treedef.flatten_up_to(out)
    if apply:  # the leaves that ran whole (the others are replaced below)
        out_leaves = [optax.apply_updates(p, u) if i not in big else u
                      for i, (p, u) in enumerate(zip(call.params, out_leaves))]
    replaced = {path: call.treedef.flatten_up_to(_at(new, path)) for path, _, _ in call.fields}
    for i, (step, buffers) in _loop(update, call, geometry, bits, apply).items():
        out_leaves[i] = step
        for f, buffer in zip(geometry[i].fields, buffers):
            replaced[call.fields[f][0]][i] = buffer
    new = replace_at(new, {path: call.treedef.unflatten(groups) for path, groups in replaced.items()})
    return call.treedef.unflatten(out_leaves), new
