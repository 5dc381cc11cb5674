"""The last links of most chains: decoupled weight decay and the learning rate."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.hyperparams import check_learning_rate, check_range, current_hyperparams, init_hyperparams
from optimizers.contract.masks import MaskOrFn as MaskOrFn  # noqa: F401  (the rules' name for it)
from optimizers.contract.masks import _mask_tree, leaf_masks  # noqa: F401  (leaf_masks: the rules' name)
from optimizers.contract.registry import declare_optimizer, declare_state
from schedules import ScalarOrSchedule



@declare_state(elementwise=True)
class ScaleByLearningRateState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": value of the latest update}


@declare_optimizer(paper="", update="",
                   test_kwargs=dict(learning_rate=2e-3))
def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
                           ) -> optax.GradientTransformation:
    r"""Scales the direction by the learning rate: :math:`u_t = -\gamma_t d_t`.

    Args:
        learning_rate: :math:`\gamma_t \ge 0`, a number or a schedule.
        flip_sign: negate, so that ``optax.apply_updates`` descends (the default).
    """
    check_learning_rate("scale_by_learning_rate", learning_rate)
    sign = -1.0 if flip_sign else 1.0

    def init_fn(params):
        del params
        return ScaleByLearningRateState(jnp.zeros([], jnp.int32), init_hyperparams(learning_rate=learning_rate))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(learning_rate=learning_rate), state.hyperparams, state.count)
        step = sign * hp["learning_rate"]
        updates = jax.tree.map(lambda u: (step * u).astype(u.dtype), updates)
        return updates, ScaleByLearningRateState(optax.safe_increment(state.count), hp)

    return transformation("scale_by_learning_rate", init_fn, update_fn)


@declare_state(elementwise=True)
class AddDecayedWeightsState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"weight_decay": value of the latest update}


def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0, mask: MaskOrFn = None
                        ) -> optax.GradientTransformation:
    r"""Adds the decay term: :math:`d_t = u_t + \lambda_t \theta_{t-1}`.

    Placed before the learning rate, the decay is multiplied by it, as in AdamW (Loshchilov
    & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, Algorithm 2) and in the
    table of “Optimization algorithms in deep learning”; placed before a momentum it is PyTorch's coupled L2 penalty.

    Args:
        weight_decay: :math:`\lambda_t \ge 0`, a number or a schedule.
        mask: a pytree of booleans with the params' structure (or a prefix of it), or a
            function ``params -> mask``; ``False`` leaves are not decayed (biases, norms).
    """
    check_range("add_decayed_weights", "weight_decay", weight_decay, 0.0)

    def init_fn(params):
        del params
        return AddDecayedWeightsState(jnp.zeros([], jnp.int32), init_hyperparams(weight_decay=weight_decay))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights: update needs params, got params=None")
        hp = current_hyperparams(dict(weight_decay=weight_decay), state.hyperparams, state.count)
        lam = hp["weight_decay"]

        def decay(u, p, on):
            return (lam * p + u).astype(u.dtype) if on else u  # decay term first: fewer kernels (see scale_by_adam)

        updates = jax.tree.map(
            lambda on, u, p: jax.tree.map(lambda uu, pp: decay(uu, pp, on), u, p),
            _mask_tree(mask, params), updates, params,
        )
        return updates, AddDecayedWeightsState(optax.safe_increment(state.count), hp)

    return transformation("add_decayed_weights", init_fn, update_fn)


def negated(owner: str) -> optax.GradientTransformation:
    """:math:`u \mapsto -u`: descent for ``optax.apply_updates`` after a transform whose step already
    holds the learning rate; float0 and ``None`` leaves pass (unlike ``optax.scale(-1.0)``)."""
    return transformation(owner, lambda params: optax.EmptyState(),
                          lambda updates, state, params=None: (jax.tree.map(jnp.negative, updates), state))
