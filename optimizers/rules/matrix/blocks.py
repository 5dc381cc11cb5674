"""Shampoo's plan of each leaf: its layer axes, which axes carry a statistic, and the partition of
large axes into blocks (Anil et al. 2020, "Scalable Second Order Optimization for Deep Learning")."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.layers import leaf_layer_axes


class BlockPlan(NamedTuple):
    """One leaf: its layer axes ``k``, a layer's shape, which axes have a statistic, and the blocks: per
    axis the block length ``cs`` and count ``ns``; ``blocked`` when some axis has several blocks."""
    k: int
    inner: tuple
    on: tuple
    cs: tuple
    ns: tuple
    blocked: bool


def block_plan(shape: tuple, k: int, on, block_size) -> BlockPlan:
    inner = tuple(shape[k:])
    cs = tuple(d if block_size is None or d <= block_size else block_size for d in inner)
    ns = tuple(1 if c == 0 else -(-d // c) for d, c in zip(inner, cs))
    return BlockPlan(k, inner, tuple(on), cs, ns, any(n > 1 for n in ns))


def block_plans(owner, tree, layer_axes, max_dim, block_size, stats=None):
    """Per leaf its plan; with ``stats`` (a traced ``max_preconditioner_dim``) the axes with a statistic are
    read from the state."""
    leaves, treedef = jax.tree.flatten(tree)
    ks = jax.tree.leaves(leaf_layer_axes(owner, layer_axes, tree))
    columns = None if stats is None else [treedef.flatten_up_to(t) for t in stats]
    plans = []
    for j, (x, k) in enumerate(zip(leaves, ks)):
        inner = x.shape[k:]
        if columns is None:
            on = [0 < d <= max_dim for d in inner]
        else:
            on = [i < len(columns) and not isinstance(columns[i][j], optax.MaskedNode) for i in range(len(inner))]
        plans.append(block_plan(tuple(x.shape), k, on, block_size))
    return plans


def block_axes(plan: BlockPlan) -> int:
    """The block axes added after the layer axes (one per axis of a layer when blocked)."""
    return len(plan.inner) if plan.blocked else 0


def to_blocks(x, plan: BlockPlan):
    """A leaf as (layers..., blocks per axis..., block...): each axis zero-padded to a multiple of its block
    length (the padding adds zero rows to the statistics and keeps the blocks' updates exact)."""
    if not plan.blocked:
        return x
    k, m = plan.k, len(plan.inner)
    pad = [(0, 0)] * k + [(0, n * c - d) for d, c, n in zip(plan.inner, plan.cs, plan.ns)]
    x = jnp.pad(x, pad).reshape(x.shape[:k] + sum(((n, c) for n, c in zip(plan.ns, plan.cs)), ()))
    return x.transpose(list(range(k)) + [k + 2 * j for j in range(m)] + [k + 2 * j + 1 for j in range(m)])


def from_blocks(y, plan: BlockPlan):
    """The inverse of :func:`to_blocks`."""
    if not plan.blocked:
        return y
    k, m = plan.k, len(plan.inner)
    order = list(range(k)) + [a for j in range(m) for a in (k + j, k + m + j)]
    y = y.transpose(order).reshape(y.shape[:k] + tuple(n * c for n, c in zip(plan.ns, plan.cs)))
    return y[(slice(None),) * k + tuple(slice(0, d) for d in plan.inner)]
