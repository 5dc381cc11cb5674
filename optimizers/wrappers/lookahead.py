"""Lookahead: k fast steps forward, one interpolating step back."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.hyperparams import check_range, current_hyperparams, either, init_hyperparams
from schedules import ScalarOrSchedule


class LookaheadState(NamedTuple):
    count: jax.Array  # int32: updates seen
    hyperparams: dict  # {"slow_step_size": alpha of the latest update}
    inner_state: optax.OptState  # the fast optimizer's state
    slow: optax.Params  # the slow weights phi (use them for evaluation)


def lookahead(
    fast_optimizer: Optional[optax.GradientTransformation] = None,
    sync_period: int = 5,
    slow_step_size: ScalarOrSchedule = 0.5,
    reset_state: bool = False,
    *,
    optimizer: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformation:
    r"""Lookahead around any optimizer: the params are the fast weights, the state holds the slow ones.

    The inner ``optimizer`` moves the fast weights :math:`\theta`; every :math:`k`-th update
    the slow weights move toward them and the fast weights restart from there:

    .. math::
        \phi \leftarrow \phi + \alpha(\theta - \phi), \qquad \theta \leftarrow \phi

    The returned updates do both, so ``optax.apply_updates`` gives the new fast weights. The
    slow weights are ``state.slow`` (or :func:`slow_params`); right after a synchronisation
    they equal the params. Unlike ``optax.lookahead`` no ``LookaheadParams`` pair is needed:
    the params stay a plain tree, as Flax's ``TrainState`` expects.

    Args:
        optimizer: the fast optimizer.
        sync_period: :math:`k \ge 1`.
        slow_step_size: :math:`\alpha \in [0, 1]`, or a schedule of it.
        reset_state: re-initialise the fast optimizer's state at each synchronisation.
        fast_optimizer: optax's name for ``optimizer`` (give one).

    References:
        Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019,
        Algorithm 1.
    """
    optimizer = either("lookahead", "optimizer", optimizer, "fast_optimizer", fast_optimizer)
    check_range("lookahead", "sync_period", sync_period, 1)
    check_range("lookahead", "slow_step_size", slow_step_size, 0.0, 1.0)

    def init_fn(params):
        if optimizer is None:
            raise ValueError("lookahead: no optimizer to wrap: give optimizer (or optax's fast_optimizer)")
        return LookaheadState(jnp.zeros([], jnp.int32), init_hyperparams(slow_step_size=slow_step_size),
                              optimizer.init(params), jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("lookahead: update needs params, got params=None")
        hp = current_hyperparams(dict(slow_step_size=slow_step_size), state.hyperparams, state.count)
        fast_updates, inner_state = optimizer.update(updates, state.inner_state, params)
        fast = optax.apply_updates(params, fast_updates)
        sync = state.count % sync_period == sync_period - 1
        alpha = hp["slow_step_size"]
        slow = jax.tree.map(lambda s, f: jnp.where(sync, s + alpha * (f - s), s).astype(s.dtype), state.slow, fast)
        out = jax.tree.map(lambda u, s, p: jnp.where(sync, s - p, u).astype(u.dtype), fast_updates, slow, params)
        if reset_state:
            fresh = optimizer.init(params)
            inner_state = jax.tree.map(lambda cur, new: jnp.where(sync, new, cur), inner_state, fresh)
        return out, LookaheadState(optax.safe_increment(state.count), hp, inner_state, slow)

    return transformation("lookahead", init_fn, update_fn)


def slow_params(state) -> optax.Params:
    """The slow weights of the first :func:`lookahead` found in ``state`` (for evaluation)."""
    for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, LookaheadState)):
        if isinstance(node, LookaheadState):
            return node.slow
    raise ValueError("slow_params: no lookahead state in this optimizer state")
