r"""Running a non-elementwise update on quantized state leaf by leaf.

When an update is not elementwise (LAMB's and LARS's trust ratios, NovoGrad's per-leaf norms,
Adafactor's factored moments, SM3's covers), :func:`optimizers.wrappers.quantized.blockwise.run_blockwise` cannot
cut it into chunks, and running it on the dequantized state of all leaves at once keeps every
leaf's float32 state (and the temporaries of its reductions) alive together: 14 bytes per
parameter for LAMB, more than float32 state's peak.

:func:`run_leafwise` runs such an update one leaf at a time (a group of consecutive leaves at
most as large as the largest one, so small leaves go together) when each output of the
update depends only on its own leaf's inputs and on the inputs that belong to no leaf
(counts, hyperparameters). That is decided on the traced update, never by name: a
dead-code pass over its jaxpr (``dce_jaxpr``: the inputs needed for a set of outputs, through
every nested jaxpr) gives, for each group's outputs, the flattened inputs they read; a group
that reads another leaf's gradient, param or state (a global norm clipping, a funnelled dot
product, ``apply_if_finite``'s finiteness test of all grads) sends the whole update back to
the whole-tree path. Each group evaluates the pruned jaxpr of its own outputs: its leaves'
state is dequantized, updated and quantized again, and the next group's inputs pass through
an ``optimization_barrier`` with this group's new codes, so XLA runs the groups one after
another and the step's float32 temporaries are those of its largest leaf, not the model's.
The arithmetic is the whole update's, operation for operation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
try:  # jax's own dead-code pass over a jaxpr: no public name (jax 0.10); without it, updates run whole
    from jax._src.interpreters import partial_eval as pe
except ImportError:  # pragma: no cover
    pe = None

from optimizers.wrappers.quantized.blockwise import _at, per_param_fields
from optimizers.wrappers.quantized.codes import dequantize, is_quantized


def _owners(tree, treedef, paths) -> list:
    """For each leaf of ``tree`` (quantized buffers as leaves) the index of the param whose field holds it, or -1."""
    flat, structure = jax.tree.flatten(tree, is_leaf=is_quantized)
    index = structure.unflatten(list(range(len(flat))))
    owner = [-1] * len(flat)
    for path in paths:
        for i, group in enumerate(treedef.flatten_up_to(_at(index, path))):
            for j in jax.tree.leaves(group):
                owner[j] = i
    return owner


def _abstract(x):
    if is_quantized(x):
        return jax.ShapeDtypeStruct(x.codes.shape, jnp.float32)
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def _groups(sizes: list, quantized: set) -> list:
    """Consecutive leaves packed while their elements stay within the largest quantized leaf's."""
    cap = max(sizes[i] for i in quantized)
    groups, current, total = [], [], 0
    for i, size in enumerate(sizes):
        if current and total + size > cap:
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    return groups + [current] if current else groups


class _Plan:
    """The update's jaxpr (constants as inputs), its flattened inputs and outputs, and who owns each."""

    def __init__(self, update, updates, state, params, nonnegative):
        self.treedef = jax.tree.structure(updates)
        n = self.treedef.num_leaves
        paths = [path for path, _, _ in per_param_fields(state, self.treedef, nonnegative)]
        inner = jax.tree.map(_abstract, state, is_leaf=is_quantized)
        args = (jax.tree.map(_abstract, updates), inner, None if params is None else jax.tree.map(_abstract, params))
        closed, out_shape = jax.make_jaxpr(update, return_shape=True)(*args)
        self.jaxpr = pe.convert_constvars_jaxpr(closed.jaxpr)
        self.state_flat, self.state_structure = jax.tree.flatten(state, is_leaf=is_quantized)
        self.inputs = (list(closed.consts) + jax.tree.leaves(updates) + self.state_flat
                       + ([] if params is None else self.treedef.flatten_up_to(params)))
        state_owner = _owners(state, self.treedef, paths)
        self.in_owner = ([-1] * len(closed.consts) + list(range(n)) + state_owner
                         + ([] if params is None else list(range(n))))
        out_u, out_state = out_shape
        self.valid = (jax.tree.structure(out_u) == self.treedef
                      and jax.tree.structure(out_state) == jax.tree.structure(inner))
        self.out_owner = list(range(n)) + state_owner if self.valid else []
        self.n = n

    def needs(self, outputs: list):
        """The pruned jaxpr of ``outputs`` (flags) and the flags of the inputs it reads."""
        return pe.dce_jaxpr(self.jaxpr, outputs)


