"""Saving an optimizer state and restoring it, checked against the optimizer that resumes it.

An optimizer state is a pytree whose layout the optimizer and the params fix:
``tx.init(params)``. flax's ``from_bytes`` and orbax restore arrays into whatever target
they are handed: flax takes arrays of another shape without a word, and neither can tell
two optimizers apart whose states have the same field names (Adam's and Adamax's are both
``count, hyperparams, mu, nu``), so a wrong state resumes silently. Here a checkpoint also
records the tree it holds, every container's type name and keys and every array's shape and
dtype, and restoring first compares that with the target, from the root down: the first
node that differs raises a ``ValueError`` naming its path (``state[0].mu['dense']['w']``)
and what differs (a missing or extra key, another type, shape or dtype). The restored state
has the target's pytree types and dtypes, and each array the target's sharding (or the first
local device).

Resuming in a new process gives bit for bit the run that never stopped (all the optimizers'
counts, schedules' steps, plateau and averaging states are arrays in the state)::

    tx = optimizers.adamw(schedules.one_cycle(100, peak_value=1e-2))
    state = tx.init(params)
    for batch in batches[:50]:
        params, state = train_step(params, state, batch)
    optimizers.checkpoint.save("/ckpt/50", {"params": params, "opt": state})

    # A new process: the same model and tx, shapes only (no memory) as the target.
    abstract = jax.eval_shape(init_params, jax.random.key(0))
    target = {"params": abstract, "opt": jax.eval_shape(tx.init, abstract)}
    restored = optimizers.checkpoint.restore("/ckpt/50", target)
    params, state = restored["params"], restored["opt"]
    for batch in batches[50:]:
        params, state = train_step(params, state, batch)

:func:`to_bytes` and :func:`from_bytes` do the same in memory (flax msgpack). orbax is an
optional dependency (``pip install orbax-checkpoint``), imported by :func:`save` and
:func:`restore` only.
"""

from __future__ import annotations

import os
from typing import Any

import flax.serialization
import jax
import numpy as np

from optimizers.contract.checks import like_nnx, nnx_values

_KEY = "optimizers.checkpoint"  # the tree's description in an orbax checkpoint's custom metadata


def _describe(tree) -> dict[str, list]:
    """Every node of ``tree`` by its path, from the root down.

    A container is ``[type name, [key of each child]]``, an array (or a
    ``jax.ShapeDtypeStruct``) ``["array", dtype, shape]``; ``None`` is a container without
    children. Only names, so the description is JSON and msgpack data.
    """
    out = {}

    def visit(where, node):
        children, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
        if [k for k, _ in children] == [()]:  # a leaf is its own only child
            dtype = node.dtype if hasattr(node, "dtype") else np.result_type(node)
            out[where] = ["array", np.dtype(dtype).name, list(np.shape(node))]
            return
        keys = [jax.tree_util.keystr(k) for k, _ in children]
        out[where] = ["None" if node is None else type(node).__name__, keys]
        for key, (_, child) in zip(keys, children):
            visit(where + key, child)

    visit("state", tree)
    return out


def _names(keys: list) -> str:
    return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "") or "none"


def _kind(entry: list) -> str:
    return f"an array {entry[1]}{entry[2]}" if entry[0] == "array" else f"a {entry[0]}"


def _difference(where: str, want: list, got: list) -> str:
    """The first path where ``got`` (restored) differs from ``want`` (target), and how."""
    if want[0] != got[0] or want[0] == "array":
        return f"{where}: the restored state has {_kind(got)}, the target {_kind(want)}"
    missing = [k for k in want[1] if k not in got[1]]
    extra = [k for k in got[1] if k not in want[1]]
    if not missing and not extra:
        return f"{where}: the {want[0]}'s keys are in another order: {_names(got[1])}; the target's {_names(want[1])}"
    first = where + (missing or extra)[0]
    return (f"{first}: {'missing from' if missing else 'extra in'} the restored state "
            f"({want[0]} keys missing: {_names(missing)}; extra: {_names(extra)})")


def _check(target: dict, restored: dict) -> None:
    # From the root down: once a node's keys match, its children's paths exist in both.
    for where, want in target.items():
        got = restored[where]
        if got != want:
            raise ValueError(f"checkpoint: the restored state does not fit the target at {_difference(where, want, got)}")


