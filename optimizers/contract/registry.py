"""What each rule declares about itself, in its own file, for the rest of the package and the tests.

A rule module says two things next to its code, and everything that used to be a hand-kept
list is derived from them:

* :func:`declare_state` on a state ``NamedTuple``: which of its fields hold non-negative
  per-parameter buffers (the 8-bit wrapper keeps them in the unsigned code) and whether its
  update is elementwise (each output element reads only the same element of each
  per-parameter input, and scalars: the 8-bit wrapper may then run it block by block).
* :func:`declare_optimizer` on an alias: its paper, a one-line update for the tables, and the
  keyword arguments with which it passes the shared test suites (``tests/``: conformance,
  optax's contract, dtypes, checkpoints, sharding, ... enrol every declared optimizer).

Wrappers read these tables (:func:`nonnegative_fields`, :func:`is_elementwise_state`); they never
import a rule module. The tables are filled when ``import optimizers`` imports the rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

_NONNEGATIVE: dict[type, frozenset] = {}
_ELEMENTWISE: dict[type, bool] = {}
_OPTIMIZERS: dict[str, "Declaration"] = {}


@dataclasses.dataclass(frozen=True)
class Declaration:
    """An optimizer alias as its rule file declares it."""

    name: str  # the public name, e.g. "adagrad"
    build: Callable  # the alias itself
    paper: str  # authors, year: "Duchi, Hazan & Singer 2011"
    update: str  # the update in one line, for the README's table
    test_kwargs: dict  # keywords with which it reaches the minimum of the shared test problems
    kind: str  # the folder of its rule: "adaptive", "momentum", "layerwise", "factored", ...


def register_nonnegative(state_type: type, *fields: str) -> None:
    """Declares the fields of ``state_type`` (a ``NamedTuple`` state) that hold non-negative buffers.

    :func:`with_quantized_state` keeps them in the unsigned code (twice the resolution of the
    signed one); every undeclared buffer gets the signed code, which holds either sign. The
    sign is the update rule's, not the values': second moments, accumulated squares, maxima
    of them, SM3's covers, Rprop's step sizes. Declarations add up.

    Raises:
        ValueError: ``state_type`` is not a ``NamedTuple`` type, or ``fields`` names none of its fields.
    """
    known = getattr(state_type, "_fields", None)
    if not isinstance(state_type, type) or known is None:
        raise ValueError(f"register_nonnegative: state_type must be a NamedTuple type, got {state_type!r}")
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ValueError(f"register_nonnegative: fields {unknown} are not fields of {state_type.__name__} {known}")
    _NONNEGATIVE[state_type] = _NONNEGATIVE.get(state_type, frozenset()) | frozenset(fields)


def declare_state(*, nonnegative: tuple[str, ...] = (), elementwise: bool) -> Callable[[type], type]:
    """Class decorator for a rule's state: its non-negative fields and whether its update is elementwise."""

    def decorate(state_type: type) -> type:
        if nonnegative:
            register_nonnegative(state_type, *nonnegative)
        _ELEMENTWISE[state_type] = bool(elementwise)
        return state_type

    return decorate


def declare_optimizer(*, paper: str, update: str, test_kwargs: dict[str, Any]) -> Callable:
    """Function decorator for an alias: enrols it in the tables and the shared test suites."""

    def decorate(build: Callable) -> Callable:
        name = build.__name__
        if name in _OPTIMIZERS:
            raise ValueError(f"declare_optimizer: {name!r} is declared twice")
        kind = build.__module__.split(".")[-2]
        _OPTIMIZERS[name] = Declaration(name, build, paper, update, dict(test_kwargs), kind)
        return build

    return decorate


def nonnegative_fields() -> dict[type, frozenset]:
    """State type -> its non-negative fields (a live view: later declarations appear)."""
    return _NONNEGATIVE


def is_elementwise_state(state_type: type) -> bool | None:
    """Whether a declared state's update is elementwise; ``None`` for a type no rule declared."""
    return _ELEMENTWISE.get(state_type)


def reduces_across_elements(state) -> bool:
    """Whether a node of ``state`` is of a state type declared not elementwise (at any depth)."""
    found = []

    def visit(node):
        if _ELEMENTWISE.get(type(node)) is False:
            found.append(type(node))
        elif isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(state)
    return bool(found)


def declared_optimizers() -> dict[str, Declaration]:
    """Every declared alias by name, sorted."""
    return dict(sorted(_OPTIMIZERS.items()))
