r"""Distributed Muon (Liu et al. 2025, "Muon is Scalable for LLM Training"): whole matrices spread
over the devices of a mesh axis, each device orthogonalizing its share.

Under ``jax.jit`` every device would otherwise run Newton–Schulz on every (replicated) matrix.
Here the matrices of one step are grouped by shape (a tall matrix as its transpose: NS
iterates on the wide side, and :math:`\mathrm{NS}(X^\top) = \mathrm{NS}(X)^\top` step for step),
each group stacked into :math:`(K, a, b)`, padded with zero matrices to a multiple of the axis
size :math:`N` (a zero matrix stays zero), and the stack's leading axis sharded over the axis
(``jax.lax.with_sharding_constraint`` before and after the iteration): each device iterates on
:math:`\lceil K/N \rceil` matrices, and XLA gathers the results where the update needs them.
On a mesh whose axis is ``Explicit`` the layout is set with ``jax.sharding.reshard``; on an
``Auto`` one with ``jax.lax.with_sharding_constraint``. A group of one matrix (:math:`K = 1`)
cannot be spread; on an ``Auto`` axis it is split along its long side instead (columns of the
wide orientation), where each iteration all-reduces only the short side's Gram matrix
:math:`XX^\top` and the large products stay split (see the guide's numbers).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def check_distributed(owner: str, distributed) -> Optional[tuple]:
    """``None`` or ``(mesh, axis)`` (``axis`` a mesh axis name or a tuple of them), checked."""
    if distributed is None:
        return None
    if not (isinstance(distributed, tuple) and len(distributed) == 2 and isinstance(distributed[0], Mesh)):
        raise ValueError(f"{owner}: distributed must be None or (mesh, axis name), got {distributed!r}")
    mesh, axis = distributed
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    unknown = [a for a in names if a not in mesh.axis_names]
    if not names or unknown:
        raise ValueError(f"{owner}: distributed's axis {axis!r} is not an axis of the mesh {mesh.axis_names}")
    return mesh, names


def _size(mesh, names) -> int:
    return math.prod(mesh.shape[a] for a in names)


def _explicit(mesh, names) -> bool:
    types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()) or ()))
    return any(str(types.get(a, "")).endswith("Explicit") for a in names)


def _place(x, sharding, explicit):
    """``x`` laid out as ``sharding``: a constraint on Auto mesh axes, ``reshard`` on Explicit ones."""
    return jax.sharding.reshard(x, sharding) if explicit else jax.lax.with_sharding_constraint(x, sharding)


def orthogonalize_all(mats: list, ortho, distributed) -> list:
    """``[ortho(x) for x in mats]`` (each ``batch + (m, n)``), computed per group of same-shaped
    matrices with the groups spread over ``distributed = (mesh, axis names)``."""
    if distributed is None:
        return [ortho(x) for x in mats]
    mesh, names = distributed
    n_dev = _size(mesh, names)
    axis = names if len(names) > 1 else names[0]
    explicit = _explicit(mesh, names)
    groups = {}
    for i, x in enumerate(mats):
        m, n = x.shape[-2:]
        key = (min(m, n), max(m, n), jnp.dtype(x.dtype))
        groups.setdefault(key, []).append(i)
    out = [None] * len(mats)
    for (a, b, _), members in groups.items():
        wide = [jnp.swapaxes(mats[i], -1, -2) if mats[i].shape[-2] > mats[i].shape[-1] else mats[i]
                for i in members]
        flat = [x.reshape((-1, a, b)) for x in wide]
        counts = [f.shape[0] for f in flat]
        stack = jnp.concatenate(flat) if len(flat) > 1 else flat[0]
        k = stack.shape[0]
        if k == 1:  # one matrix: split its long side
            spec = P(None, None, axis) if b % n_dev == 0 and not explicit else P()
        else:
            pad = -k % n_dev
            if pad:
                stack = jnp.concatenate([stack, jnp.zeros((pad, a, b), stack.dtype)])
            spec = P(axis, None, None)
        sharding = NamedSharding(mesh, spec)
        o = _place(ortho(_place(stack, sharding, explicit)), sharding, explicit)
        if explicit:  # the gather back, before the slices (JAX slices no Explicit-sharded axis unevenly)
            o = jax.sharding.reshard(o, NamedSharding(mesh, P()))
        start = 0
        for i, x, c in zip(members, wide, counts):
            piece = o[start:start + c].reshape(x.shape)
            start += c
            out[i] = jnp.swapaxes(piece, -1, -2) if mats[i].shape[-2] > mats[i].shape[-1] else piece
    return out
