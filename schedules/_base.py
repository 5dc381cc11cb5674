"""The schedule type, the constant schedule, and resolving a number-or-schedule."""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp

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
