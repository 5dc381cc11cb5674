"""Weight averaging: stochastic weight averaging (SWA) and exponential moving averages (EMA)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import check_state_dtype, moment_dtype, store, widen, zeros_in
from optimizers.contract.hyperparams import check_range, current_hyperparams, float_dtype, init_hyperparams
from schedules import ScalarOrSchedule


def _copy(params):
    """Fresh buffers, so that a train step that donates its params leaves the average intact."""
    return jax.tree.map(lambda p: jnp.array(p, copy=True), params)


def _new_params(updates, params):
    if params is None:
        raise ValueError("weight averaging: update needs params, got params=None")
    return optax.apply_updates(params, updates)


class SwaState(NamedTuple):
    count: jax.Array  # int32: updates seen
    n_averaged: jax.Array  # int32: weights in the average
    average: optax.Params  # w_swa, same tree and dtype as params


def swa(start_step: int = 0, every: int = 1) -> optax.GradientTransformation:
    r"""Stochastic weight averaging of the weights after each update; passes updates through.

    At every update :math:`k \ge s` with :math:`(k - s) \bmod c = 0` (:math:`k` counts from 0),
    with :math:`w` the weights after the update and :math:`n` the weights averaged so far:

    .. math::
        w_{swa} \leftarrow \frac{n\, w_{swa} + w}{n + 1}

    (computed as :math:`w_{swa} + (w - w_{swa})/(n+1)`, as
    ``torch.optim.swa_utils.AveragedModel``). Put it **last** in a chain, so it sees the
    final updates: ``optax.chain(optimizers.sgd(schedules.swa_lr(...)), optimizers.swa(s, c))``.
    Read the average with :func:`averaged_params`; recompute batch-norm statistics for it
    with :func:`recompute_batch_stats`.

    Args:
        start_step: :math:`s \ge 0`, the first update averaged.
        every: :math:`c \ge 1`, the period (the cycle length of a cyclical schedule).

    References:
        Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
        Generalization", UAI 2018, Algorithm 1.
    """
    check_range("swa", "start_step", start_step, 0)
    check_range("swa", "every", every, 1)

    def init_fn(params):
        zero = jnp.zeros([], jnp.int32)
        return SwaState(zero, zero, _copy(params))

    def update_fn(updates, state, params=None):
        w = _new_params(updates, params)
        take = (state.count >= start_step) & ((state.count - start_step) % every == 0)
        n, n1 = state.n_averaged, optax.safe_increment(state.n_averaged)  # n + 1, saturating
        average = jax.tree.map(
            lambda a, x: jnp.where(take, a + (x - a) / n1.astype(float_dtype()), a).astype(a.dtype),
            state.average, w)
        return updates, SwaState(optax.safe_increment(state.count), jnp.where(take, n1, n), average)

    return transformation("swa", init_fn, update_fn)


class WeightEmaState(NamedTuple):
    count: jax.Array  # int32: updates seen
    hyperparams: dict  # {"decay": beta of the latest update}
    decay_product: jax.Array  # prod of beta so far (for the bias correction)
    average: optax.Params  # w_ema, same tree and dtype as params


def weight_ema(
    decay: ScalarOrSchedule = 0.999,
    bias_correction: bool = False,
    accumulator_dtype=None,
) -> optax.GradientTransformation:
    r"""Exponential moving (Polyak) average of the weights after each update; passes updates through.

    .. math::
        w_{ema} \leftarrow \beta_t\, w_{ema} + (1 - \beta_t)\, w

    Without bias correction the first update copies :math:`w` (as
    ``AveragedModel(avg_fn=get_ema_multi_avg_fn(beta))`` does); with it the average starts at
    0 and :func:`averaged_params` returns :math:`w_{ema} / (1 - \prod_t \beta_t)` (Adam's
    correction). A warm-up of :math:`\beta` is a schedule, e.g.
    ``decay=lambda t: jnp.minimum(0.999, (1 + t) / (10 + t))``. Put it last in a chain.

    Args:
        decay: :math:`\beta \in [0, 1]`, or a schedule of it.
        bias_correction: start from 0 and divide by :math:`1 - \prod \beta_t` when read (``False``
            by default).
        accumulator_dtype: the dtype of :math:`w_{ema}` (saturating), or ``None`` (the params');
            the average is computed in at least float32.

    .. note::
        :func:`~optimizers.ema` (optax's ``ema``) is a moving average of the *updates*, a momentum
        transform; this is of the *weights*, and passes the updates through.

    References:
        Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
        Control Optim. 30(4), 1992.
    """
    check_state_dtype("weight_ema", "accumulator_dtype", accumulator_dtype)
    check_range("weight_ema", "decay", decay, 0.0, 1.0)

    def init_fn(params):
        if bias_correction:
            average = zeros_in(params, accumulator_dtype)
        elif accumulator_dtype is None:
            average = _copy(params)
        else:
            average = jax.tree.map(lambda p: store(p, moment_dtype(p.dtype, accumulator_dtype)), params)
        return WeightEmaState(jnp.zeros([], jnp.int32), init_hyperparams(decay=decay), jnp.ones([], float_dtype()),
                        average)

    def update_fn(updates, state, params=None):
        w = _new_params(updates, params)
        hp = current_hyperparams(dict(decay=decay), state.hyperparams, state.count)
        beta = hp["decay"]
        if not bias_correction:  # the first update copies the weights
            beta = jnp.where(state.count == 0, 0.0, beta)
        keep = (lambda x, a: x.astype(a.dtype)) if accumulator_dtype is None else (lambda x, a: store(x, a.dtype))
        average = jax.tree.map(lambda a, x: keep(beta * widen(a) + (1 - beta) * x, a), state.average, w)
        return updates, WeightEmaState(optax.safe_increment(state.count), hp, state.decay_product * beta, average)

    return transformation("weight_ema", init_fn, update_fn)


def averaged_params(state) -> optax.Params:
    """The averaged weights held by the first :func:`swa` or :func:`weight_ema` found in ``state``.

    Raises:
        ValueError: ``state`` holds no averaging state.
    """
    for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, (SwaState, WeightEmaState))):
        if isinstance(node, SwaState):
            return node.average
        if isinstance(node, WeightEmaState):
            # 1 without bias correction: its first update has beta = 0, so the product is 0.
            correction = 1 - node.decay_product
            correction = jnp.where(correction > 0, correction, 1.0)
            return jax.tree.map(lambda a: (a / correction).astype(a.dtype), node.average)
    raise ValueError("averaged_params: no swa or weight_ema state in this optimizer state")


def recompute_batch_stats(apply_fn: Callable[..., Any], params, batch_stats, batches: Iterable,
                          **apply_kwargs):
    r"""Batch-norm statistics of ``params`` (e.g. averaged weights) from one pass over ``batches``.

    Flax's ``BatchNorm`` keeps :math:`r \leftarrow m r + (1 - m)\mu_B`. Run in training mode
    from :math:`r = 0` it returns :math:`(1-m)\mu_B`, from :math:`r = 1` it returns
    :math:`m + (1-m)\mu_B`; their difference gives each layer's momentum :math:`m`, and the
    batch statistics :math:`\mu_B` are then averaged over the batches, weighted by batch
    size (what ``torch.optim.swa_utils.update_bn`` does with a cumulative average).

    Args:
        apply_fn: ``model.apply``; called as ``apply_fn({"params": params, "batch_stats": s},
            x, mutable=["batch_stats"], **apply_kwargs)`` (pass e.g. ``train=True``).
        params: the weights whose statistics are wanted.
        batch_stats: the model's current ``batch_stats`` (its structure is reused).
        batches: an iterable of model inputs.

    Returns:
        The new ``batch_stats``.
    """
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    ones = jax.tree.map(jnp.ones_like, batch_stats)

    @jax.jit
    def running(stats, x):
        _, new = apply_fn({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"], **apply_kwargs)
        return new["batch_stats"]

    total, count, keep = None, 0, None
    for x in batches:
        from_zero = running(zeros, x)
        if keep is None:  # 1 - m per leaf, from one batch
            keep = jax.tree.map(lambda a, b: 1 - (b - a), from_zero, running(ones, x))
        n = jax.tree.leaves(x)[0].shape[0]
        stats = jax.tree.map(lambda s, k: s / k * n, from_zero, keep)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        count += n
    if total is None:
        raise ValueError("recompute_batch_stats: batches is empty")
    return jax.tree.map(lambda s: s / count, total)
