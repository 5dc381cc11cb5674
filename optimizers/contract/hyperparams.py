"""Hyperparameters: values kept in the state, reading and changing them.

Every transform with scalar hyperparameters keeps them in its state as ``hyperparams``, a
dict of scalar arrays, next to an int32 ``count``:

* a **number** is stored at ``init`` and read back from the state at every update, so a new
  value set with :func:`set_hyperparams` takes effect at the next step of an already
  compiled train step, without recompiling (the value is a traced input, not a constant);
* a **schedule** ``step -> value`` is evaluated at ``count`` (0 at the first update) and the
  value it gave is written to the state, for logging;
* an **array** (what ``optax.inject_hyperparams`` passes) is used as given and recorded.

:func:`get_hyperparams` reads the values of the latest update from any optimizer state,
chains and optax wrappers included.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import schedules
from schedules._base import check_range as check_range  # noqa: F401  (re-exported for the transforms)
from schedules._base import checked_range
from schedules._base import is_number as _is_number


def check_learning_rate(owner: str, learning_rate) -> None:
    r"""A learning rate :math:`\gamma \ge 0`, a number or a schedule; ``None`` is refused here, naming it
    (optax's ``None`` means "no scaling" only for ``adafactor`` and ``adadelta``, which keep it)."""
    if learning_rate is None:
        raise ValueError(f"{owner}: learning_rate must be a real number or a schedule step -> value, got None")
    check_range(owner, "learning_rate", learning_rate, 0.0)


def float_dtype():
    """The default float dtype: float32, or float64 when ``jax_enable_x64`` is on."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def init_hyperparams(**values) -> dict[str, jax.Array]:
    """The hyperparameters' values at step 0, as scalar arrays to keep in a state."""
    return {k: jnp.asarray(schedules.resolve(v, 0), float_dtype()) for k, v in values.items()}


def current_hyperparams(values: dict[str, Any], stored: dict[str, jax.Array], count) -> dict:
    """The values for the update at ``count``: numbers from the state, schedules evaluated."""
    return {
        k: stored[k] if _is_number(v) else jnp.asarray(schedules.resolve(v, count), stored[k].dtype)
        for k, v in values.items()
    }


def _has_hyperparams(node) -> bool:
    return hasattr(node, "_fields") and "hyperparams" in node._fields and isinstance(node.hyperparams, dict)


def _visit(node, fn, path=()):
    """``node`` rebuilt with ``fn(holder, path)`` applied to every state holding hyperparams, at any
    depth (wrappers such as lookahead hold the inner optimizer's state inside their own).

    ``path``: where the holder is, as the positions in chains (ints) and the labels of dicts
    (``optax.multi_transform``'s groups, ``optax.partition``'s) from the root, NamedTuple fields left out.
    """
    if _has_hyperparams(node):
        node = fn(node, path)
    if hasattr(node, "_fields"):
        return type(node)(*(_visit(child, fn, path + ((None, f),)) for f, child in zip(node._fields, node)))
    if isinstance(node, (tuple, list)):
        return type(node)(_visit(child, fn, path + ((i, i),)) for i, child in enumerate(node))
    if isinstance(node, dict):
        return type(node)((k, _visit(v, fn, path + ((str(k), k),))) for k, v in node.items())
    return node


def _array(value):
    """A hyperparameter's array, taken out of the one-leaf pytree a trainer may keep it in
    (Flax's ``nnx.Optimizer`` keeps every array of its state in an ``nnx.OptArray``)."""
    leaves = jax.tree.leaves(value)
    return leaves[0] if len(leaves) == 1 else value


def _holders(state) -> dict[str, list[tuple]]:
    """Each hyperparameter name -> the paths of the transforms holding it, in the state's order.

    A holder inside another holder of the same name (the inner optimizer of
    ``optax.inject_hyperparams``, which records the value the outer one passes it) is the same
    hyperparameter, and is not listed.
    """
    found: dict[str, list[tuple]] = {}

    def collect(node, path):
        for k in node.hyperparams:
            if not any(path[:len(outer)] == outer for outer in found.get(k, [])):
                found.setdefault(k, []).append(path)
        return node

    _visit(state, collect)
    return found


def _qualified(name: str, paths: list[tuple]) -> list[str]:
    """The keys of ``name`` held at ``paths``: the name itself when one transform holds it, else
    ``label/name`` by the labels on the way (groups), or ``i/j/name`` by chain positions and labels."""
    if len(paths) == 1:
        return [name]
    labels = ["/".join(str(k) for k, _ in path if isinstance(k, str)) for path in paths]
    if len(set(labels)) == len(labels) and all(labels):
        return [f"{label}/{name}" for label in labels]
    return ["/".join(str(k) for k, _ in path if k is not None) + f"/{name}" for path in paths]


def _values_at(state) -> dict[tuple, jax.Array]:
    """(name, holder's path) -> its value, for every hyperparameter of ``state``."""
    values: dict[tuple, jax.Array] = {}

    def collect(node, path):
        for k, v in node.hyperparams.items():
            values[(k, path)] = _array(v)
        return node

    _visit(state, collect)
    return values


def _same(values) -> bool:
    """Whether concrete values are all equal (traced ones never are, for this purpose)."""
    try:
        first = np.asarray(values[0])
        return all(np.array_equal(np.asarray(v), first) for v in values[1:])
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return False


def _keys(state) -> dict[str, list[tuple[str, tuple]]]:
    """Every key of :func:`get_hyperparams` -> the (name, holder's path) pairs it stands for."""
    values, keys = _values_at(state), {}
    for name, paths in _holders(state).items():
        for key, path in zip(_qualified(name, paths), paths):
            keys[key] = [(name, path)]
        if len(paths) > 1 and _same([values[(name, p)] for p in paths]):
            keys[name] = [(name, p) for p in paths]  # one value in several links (Amos's learning rate)
    return keys


def get_hyperparams(state) -> dict[str, jax.Array]:
    """The hyperparameters of the latest update, read from an optimizer state, as arrays.

    Walks the whole state (chains, wrappers, ``optax.inject_hyperparams``, the state of a
    Flax ``nnx.Optimizer`` or ``TrainState``). A name that one transform holds is its key.
    A name that several transforms hold is also qualified by where each one is, so two values
    are never mixed: by its group's label under ``optax.multi_transform``/``optax.partition``
    (``"encoder/learning_rate"``), else by its position in the chain (``"0/momentum"``); its
    plain name is kept only while all of them hold the same value (one hyperparameter used by
    several links of an alias, such as Amos's learning rate).
    """
    values = _values_at(state)
    return {key: values[pairs[0]] for key, pairs in _keys(state).items()}


# Where a transform checked a name under another (Amos's learning rate is its xi), the range every
# transform gives that name.
_DEFAULT_RANGES = {"learning_rate": (0.0, float("inf"))}


def _check_new_values(state, targets) -> None:
    """Each new value checked as its transform's constructor checked it (type and range), naming it."""
    from optimizers.contract.checks import OWNERS  # the contract's table of state types

    def check(node, path):
        for (name, at), value in targets:
            if name in node.hyperparams and path[:len(at)] == at:
                owner = OWNERS.get(type(node))
                if callable(value):
                    raise ValueError(f"set_hyperparams: {name} must be a number or a scalar array, got the "
                                     f"schedule {value!r} (a schedule is fixed when the optimizer is built)")
                bounds = (None if owner is None else checked_range(owner, name)) or _DEFAULT_RANGES.get(name)
                check_range(f"set_hyperparams ({owner or type(node).__name__})", name, value,
                            *(bounds or ()))
        return node

    _visit(state, check)


def set_hyperparams(state, **values):
    """A copy of ``state`` with the named hyperparameters replaced.

    Names are the keys :func:`get_hyperparams` gives (a qualified one as
    ``set_hyperparams(state, **{"encoder/learning_rate": 1e-4})``; a plain name that several
    transforms hold with the same value sets all of them). The new values keep the stored dtype
    and shape, so a jit-compiled train step that takes the state as an argument runs with them
    without recompiling, and the wrapper a value is kept in (an ``nnx.OptArray`` in a Flax
    ``nnx.Optimizer``'s ``opt_state``: assign the copy back to ``optimizer.opt_state``). A
    hyperparameter given as a schedule is re-evaluated at the next update, so setting it has no
    lasting effect.

    Raises:
        ValueError: a name no transform in ``state`` holds, or one that several hold with
            different values (give the qualified names instead).
    """
    keys = _keys(state)
    unknown = sorted(set(values) - set(keys))
    if unknown:
        ambiguous = {u: sorted(k for k, pairs in keys.items() if k != u and pairs[0][0] == u) for u in unknown}
        if any(ambiguous.values()):
            raise ValueError(f"set_hyperparams: {', '.join(u for u in unknown if ambiguous[u])} is held by "
                             f"several transforms with different values; name each one: {ambiguous}")
        raise ValueError(f"set_hyperparams: no hyperparameter named {unknown} in this state; "
                         f"it holds {sorted(keys)}")
    targets = [(pair, v) for k, v in values.items() for pair in keys[k]]
    _check_new_values(state, targets)

    def replace(node, path):
        def new_value(k, v):
            hit = next((value for (name, at), value in targets if name == k and path[:len(at)] == at), None)
            return v if hit is None else jax.tree.map(lambda x: jnp.asarray(hit, x.dtype), v)

        return node._replace(hyperparams={k: new_value(k, v) for k, v in node.hyperparams.items()})

    return _visit(state, replace)


def is_zero(value) -> bool:
    """Whether a hyperparameter is ``None`` or the number 0, so its transform can be left out.

    Arrays (even zero) and schedules count as present, so a chain has the same structure
    under ``optax.inject_hyperparams`` at ``init`` and at ``update``.
    """
    return value is None or (_is_number(value) and value == 0)


def given(**values) -> dict:
    """The hyperparameters that are given: those that are ``None`` (off) are left out of the state."""
    return {k: v for k, v in values.items() if v is not None}


def either(owner: str, name: str, value, optax_name: str, optax_value, default=None):
    """The value of ``name``, which optax spells ``optax_name``: one of the two, or ``default``.

    Raises:
        ValueError: both are given.
    """
    if value is not None and optax_value is not None:
        raise ValueError(f"{owner}: give {name} or {optax_name} (optax's name for it), not both: "
                         f"got {name}={value!r} and {optax_name}={optax_value!r}")
    if value is None:
        value = optax_value
    return default if value is None else value


def with_prefixed_hyperparams(tx: optax.GradientTransformation, prefix: str) -> optax.GradientTransformation:
    """``tx`` with its hyperparameters named ``prefix + name`` in its state (AdamW's as ``muon``'s
    keywords: ``adam_learning_rate``, ``adam_b1``, ...), so that ``get_hyperparams`` and
    ``set_hyperparams`` tell them from Muon's ``learning_rate``, ``weight_decay`` and ``eps``."""

    def rename(state, fn):
        return _visit(state, lambda node, _: node._replace(hyperparams={fn(k): v for k, v in node.hyperparams.items()}))

    def init_fn(params):
        return rename(tx.init(params), lambda k: prefix + k)

    def update_fn(updates, state, params=None):
        updates, state = tx.update(updates, rename(state, lambda k: k[len(prefix):]), params)
        return updates, rename(state, lambda k: prefix + k)

    return optax.GradientTransformation(init_fn, update_fn)


def static_int(value):
    """``value`` as a Python int, or ``None`` when it is traced (``optax.inject_hyperparams`` under ``jit``)."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        return int(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError, TypeError, ValueError,
            OverflowError):
        return None


def check_count(owner: str, name: str, value, low: int = 1, traced_ok: bool = False) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) of at least ``low``; with
    ``traced_ok`` an integer scalar array too (``optax.inject_hyperparams`` hands the factory its numbers
    as arrays, traced under ``jit``, where only the type can be checked)."""
    if traced_ok and isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.integer) and value.ndim == 0:
        if isinstance(value, jax.core.Tracer):
            return
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