def check_compatible(target, restored) -> None:
    """Raises ``ValueError`` at the first node where ``restored`` does not fit ``target``.

    Compares, from the root down, each container's type name (``ScaleByAdamState``,
    ``dict``, ``tuple``, ``None``) and keys, and each array's shape and dtype; values are not
    compared. Leaves may be arrays or ``jax.ShapeDtypeStruct`` (``jax.eval_shape(tx.init,
    params)``). The message names the path, e.g. ``state[0].mu['dense']['w']: the restored
    state has an array float32[4, 3], the target an array float32[3, 4]``.
    """
    _check(_describe(nnx_values(target)), _describe(nnx_values(restored)))


def _place(x, like):
    """``x`` on ``like``'s sharding, or, as orbax does, on the first local device where it has none."""
    return jax.device_put(x, getattr(like, "sharding", None) or jax.local_devices()[0])


def to_bytes(state) -> bytes:
    """flax msgpack bytes of ``state`` and of its tree's description.

    The bytes hold ``{"tree": description, "state": flax.serialization.to_state_dict(state)}``,
    readable with ``flax.serialization.msgpack_restore``.
    """
    state = nnx_values(state)  # an nnx.Optimizer's opt_state: its OptArrays' values
    return flax.serialization.msgpack_serialize(
        {"tree": _describe(state), "state": flax.serialization.to_state_dict(state)})


def from_bytes(target, data: bytes):
    """The state :func:`to_bytes` wrote, as ``target``'s pytree types, dtypes and shardings.

    ``target`` is the resuming optimizer's state, ``tx.init(params)``, or its shapes,
    ``jax.eval_shape(tx.init, params)``.

    Raises:
        ValueError: the saved tree does not fit ``target`` (see :func:`check_compatible`),
            or ``data`` was not written by :func:`to_bytes`.
    """
    raw = flax.serialization.msgpack_restore(data)
    if not isinstance(raw, dict) or set(raw) != {"tree", "state"}:
        raise ValueError("checkpoint.from_bytes: data was not written by optimizers.checkpoint.to_bytes")
    values = nnx_values(target)
    _check(_describe(values), raw["tree"])
    restored = jax.tree.map(_place, flax.serialization.from_state_dict(values, raw["state"]), values)
    return like_nnx(restored, target)


def _directory(path) -> str:
    """orbax needs an absolute path (or a URL such as ``gs://...``)."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def save(path, state: Any) -> None:
    """Writes ``state`` to the new directory ``path`` with orbax, with its tree's description.

    orbax cannot write empty arrays (Adafactor's placeholders for factored leaves): they are
    written as ``None`` and :func:`restore` rebuilds them from the target.
    """
    import orbax.checkpoint as ocp

    state = nnx_values(state)
    arrays = jax.tree.map(lambda x: None if np.size(x) == 0 else x, state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(_directory(path), arrays, custom_metadata={_KEY: _describe(state)})


def restore(path, target):
    """The state :func:`save` wrote to ``path``, as ``target``'s pytree types, dtypes and shardings.

    The saved tree's description is read and checked against ``target`` (a state or
    ``jax.eval_shape(tx.init, params)``) before any array is.

    Raises:
        ValueError: the saved tree does not fit ``target`` (see :func:`check_compatible`),
            or ``path`` was not written by :func:`save`.
    """
    import orbax.checkpoint as ocp
    from etils import epath

    if not epath.Path(_directory(path)).exists():  # orbax would read no metadata and raise nothing
        raise FileNotFoundError(f"checkpoint.restore: no checkpoint at {path}")
    template, target = target, nnx_values(target)
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata(_directory(path)).custom_metadata or {}
        if _KEY not in saved:
            raise ValueError(f"checkpoint.restore: {path} was not written by optimizers.checkpoint.save")
        _check(_describe(target), saved[_KEY])
        shapes = jax.tree.map(lambda t: None if np.size(t) == 0 else jax.ShapeDtypeStruct(
            np.shape(t), t.dtype, sharding=getattr(t, "sharding", None)), target)
        arrays = checkpointer.restore(_directory(path), shapes)
    restored = jax.tree.map(lambda t, x: _place(np.zeros(t.shape, t.dtype) if x is None else x, t), target, arrays)
    return like_nnx(restored, template)
