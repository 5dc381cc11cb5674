"""The fused kernels on 8-bit state: what :func:`with_quantized_state` needs to call them.

A fused transform whose kernel also takes :class:`QuantizedBuffer` state (``kernels/quantized.h``,
targets ``optimizers_NAME_q8``) carries it as its ``coded`` attribute (``backend.fuse``), which runs
where :func:`codes_fit`; ``ffi._call`` sends the leaves whose buffers are codes to :func:`call_coded`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from optimizers.contract.checks import param_groups
from optimizers.wrappers.quantized.codes import QuantizedBuffer, is_quantized, layout_of, table


def codes_fit(grads, trees) -> bool:
    """Whether each leaf's state buffers in ``trees`` (trees of the grads' structure) are all arrays, or all
    8-bit codes shaped like the leaf with scales of one layout (what the ``_q8`` kernels take)."""
    treedef = jax.tree.structure(grads)
    columns = [param_groups(tree, treedef) for tree in trees]
    if any(column is None for column in columns):
        return False
    for g, group in zip(jax.tree.leaves(grads), zip(*columns)):
        coded = [b for b in group if is_quantized(b)]
        if coded and (len(coded) < len(group) or any(
                b.codes.shape != g.shape or b.codes.dtype not in (jnp.int8, jnp.uint8)
                or b.scales.shape != coded[0].scales.shape for b in coded)):
            return False
    return True


@functools.lru_cache(maxsize=None)
def _tables():
    """The kernels' two tables of the 8-bit codes' values: the signed code's, then the unsigned one's."""
    with jax.ensure_compile_time_eval():  # first asked for inside a trace
        return np.concatenate([table(8, True), table(8, False)])


def call_coded(ffi, target, hyper, info, params, grads, buffers, step, group, **attrs):
    """``target``'s ``_q8`` kernel over the leaves ``group``, whose buffers are 8-bit codes, called with
    ``ffi`` (``ffi._ffi``): their outputs and new buffers. The kernel gets the tables after the
    scalars and the block sizes after ``info``."""
    pick = lambda xs: [xs[i] for i in group]  # noqa: E731
    blocks = [jnp.float32(layout_of(b.codes.shape, b.scales.shape).block) for b in pick(buffers[0])]
    state = [[(b.codes, b.scales) for b in pick(buffer)] for buffer in buffers]
    out, state = ffi(f"{target}_q8", jnp.concatenate([hyper, _tables()]), [*(pick(c) for c in info), blocks],
                     pick(params), pick(grads), state, step, **attrs)
    return out, [[QuantizedBuffer(*item) for item in column] for column in state]
