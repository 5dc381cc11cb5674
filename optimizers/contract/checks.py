"""The pytree contract every transform here keeps: checked trees, non-float leaves passed through.

Every transform in the package is built with :func:`transformation`, which adds two things
around its ``init`` and ``update``:

* **Matching trees.** ``update`` checks, while tracing (no cost in the compiled step), that
  the updates have the structure and leaf shapes of ``params`` (when given) and of the state
  ``init`` built: grads of other params (a renamed layer, a changed width, a state restored
  from another model) raise a ``ValueError`` naming the first differing path, instead of a
  broadcasting error deep inside the update or, worse, silent broadcasting.
* **Non-float leaves pass through.** Integer, boolean and ``float0`` leaves (step counters or
  masks kept in the params; ``jax.grad(..., allow_int=True)`` gives them ``float0``
  gradients) and ``None`` leaves are returned unchanged and get no state: the update rule
  only sees the floating (real or complex) leaves.
"""

from __future__ import annotations

from collections.abc import Mapping

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _is_none(x) -> bool:
    return x is None


def child_nodes(node):
    """The direct children of a pytree node and the node's structure over them."""
    return jax.tree.flatten(node, is_leaf=lambda x: x is not node)


def param_groups(node, treedef):
    """``node`` cut at the params' structure ``treedef`` (one subtree per param, as a state field that
    mirrors the params holds them), or ``None`` when ``treedef`` is not a prefix of ``node``."""
    try:
        return treedef.flatten_up_to(node)
    except (ValueError, TypeError):
        return None


def is_float(leaf) -> bool:
    """Whether a leaf is a floating or complex array or number (the leaves an update rule sees)."""
    if leaf is None:
        return False
    dtype = jax.dtypes.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
    return jnp.issubdtype(dtype, jnp.inexact)


def floats_only(tree):
    """``tree`` with every non-float leaf replaced by ``None``."""
    return jax.tree.map(lambda x: x if is_float(x) else None, tree)


def with_passed_through(original, updated):
    """``updated`` (a tree from :func:`floats_only`'s leaves) with the original non-float leaves back."""
    leaves, treedef = jax.tree.flatten(original, is_leaf=_is_none)
    new = jax.tree.leaves(updated, is_leaf=_is_none)
    return treedef.unflatten([n if is_float(o) else o for o, n in zip(leaves, new)])


def _shape(leaf):
    return None if leaf is None else tuple(getattr(leaf, "shape", np.shape(leaf)))


def _dtype(leaf):
    return None if leaf is None else jnp.dtype(getattr(leaf, "dtype", jax.dtypes.result_type(leaf)))


def first_difference(expected, actual, dtypes: bool = False) -> str | None:
    """Where ``actual`` first differs from ``expected``: a missing or extra path, another
    shape (or dtype, with ``dtypes``), or other node types; ``None`` when they match.

    Paths are written as ``jax.tree_util.keystr`` writes them (``['dense']['kernel']``,
    ``[0].mu``).
    """
    if _signature(expected, dtypes) == _signature(actual, dtypes):  # the usual case, without building paths
        return None
    want = jax.tree_util.tree_flatten_with_path(expected, is_leaf=_is_none)[0]
    have = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(actual, is_leaf=_is_none)[0]}
    for path, leaf in want:
        key = jax.tree_util.keystr(path)
        if key not in have:
            return f"{key or 'the root'} is missing"
        other = have.pop(key)
        if _shape(leaf) != _shape(other):
            return f"{key or 'the root'} has shape {_shape(other)}, expected {_shape(leaf)}"
        if dtypes and _dtype(leaf) != _dtype(other):
            return f"{key or 'the root'} has dtype {_dtype(other)}, expected {_dtype(leaf)}"
    if have:
        return f"{next(iter(have)) or 'the root'} is not expected"
    if jax.tree.structure(expected, is_leaf=_is_none) != jax.tree.structure(actual, is_leaf=_is_none):
        return (f"the same paths but other node types: {jax.tree.structure(actual, is_leaf=_is_none)}, "
                f"expected {jax.tree.structure(expected, is_leaf=_is_none)}")
    return None