def _after(inputs: list, previous: list) -> list:
    r"""``inputs`` made to depend on ``previous`` (the last group's outputs), values unchanged.

    XLA:CPU drops ``optimization_barrier`` before scheduling, so the order is a data
    dependency: each floating input (grads, params, scales) times :math:`1 + 0 \cdot s`, with
    :math:`s` a sum of one element of each previous output, each clipped to [0, 1] and a
    non-finite one taken as 0 (a NaN update of one leaf must not spread to the next, and the
    sum cannot overflow); exact (:math:`x \cdot 1 = x`),
    and fused into its readers, so no copy.
    """
    firsts = [x.reshape(-1)[0].astype(jnp.float32) for x in jax.tree.leaves(previous) if x.size]
    firsts = [jnp.where(jnp.isfinite(x), jnp.minimum(jnp.abs(x), 1.0), 0.0) for x in firsts]
    if not firsts:
        return inputs
    one = 1.0 + 0.0 * sum(firsts)

    def tie(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and jnp.ndim(x):
            return x * one.astype(x.dtype)
        return x

    return jax.tree.map(tie, inputs)


def run_leafwise(update, updates, state, params, bits: int, nonnegative: dict, requantize, apply=False):
    """``update``'s ``(updates, new state)`` on quantized ``state``, leaf by leaf; ``None`` when an output
    reads another leaf's inputs, or there is one group only (see the module docstring).

    ``requantize(old, new)`` quantizes a new state leaf like its old buffer; ``apply``: the new
    params instead of the updates (``optax.apply_updates``), each leaf's written in its group.
    """
    if (params is None and apply) or pe is None:
        return None
    try:
        plan = _Plan(update, updates, state, params, nonnegative)
    except Exception:  # noqa: BLE001  (a rule that cannot be traced apart runs whole)
        return None
    if not plan.valid:
        return None
    n, first_state = plan.n, len(plan.inputs) - len(plan.state_flat) - (0 if params is None else plan.n)
    quantized = {plan.in_owner[first_state + j] for j, x in enumerate(plan.state_flat) if is_quantized(x)} - {-1}
    if not quantized:
        return None
    sizes = [max([math.prod(_abstract(x).shape) for x, o in zip(plan.inputs, plan.in_owner) if o == i] or [0])
             for i in range(n)]
    groups = _groups(sizes, quantized)
    if len(groups) < 2:
        return None
    parts = []
    for members in [set(g) for g in groups] + [{-1}]:
        jaxpr, used = plan.needs([o in members for o in plan.out_owner])
        if any(u and o not in members and o != -1 for u, o in zip(used, plan.in_owner)):
            return None  # an output reads another leaf's inputs
        parts.append((members, jaxpr, used))
    outputs = [None] * len(plan.out_owner)
    previous = ()
    for members, jaxpr, used in parts:
        raw = _after([x for x, u in zip(plan.inputs, used) if u], previous)
        values = [dequantize(x, bits) if is_quantized(x) else x for x in raw]
        results = jax.core.eval_jaxpr(jaxpr, [], *values)
        done = []
        for j, value in zip([j for j, o in enumerate(plan.out_owner) if o in members], results):
            if j < n and apply:
                value = optax.apply_updates(plan.inputs[len(plan.inputs) - n + j], value)
            elif j >= n:
                value = requantize(plan.state_flat[j - n], value)
            outputs[j] = value
            done.append(value)
        previous = done
    new = plan.state_structure.unflatten(outputs[n:])
    return plan.treedef.unflatten(outputs[:n]), new
