r"""Kronecker-factored statistics shared by Shampoo and SOAP: per-mode outer products, mode products.

For a tensor :math:`G` of order :math:`k` (one layer of a leaf), the statistic of mode :math:`i`
is :math:`G_{(i)} G_{(i)}^\top`, the contraction of :math:`G` with itself over every axis but
:math:`i` (for a matrix: :math:`GG^\top` and :math:`G^\top G`). The mode-:math:`i` product
:math:`G \times_i M` multiplies axis :math:`i` of :math:`G` by :math:`M`. Everything here acts
on one layer; the transforms map it over the layer axes (:func:`~optimizers.contract.layers.over_layers`).
"""

from __future__ import annotations

import math

import optax

import jax.numpy as jnp


def merge_small_dims(shape: tuple, max_dim: int) -> tuple:
    """The SOAP authors' ``merge_dims``: consecutive axes merged while their product stays ``<= max_dim``.

    ``(2, 3, 4)`` with ``max_dim=10`` gives ``(6, 4)``; an axis above ``max_dim`` stays alone.
    A shape with no axes gives ``(1,)``.
    """
    out, cur = [], 1
    for d in shape:
        if cur * d > max_dim:
            if cur > 1:
                out.append(cur)
                cur = d
            else:
                out.append(d)
                cur = 1
        else:
            cur *= d
    if cur > 1 or not out:
        out.append(cur)
    assert math.prod(out) == math.prod(shape)
    return tuple(out)


def mode_statistic(g, axis: int):
    r""":math:`G_{(i)} G_{(i)}^\top`: ``g`` contracted with itself over every axis but ``axis``."""
    others = [a for a in range(g.ndim) if a != axis]
    return jnp.tensordot(g, g, axes=(others, others))


def mode_product(x, m, axis: int, transpose: bool = False):
    r""":math:`x \times_i M^\top` (``transpose=False``: :math:`\sum_j x_{..j..} M_{jk}`) or
    :math:`x \times_i M` (``transpose=True``: :math:`\sum_j x_{..j..} M_{kj}`), on axis ``axis``."""
    y = jnp.tensordot(x, m, axes=([axis], [1 if transpose else 0]))
    return jnp.moveaxis(y, -1, axis)


def project(x, bases, transpose: bool = False):
    """``x`` with every axis that has a basis (``bases[i]`` not ``None``) multiplied by it: into the
    eigenbasis (:math:`Q^\\top`, ``transpose=False``) or back (:math:`Q`, ``transpose=True``)."""
    for axis, q in enumerate(bases):
        if q is not None:
            x = mode_product(x, q.astype(x.dtype), axis, transpose)
    return x


def eigenbasis(stat):
    r"""The eigenvectors of a symmetric statistic, by decreasing eigenvalue (the SOAP authors'
    ``torch.linalg.eigh(m + 1e-30 I)`` and a flip of the columns)."""
    eye = jnp.eye(stat.shape[-1], dtype=stat.dtype)
    _, vecs = jnp.linalg.eigh(stat + 1e-30 * jnp.broadcast_to(eye, stat.shape))
    return vecs[..., ::-1]


# Per-leaf plans: which axes of a leaf (after its layer axes ``plan.k``) carry a matrix (``plan.on``).

def per_leaf(trees, treedef, plans) -> list:
    """From one tree per axis (``optax.MaskedNode`` where a leaf has no matrix at that axis): per leaf,
    the tuple of its matrices (the axes with a basis, in order)."""
    columns = [treedef.flatten_up_to(t) for t in trees]
    return [tuple(columns[i][j] for i, on in enumerate(plan.on) if on) for j, plan in enumerate(plans)]


def per_axis(per_leaf, treedef, plans, n_axes) -> tuple:
    """The inverse of :func:`per_leaf`: one tree per axis, ``optax.MaskedNode`` where there is no matrix."""
    out = []
    for i in range(n_axes):
        column = []
        for mats, plan in zip(per_leaf, plans):
            if i < len(plan.on) and plan.on[i]:
                column.append(mats[sum(plan.on[:i])])
            else:
                column.append(optax.MaskedNode())
        out.append(treedef.unflatten(column))
    return tuple(out)


def flag_shape(x, plan) -> tuple:
    """The layer axes, then 1s (so that ``state_shardings`` tells the layer axis from an equal-sized other);
    a scalar for a leaf without layer axes."""
    return () if plan.k == 0 else x.shape[:plan.k] + (1,) * (x.ndim - plan.k)


def n_axes(plans) -> int:
    return max((len(p.on) for p in plans if any(p.on)), default=0)