def _signature(tree, dtypes: bool = True):
    """The structure, shapes (and dtypes) of ``tree``: equal signatures, equal trees for these checks."""
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_none)
    return treedef, tuple((_shape(x), _dtype(x) if dtypes else None) for x in leaves)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(_shape(x), _dtype(x)), tree)


class StateShapes:
    """The state's shapes that ``init_fn`` builds for each signature of params, traced once per signature.

    ``init`` records what it built; ``update`` looks up what its updates imply, so a train
    step compiled for the params ``init`` saw costs no second trace of ``init``.
    """

    def __init__(self, init_fn: Callable):
        self.init_fn, self.known = init_fn, {}

    def record(self, params, state) -> None:
        self.known[_signature(params)] = _abstract(state)

    def implied(self, updates):
        """The state's shapes for ``updates``; ``None`` where ``init`` cannot be traced: its shapes
        depend on a hyperparameter that is traced here (``optax.inject_hyperparams`` passes ints
        such as Adafactor's ``min_dim_size_to_factor`` as arrays, traced in a jit-compiled update)."""
        key = _signature(updates)
        if key not in self.known:
            try:
                self.known[key] = jax.eval_shape(self.init_fn, _abstract(updates))
            except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
                self.known[key] = None
        return self.known[key]


def check_update_args(owner: str, shapes: StateShapes, updates, state, params) -> None:
    """Raises ``ValueError`` when ``updates`` do not match ``params`` or the state their shapes imply."""
    if params is not None:
        where = first_difference(params, updates)
        if where is not None:
            raise ValueError(f"{owner}: the updates do not match the params: in the updates, {where} "
                             f"(as in the params)")
    implied = shapes.implied(floats_only(updates))
    where = None if implied is None else first_difference(state, implied)
    if where is not None:
        raise ValueError(f"{owner}: the updates do not match the optimizer state (was it initialised "
                         f"with other params?): in the state these updates imply, {where}")


OWNERS: dict[type, str] = {}  # a state type -> the transform that builds it (for set_hyperparams' checks)


def check_no_integer_updates(owner: str, updates) -> None:
    """Raises ``ValueError`` naming the first integer or bool leaf of ``updates``: passed through, it
    would be added to the params (an ascent). ``None`` and ``float0`` leaves (what
    ``jax.grad(..., allow_int=True)`` gives integer params) are zero updates and pass."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(updates)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and dtype != jax.dtypes.float0 and not jnp.issubdtype(dtype, jnp.inexact):
            raise ValueError(f"{owner}: the updates at {jax.tree_util.keystr(path)} are {dtype}: an integer or "
                             f"bool gradient is refused (it would be added to the params); "
                             f"jax.grad(..., allow_int=True) gives integer params float0 zeros")


def _mapping(x) -> bool:
    """A mapping node of a pytree (a dict, an ``nnx.State``), not a Flax variable (which is a leaf here)."""
    nnx = _nnx()
    return isinstance(x, Mapping) and not (nnx is not None and isinstance(x, nnx.Variable))


def conform(state, like):
    """``state`` in ``like``'s containers where the two differ only by them: a mapping where ``like``
    has a ``NamedTuple`` of the same fields becomes that ``NamedTuple``, and a ``NamedTuple`` where
    ``like`` has a mapping of its fields becomes that mapping. Flax's ``nnx.Optimizer`` hands a state
    back with such nodes (an 8-bit :class:`QuantizedBuffer` under a dict of the params) as
    ``nnx.State`` mappings: a transform reads it in the containers ``init`` built and returns its
    new state in the containers it was given (so a wrapper such as ``optax.MultiSteps`` that
    combines the two sees one structure)."""
    nnx = _nnx()
    if nnx is not None and isinstance(state, nnx.Variable):  # a leaf here (it forwards attributes to its value)
        return state
    if _mapping(like) and hasattr(state, "_fields") and set(like) == set(state._fields):
        kids = _children(like)
        return _rebuild(like, {f: conform(getattr(state, f), kids[f]) for f in state._fields})  # and back
    if hasattr(like, "_fields"):
        if _mapping(state) and not hasattr(state, "_fields") and set(state) == set(like._fields):
            kids = _children(state)
            return type(like)(*(conform(kids[f], getattr(like, f)) for f in like._fields))
        if hasattr(state, "_fields") and len(state) == len(like):
            new = [conform(s, l) for s, l in zip(state, like)]
            return state if all(n is s for n, s in zip(new, state)) else type(state)(*new)
        return state
    if isinstance(like, (list, tuple)) and isinstance(state, (list, tuple)) and len(state) == len(like):
        new = [conform(s, l) for s, l in zip(state, like)]
        return state if all(n is s for n, s in zip(new, state)) else type(state)(new)
    if _mapping(like) and _mapping(state) and set(state) == set(like):
        kids, like_kids = _children(state), _children(like)
        new = {k: conform(kids[k], like_kids[k]) for k in kids}
        return state if all(new[k] is kids[k] for k in kids) else _rebuild(state, new)
    return state


def _children(mapping):
    """A mapping node's children as its pytree holds them (an ``nnx.State`` keeps nested levels as dicts)."""
    nnx = _nnx()
    if nnx is not None and isinstance(mapping, nnx.State):
        return object.__getattribute__(mapping, "_mapping")
    return mapping


