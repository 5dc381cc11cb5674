r"""``flat_state=True`` of the fused transforms: per-parameter state buffers as flat arrays.

Each buffer (a moment, a momentum) is one float32 array holding the leaves one after another,
in the order of ``jax.tree.leaves(params)``: the layout the fused kernels take as one
operand, so that JAX passes and creates one buffer per moment instead of one per leaf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _check_flat(owner: str, params) -> None:
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        if jnp.result_type(x) != jnp.float32:
            raise ValueError(f"{owner}: flat_state=True needs float32 params and gradients, got "
                             f"{jax.tree_util.keystr(path) or 'params'} of dtype {jnp.result_type(x)}")


def _fields(state, names):
    """The ``(link, field)`` pairs of a chain's ``state`` whose field is one of ``names``."""
    return [(i, f) for i, link in enumerate(state) for f in getattr(link, "_fields", ()) if f in names]


def flatten_state(state, names):
    """``state`` (a chain's tuple) with each field called one of ``names`` one flat float32 array."""
    state = list(state)
    for i, f in _fields(state, names):
        leaves = [x.ravel() for x in jax.tree.leaves(getattr(state[i], f))]
        flat = jnp.concatenate(leaves) if leaves else jnp.zeros((0,), jnp.float32)
        state[i] = state[i]._replace(**{f: flat})
    return tuple(state)


def unflatten_state(state, names, params):
    """The inverse of :func:`flatten_state`: each field back in the params' tree and shapes."""
    leaves, treedef = jax.tree.flatten(params)
    starts = [0]
    for x in leaves:
        starts.append(starts[-1] + x.size)
    state = list(state)
    for i, f in _fields(state, names):
        flat = getattr(state[i], f)
        if flat.shape != (starts[-1],):
            raise ValueError(f"flat_state: the state's {f!r} has shape {flat.shape}, the params need "
                             f"({starts[-1]},)")
        parts = [flat[a:b].reshape(x.shape) for a, b, x in zip(starts, starts[1:], leaves)]
        state[i] = state[i]._replace(**{f: treedef.unflatten(parts)})
    return tuple(state)


def with_flat_state(owner, chain, fields) -> optax.GradientTransformation:
    """``chain`` keeping the per-parameter ``fields`` (names) as flat arrays (unflattened around its update)."""

    def init_fn(params):
        _check_flat(owner, params)
        return flatten_state(chain.init(params), fields)

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: flat_state=True needs params in update")
        updates, state = chain.update(grads, unflatten_state(state, fields, params), params)
        return updates, flatten_state(state, fields)

    return optax.GradientTransformation(init_fn, update_fn)
