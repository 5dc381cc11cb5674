"""Schedule-Free learning (Defazio et al. 2024): the wrapper around any optimizer and the evaluation point
(its AdamW and SGD: ``schedule_free_aliases.py``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, is_low_precision, store, widen
from optimizers.contract.hyperparams import (check_learning_rate, check_range, current_hyperparams, float_dtype,
                                             given, init_hyperparams)
from optimizers.contract.registry import declare_state
from schedules import ScalarOrSchedule


@declare_state(elementwise=True)
class ScheduleFreeState(NamedTuple):
    """State of :func:`schedule_free`.

    ``hyperparams`` holds the values of the latest update, readable with
    :func:`optimizers.get_hyperparams`: ``learning_rate`` (:math:`\\gamma_t`, warm-up applied),
    ``b1``, ``weight_lr_power``, ``r``, and the averaging quantities ``lr_max``
    (:math:`\\max_{s \\le t} \\gamma_s`, -1 before the first update, as in the reference),
    ``weight_sum`` (:math:`\\sum_{s \\le t} w_s`) and ``c`` (:math:`c_{t+1} = w_t / \\sum_{s\\le t} w_s`).
    """

    count: jax.Array  # int32 scalar: updates applied so far (k in the reference)
    hyperparams: dict  # {"learning_rate", "b1", "weight_lr_power", "r", "lr_max", "weight_sum", "c"}
    base_optimizer_state: Any  # the base optimizer's state
    z: optax.Params  # z_t, the base optimizer's iterate, in ``state_dtype`` (the params' by default)


def _find_state(state):
    """The first :class:`ScheduleFreeState` inside ``state`` (chains, ``inject_hyperparams``, Flax), or ``None``."""
    if isinstance(state, ScheduleFreeState):
        return state
    if isinstance(state, (tuple, list)):
        children = state
    elif isinstance(state, dict):
        children = state.values()
    elif hasattr(state, "opt_state"):  # flax TrainState / nnx.Optimizer
        children = [getattr(state, "opt_state")]
    elif hasattr(state, "inner_state"):
        children = [state.inner_state]
    else:
        return None
    for child in children:
        found = _find_state(child)
        if found is not None:
            return found
    return None


def schedule_free_eval_params(state, params):
    r"""The evaluation sequence :math:`x_t` from the training params :math:`y_t` and the state.

    .. math::
        x_t = y_t + \left(1 - \tfrac{1}{\beta_1}\right)(z_t - y_t)
            = \frac{y_t - (1-\beta_1) z_t}{\beta_1}

    as the reference's ``optimizer.eval()`` computes it (``p.lerp_(z, 1 - 1/beta1)``), with the
    :math:`\beta_1` of the latest update. Use it for validation, test metrics and checkpoints that
    are meant to be evaluated; keep training from ``params`` (:math:`y_t`) and the state. BatchNorm
    statistics measured during training belong to :math:`y_t`: re-estimate them at :math:`x_t`
    with :func:`optimizers.recompute_batch_stats`.

    Args:
        state: the optimizer state holding a :class:`ScheduleFreeState` (at any depth: a chain,
            ``optax.inject_hyperparams``).
        params: the training params :math:`y_t` (non-float leaves pass through).

    Raises:
        ValueError: ``state`` holds no :class:`ScheduleFreeState`.
    """
    found = _find_state(state)
    if found is None:
        raise ValueError("schedule_free_eval_params: state must hold a ScheduleFreeState "
                         "(the state of schedule_free, schedule_free_adamw or schedule_free_sgd)")
    b1 = found.hyperparams["b1"]

    # z holds the params' float leaves in order (a Flax NNX optimizer wraps them in its own variables).
    leaves, treedef = jax.tree.flatten(params)
    z_leaves = iter(jax.tree.leaves(found.z))
    out = []
    for y in leaves:
        y = jnp.asarray(y)
        if not jnp.issubdtype(y.dtype, jnp.inexact):
            out.append(y)
            continue
        y32, z32 = widen(y), widen(next(z_leaves))
        out.append(store(y32 + (1 - 1 / b1) * (z32 - y32), y.dtype))
    return jax.tree.unflatten(treedef, out)


def schedule_free(base_optimizer: optax.GradientTransformation, learning_rate: ScalarOrSchedule,
                  b1: ScalarOrSchedule = 0.9, weight_lr_power: float = 2.0, state_dtype=None, *,
                  r: float = 0.0, form: str = "reference") -> optax.GradientTransformation:
    r"""Makes ``base_optimizer`` schedule-free (Defazio et al. 2024, Algorithm 1).

    The base optimizer's update :math:`\Delta_t` (its direction times :math:`-\gamma_t`, computed
    at the gradient taken at :math:`y_t`, with ``params`` = :math:`y_t`) moves :math:`z`; the
    evaluation sequence :math:`x` averages the :math:`z`'s; the params are :math:`y`:

    .. math::
        z_{t+1} = z_t + \Delta_t, \quad
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}, \quad
        y_{t+1} = (1-\beta_1) z_{t+1} + \beta_1 x_{t+1},

    .. math::
        \gamma^{max}_t = \max_{s \le t} \gamma_s, \quad
        w_t = (t+1)^r \, (\gamma^{max}_t)^{p}, \quad
        c_{t+1} = \frac{w_t}{\sum_{s=0}^{t} w_s} \ (0 \text{ while the sum is } 0)

    with :math:`p` = ``weight_lr_power``, :math:`t = 0, 1, \dots` the update's index and
    :math:`x_0 = y_0 = z_0` the initial params. As the reference implementation
    (``schedulefree.AdamWScheduleFree``) does, only :math:`y` and :math:`z` are kept: the
    returned update is the change of :math:`y`,

    .. math::
        y_{t+1} - y_t = c_{t+1}(z_t - y_t) + \bigl(1 - \beta_1(1 - c_{t+1})\bigr)\Delta_t
                      = c_{t+1}(z_{t+1} - y_t) + (1 - \beta_1)(1 - c_{t+1})\Delta_t,

    (the reference's form, computed as the second, from the new :math:`z`: the same up to rounding,
    and :math:`y` and :math:`z` are then both updated in place, without copies)

    so ``optax.apply_updates(params, updates)`` gives :math:`y_{t+1}`, and :math:`x_t` is
    :func:`schedule_free_eval_params` ``(state, params)``. The averaging quantities
    (:math:`\gamma_t`, :math:`\gamma^{max}_t`, :math:`\sum w`, :math:`c_{t+1}`) are in the state's
    ``hyperparams`` (:class:`ScheduleFreeState`, :func:`optimizers.get_hyperparams`).

    ``learning_rate`` is :math:`\gamma_t`, evaluated at :math:`t` = the update's index (0 at
    the first update, as the base optimizer's own schedule): give the base optimizer the same
    learning rate (a warm-up included), and no momentum of its own (``b1=0``).

    .. warning::
        ``optax.contrib.schedule_free`` evaluates ``learning_rate`` at :math:`t+1` for the
        weights while its base optimizer evaluates it at :math:`t` (so its aliases' warm-up
        moves :math:`z` by 0 at the first update: the step-0 value is skipped, optax PR 1744),
        has no ``r``, initialises :math:`\gamma^{max}` to 0, and forms :math:`x_t` by dividing
        by :math:`\beta_1` at every step. Here the reference's indexing and :math:`y` update are
        kept; the step-0 warm-up value :math:`\gamma_0 = \gamma/W` is used. ``form="optax"`` gives optax's.

    Args:
        base_optimizer: the transform whose update moves :math:`z` (learning rate included, no
            momentum).
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule, for the averaging weights.
        b1: :math:`\beta_1 \in (0, 1)`, the interpolation between :math:`x` and :math:`z`.
        weight_lr_power: :math:`p \ge 0`.
        state_dtype: the dtype of :math:`z`, or ``None`` (the params').
        r: :math:`r \ge 0`, the polynomial weighting of the average.
        form: ``"reference"`` (the authors' package) or ``"optax"`` (``optax.contrib.schedule_free``:
            ``learning_rate`` evaluated at :math:`t+1` for the weights, :math:`\gamma^{max}_{-1} = 0`,
            :math:`y` formed through :math:`x`; needs ``r=0``).

    Raises:
        ValueError: ``b1`` outside ``(0, 1)``, ``weight_lr_power`` or ``r`` negative, a negative
            ``learning_rate``.

    Complex params: every operation is linear in each real coordinate, so a complex leaf runs
    as its (real, imaginary) pair would (the base optimizer decides for itself).

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
        NeurIPS 2024, Algorithm 1; the reference implementation, PyPI ``schedulefree`` 1.4.1.
    """
    owner = "schedule_free"
    check_learning_rate(owner, learning_rate)
    check_range(owner, "b1", b1, 0.0, 1.0, low_open=True, high_open=True)
    check_range(owner, "weight_lr_power", weight_lr_power, 0.0)
    check_range(owner, "r", r, 0.0)
    check_form(owner, form, r)
    optax_form = form == "optax"
    check_state_dtype(owner, "state_dtype", state_dtype)
    values = given(learning_rate=learning_rate, b1=b1, weight_lr_power=weight_lr_power, r=r)

    def init_fn(params):
        hp = init_hyperparams(**values)
        hp.update(lr_max=jnp.asarray(0.0 if optax_form else -1.0, float_dtype()), weight_sum=jnp.asarray(0.0, float_dtype()),
                  c=jnp.asarray(0.0, float_dtype()))
        z = jax.tree.map(lambda p: jnp.array(p, dtype=state_dtype or p.dtype), params)
        return ScheduleFreeState(jnp.zeros([], jnp.int32), hp, base_optimizer.init(params), z)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{owner}: update needs params (the y sequence)")
        stored = state.hyperparams
        # optax's form evaluates the learning rate at t + 1 (its step count starts at 1).
        hp = current_hyperparams(values, stored, optax.safe_increment(state.count) if optax_form else state.count)
        lr, beta1 = hp["learning_rate"], hp["b1"]
        lr_max = jnp.maximum(stored["lr_max"], lr)
        k1 = state.count.astype(lr_max.dtype) + 1
        weight = k1 ** hp["r"] * lr_max ** hp["weight_lr_power"]
        weight_sum = stored["weight_sum"] + weight
        c = jnp.where(weight_sum > 0, weight / jnp.where(weight_sum > 0, weight_sum, 1), 0.0)
        delta, base_state = base_optimizer.update(updates, state.base_optimizer_state, params)

        z = jax.tree.map(lambda z, d: store(widen(z) + widen(d), z.dtype), state.z, delta)

        def y_change(y, z_old, z_new, d):
            y32, d32 = widen(y), widen(d)
            if optax_form:  # x from y and z, averaged, mixed again: optax's arithmetic
                z32 = widen(z_old)
                x = (1 - c) * ((y32 - (1 - beta1) * z32) / beta1) + c * (z32 + d32)
                return store(beta1 * x + (1 - beta1) * (z32 + d32) - y32, y.dtype)
            # c (z_t - y_t) + (1 - beta1 (1 - c)) d, written with z_{t+1} = z_t + d: reading the new z
            # lets both be updated in place without a copy of either. A z stored in low precision is
            # read before its rounding (the z_{t+1} in float32) instead.
            if is_low_precision(z_new.dtype):
                z_new = widen(z_old) + d32
            return store(c * (widen(z_new) - y32) + (1 - beta1) * (1 - c) * d32, y.dtype)

        out = jax.tree.map(y_change, params, state.z, z, delta)
        hp.update(lr_max=lr_max, weight_sum=weight_sum, c=c.astype(lr_max.dtype))
        return out, ScheduleFreeState(optax.safe_increment(state.count), hp, base_state, z)

    return transformation(owner, init_fn, update_fn)


def check_form(owner, form, r):
    if form not in ("reference", "optax"):
        raise ValueError(f"{owner}: form must be 'reference' or 'optax', got {form!r}")
    if form == "optax" and r != 0:
        raise ValueError(f"{owner}: r must be 0 with form='optax' (optax has no r), got {r!r}")