def _rebuild(mapping, children: dict):
    """A mapping of ``mapping``'s type holding ``children`` as they are."""
    nnx = _nnx()
    if nnx is not None and isinstance(mapping, nnx.State):
        return type(mapping)(children, _copy=False)
    return type(mapping)(children)


def transformation(owner: str, init_fn: Callable, update_fn: Callable,
                   extra_args: bool = False) -> optax.GradientTransformation:
    """A transform from ``init_fn(params)`` and ``update_fn(updates, state, params, **extra)``
    that keeps the module's contract: checked trees, non-float leaves passed through.

    ``update_fn`` and ``init_fn`` only see the float leaves (the others are ``None``).
    ``extra_args=True`` makes an ``optax.GradientTransformationExtraArgs`` (``update_fn``
    takes keyword arguments such as ``value``).
    """
    shapes = StateShapes(lambda params: init_fn(floats_only(params)))

    def init(params):
        floats = floats_only(params)
        state = init_fn(floats)
        shapes.record(floats, state)
        OWNERS.setdefault(type(state), owner)
        return state

    def update(updates, state, params=None, **extra: Any):
        check_no_integer_updates(owner, updates)
        given, implied = state, shapes.implied(floats_only(updates))
        if implied is not None and jax.tree.structure(state) != jax.tree.structure(implied):
            state = conform(state, implied)
        check_update_args(owner, shapes, updates, state, params)
        floats = floats_only(updates)
        kept = None if params is None else floats_only(params)
        new, state = update_fn(floats, state, kept, **extra) if extra_args else update_fn(floats, state, kept)
        if jax.tree.structure(state) != jax.tree.structure(given):
            state = conform(state, given)  # in the containers it came in
        return with_passed_through(updates, new), state

    if extra_args:
        return optax.GradientTransformationExtraArgs(init, update)
    return optax.GradientTransformation(init, update)


def _nnx():
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover  (flax is a dependency)
        return None
    return nnx


def _is_nnx(x) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(x, (nnx.Variable, nnx.State))


def nnx_values(tree):
    """``tree`` with every Flax NNX container replaced by what it holds: a variable by its value
    (``nnx.Optimizer`` keeps each array of its ``opt_state`` in an ``nnx.OptArray``), a ``State``
    node by a dict. The one place that sees through NNX's containers for the walkers of a state
    (checkpoints)."""
    def plain(x):
        if isinstance(x, _nnx().State):
            return nnx_values(_nnx().to_pure_dict(x))
        return x.get_value() if _is_nnx(x) else x

    return jax.tree.map(plain, tree, is_leaf=_is_nnx)


def like_nnx(values, template):
    """``values`` (arrays in the tree of :func:`nnx_values` of ``template``) wrapped back into
    ``template``'s NNX containers, where it has them (``template`` is not changed)."""
    def wrap(t, x):
        if isinstance(t, _nnx().State):
            state = jax.tree.map(lambda a: a, t)  # a copy, its variables new
            _nnx().replace_by_pure_dict(state, x)
            return state
        return t.replace(x) if _is_nnx(t) else x

    return jax.tree.map(wrap, template, values, is_leaf=_is_nnx)
