"""Skipping steps whose gradients are not finite, and giving up visibly when they keep coming."""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.hyperparams import check_count, either


class ApplyIfFiniteState(NamedTuple):
    consecutive_skips: jax.Array  # int32: steps skipped in a row (0 after a finite step)
    total_skips: jax.Array  # int32: steps skipped since init
    last_finite: jax.Array  # bool: whether the latest step's gradients were all finite
    nan_updates: jax.Array  # int32: updates returned as NaN after giving up (0 while all is well)
    inner_state: optax.OptState  # the wrapped optimizer's state, as of its last finite step


def _all_finite(tree) -> jax.Array:
    r"""Whether every entry of every leaf is finite (True for an empty tree).

    One float sum per leaf: :math:`\sum_i 0 \cdot x_i` is 0 when every :math:`x_i` is finite
    and NaN otherwise (:math:`0 \cdot \pm\infty` and :math:`0 \cdot` NaN are NaN, and a NaN
    term makes the sum NaN). On a leaf of 2M entries XLA:CPU takes 0.45 ms for it and 1.1 ms
    for ``jnp.all(jnp.isfinite(x))``, which it splits into an elementwise pass writing a
    boolean array and a reduction of that array.
    """
    return functools.reduce(jnp.logical_and, [jnp.isfinite(jnp.sum(x * 0)) for x in jax.tree.leaves(tree)],
                            jnp.array(True))


def _check_count(name, value):
    check_count("apply_if_finite", name, value)


def apply_if_finite(
    inner: optax.GradientTransformation,
    max_consecutive_errors: Optional[int] = None,
    *,
    max_consecutive_skips: Optional[int] = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Skips every step whose gradients hold a NaN or an Inf; gives up after too many in a row.

    For the gradients :math:`g_t` of step :math:`t`, with :math:`k` the steps skipped in a row
    before it and :math:`N` = ``max_consecutive_skips``:

    * all of :math:`g_t` finite: the inner optimizer's update and state, and :math:`k \leftarrow 0`;
    * not finite and :math:`k < N`: **skip**: zero updates and the inner state unchanged, its
      step counts included (schedules do not advance), so the run is exactly the run without
      that batch; :math:`k \leftarrow k + 1`. The zeros are :math:`-0`, so that
      ``optax.apply_updates`` leaves every param bit-identical (:math:`x + (-0) = x` for every
      :math:`x`, where :math:`+0` would turn a param :math:`-0` into :math:`+0`);
    * not finite and :math:`k = N`: **give up**: NaN updates, so the failure shows in the params
      and the loss instead of training silently stopping; the inner state is still unchanged.
      :func:`check_finite` then raises on the host.

    The state counts the skips in a row and in total (int32, saturating), records whether the
    latest gradients were finite and how many NaN updates were returned. ``extra_args`` (the
    ``value=`` of :func:`~optimizers.reduce_on_plateau`) are passed to the inner optimizer.

    Cost: one sum per leaf over the gradients (see ``_all_finite``); the choice between the
    inner update and zeros is a ``jnp.where`` on that scalar, which XLA fuses into the inner
    update's own kernels (the inner update is computed on a skipped step too, and dropped).
    For SGD with momentum on 2.1M float32 parameters, XLA:CPU (2 shared cores): 1.05 ms a step
    bare, 1.85 ms wrapped (the extra pass over the gradients; the selects cost nothing
    measurable), 2.05 ms or more with a ``lax.cond`` instead of the selects.

    .. warning::
        ``optax.apply_if_finite(inner, max_consecutive_errors)`` gives up the other way: after
        the limit it applies the inner update of the non-finite gradients (which usually makes
        params and state NaN) and keeps going with no error; its count of errors in a row is
        reset only by a finite step. Here giving up returns NaN updates, leaves the inner state
        as it was, and is reported by :func:`check_finite`.

    Args:
        inner: the optimizer to protect.
        max_consecutive_skips: :math:`N \ge 1`, the non-finite steps in a row that are skipped (10).
        max_consecutive_errors: optax's name for it (give one), with the meaning above: after
            :math:`N` skips this gives up with NaN updates, where optax applies the update.
    """
    if max_consecutive_errors is not None:
        _check_count("max_consecutive_errors", max_consecutive_errors)
    max_consecutive_skips = either("apply_if_finite", "max_consecutive_skips", max_consecutive_skips,
                                   "max_consecutive_errors", max_consecutive_errors, default=10)
    _check_count("max_consecutive_skips", max_consecutive_skips)

    def init_fn(params):
        zero = jnp.zeros([], jnp.int32)
        return ApplyIfFiniteState(zero, zero, jnp.array(True), zero, inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        finite = _all_finite(updates)
        give_up = ~finite & (state.consecutive_skips >= max_consecutive_skips)
        skip = ~finite & ~give_up
        inner_update = optax.with_extra_args_support(inner).update
        new, inner_state = inner_update(updates, state.inner_state, params, **extra_args)
        fill = jnp.where(give_up, jnp.nan, -0.0)
        out = jax.tree.map(lambda u: jnp.where(finite, u, fill).astype(u.dtype), new)
        inner_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), inner_state, state.inner_state)
        consecutive = jnp.where(skip, optax.safe_increment(state.consecutive_skips),
                                jnp.where(finite, 0, state.consecutive_skips))
        total = jnp.where(skip, optax.safe_increment(state.total_skips), state.total_skips)
        nan_updates = jnp.where(give_up, optax.safe_increment(state.nan_updates), state.nan_updates)
        return out, ApplyIfFiniteState(consecutive, total, finite, nan_updates, inner_state)

    return transformation("apply_if_finite", init_fn, update_fn, extra_args=True)


def check_finite(state) -> None:
    """Raises ``RuntimeError`` if an :func:`apply_if_finite` in ``state`` has given up.

    Call it on the host, outside ``jit`` (it reads the counters, a device-to-host transfer):
    every step, or every few steps since the NaN updates stay counted. Finds the wrapper's
    state anywhere in ``state`` (a chain, another wrapper).

    Raises:
        RuntimeError: NaN updates were returned; the message gives the skips in a row and in total.
        ValueError: ``state`` holds no :func:`apply_if_finite` state.
    """
    found = [node for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ApplyIfFiniteState))
             if isinstance(node, ApplyIfFiniteState)]
    if not found:
        raise ValueError("check_finite: no apply_if_finite state in this optimizer state")
    for node in found:
        if int(node.nan_updates) > 0:
            raise RuntimeError(
                f"apply_if_finite gave up: {int(node.nan_updates)} update(s) were returned as NaN because the "
                f"gradients were still not finite after max_consecutive_skips skipped steps in a row, so the "
                f"params are NaN; steps skipped: {int(node.consecutive_skips)} in a row now, "
                f"{int(node.total_skips)} in total")
