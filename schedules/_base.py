"""The schedule type, the constant schedule, resolving a number-or-schedule, range checks."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Callable, Union

import jax
import jax.numpy as jnp

_INF = float("inf")
_RANGES: dict[tuple[str, str], tuple] = {}  # (owner, name) -> the range check_range last checked it against

Schedule = Callable[[jax.Array], jax.Array]
"""A pure function ``step -> value``; ``step`` counts updates from 0 and may be traced."""

ScalarOrSchedule = Union[float, jax.Array, Schedule]
"""A hyperparameter: a number, a (possibly traced) scalar array, or a :data:`Schedule`."""


def constant(value: float) -> Schedule:
    r"""The schedule :math:`v_t = v` for every step :math:`t`."""

    def schedule(step):
        return jnp.full(jnp.shape(step), value, jnp.result_type(float))

    return schedule


def resolve(value: ScalarOrSchedule, step) -> jax.Array:
    """The value of a hyperparameter at ``step``: ``value(step)`` if it is a schedule, else ``value``."""
    return value(step) if callable(value) else value


def is_number(value) -> bool:
    """A real Python or NumPy number (not a bool, not an array, not a schedule)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_type(owner: str, name: str, value) -> None:
    if value is None or callable(value) or is_number(value):
        return
    if not isinstance(value, (str, bool, list, tuple, dict, set, complex)) and jnp.ndim(value) == 0 \
            and not jnp.iscomplexobj(value):
        return  # a scalar array (what optax.inject_hyperparams passes), traced or not
    raise ValueError(f"{owner}: {name} must be a real number or a schedule step -> value, got {value!r}")


def check_range(owner: str, name: str, value, low: float = -_INF, high: float = _INF,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raises ``ValueError`` naming ``owner``'s ``name`` when a number lies outside the range.

    Schedules and arrays are not checked: their values are known only at update time. Anything
    that is neither a number, a scalar array, a schedule nor ``None`` (a string, a bool, a list, an
    array of several values) is refused here, at build time, naming the argument.
    """
    _check_type(owner, name, value)
    _RANGES[(owner, name)] = (low, high, low_open, high_open)
    if not is_number(value):
        return
    above = low < value if low_open else low <= value
    below = value < high if high_open else value <= high
    if above and below:
        return
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"{owner}: {name} must be in {interval}, got {value!r}")


def float_steps(step) -> jax.Array:
    """``step`` as an array of the default float dtype (float32, float64 under x64)."""
    return jnp.asarray(step, jax.dtypes.canonicalize_dtype(jnp.float64))


def interpolate(a, b, done, total, how: str = "cos") -> jax.Array:
    r"""From :math:`a` at ``done = 0`` to :math:`b` at ``done = total``, by cosine or linearly.

    .. math::
        \text{cos: } a\,\tfrac12(1 + \cos \pi f) + b\,\tfrac12(1 - \cos \pi f), \qquad
        \text{linear: } a (1 - f) + b f, \qquad f = \text{done}/\text{total}

    Evaluated as :math:`a \sin^2(\pi r/2) + b \sin^2(\pi f/2)` with
    :math:`r = (\text{total} - \text{done})/\text{total}`: a sum of two non-negative weights, so
    a value near a small end point keeps float32's relative precision (the textbook form
    :math:`b + (a - b)(1 + \cos\pi f)/2` loses up to 1% of it there).
    """
    done = jnp.clip(float_steps(done), 0, total)
    f, r = done / total, (total - done) / total
    if how == "linear":
        return a * r + b * f
    return a * jnp.sin(jnp.pi / 2 * r) ** 2 + b * jnp.sin(jnp.pi / 2 * f) ** 2


def power(base: float, exponent) -> jax.Array:
    r""":math:`b^x` for a positive Python number :math:`b`, with :math:`\log b` taken in float64.

    ``jnp.power`` on a float32 :math:`b` carries the rounding of :math:`b` itself
    (~3e-8 relative) into the result :math:`x` times: 4e-5 at :math:`x = 1000`.
    """
    return jnp.exp(float_steps(exponent) * math.log(base))


def checked_range(owner: str, name: str):
    """``(low, high, low_open, high_open)`` that ``owner`` checked its ``name`` against when it was built,
    or ``None`` (what ``set_hyperparams`` holds a new value to)."""
    return _RANGES.get((owner, name))


def _is_scalar(value) -> bool:
    """A real number or a real scalar array (what ``inject_hyperparams`` passes), not a bool or a string."""
    if is_number(value):
        return True
    if isinstance(value, (str, bool, list, tuple, dict, set, complex)) or callable(value):
        return False
    try:
        return jnp.ndim(value) == 0 and not jnp.iscomplexobj(value)
    except TypeError:
        return False


def _is_count(value) -> bool:
    """A whole number of steps: an integer, or a float that is one (``1e3``)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())


# Annotation (as written in a builder's signature) -> (accepts, what the message asks for).
_KINDS = {
    "float": (_is_scalar, "a real number"),
    "int": (_is_count, "a whole number of steps"),
    "int | float": (lambda v: _is_count(v) or _is_scalar(v), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "ScalarOrSchedule": (lambda v: callable(v) or _is_scalar(v), "a real number or a schedule step -> value"),
}


def typed_arguments(build: Callable) -> Callable:
    """Checks a schedule builder's arguments against their annotations when it is called.

    ``float``: a real number (or a scalar array); ``int``: a whole number of steps;
    ``ScalarOrSchedule``: a number or a schedule; ``str``, ``bool``; ``X | None`` and
    ``Optional[X]`` also take ``None``. Anything else raises ``ValueError`` naming the builder and
    the argument, before any schedule is made (``cosine("1e-3", 100)``, ``warmup(100, schedule)``).
    """
    signature = inspect.signature(build)

    @functools.wraps(build)
    def checked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            annotation = str(signature.parameters[name].annotation)
            optional = annotation.startswith("Optional[") or annotation.endswith(" | None")
            kind = annotation.removeprefix("Optional[").removesuffix("]") if annotation.startswith("Optional[") \
                else annotation.removesuffix(" | None")
            if kind not in _KINDS or (optional and value is None):
                continue
            accepts, wanted = _KINDS[kind]
            if not accepts(value):
                raise ValueError(f"{build.__name__}: {name} must be {wanted}, got {value!r}")
        return build(*args, **kwargs)

    return checked


constant = typed_arguments(constant)
