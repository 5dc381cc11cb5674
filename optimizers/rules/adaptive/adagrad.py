"""AdaGrad: per-coordinate steps scaled by the root of the summed squared gradients."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import abs2, check_state_dtype, full_in, store, store_like, widen
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.contract.backend import accelerated
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(nonnegative=('sum_of_squares',), elementwise=True)
class ScaleByRssState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"eps": ...}
    sum_of_squares: optax.Updates  # v_t, same tree and dtype as params


def scale_by_rss(initial_accumulator_value: float = 0.0, eps: ScalarOrSchedule = 1e-10, *, nu_dtype=None
                 ) -> optax.GradientTransformation:
    r"""Divides by the root of the sum of squared gradients (root sum of squares).

    .. math::
        v_t = v_{t-1} + g_t^2, \qquad u_t = \frac{g_t}{\sqrt{v_t} + \epsilon}

    As in the update table of “Optimization algorithms in deep learning” and ``torch.optim.Adagrad`` (``eps`` outside
    the root,
    :math:`v_0 = 0`, :math:`\epsilon = 10^{-10}`).

    .. warning::
        ``optax.scale_by_rss`` puts :math:`\epsilon` inside the root and starts from
        :math:`v_0 = 0.1`; with equal hyperparameters the two differ by ~1e-9.

    Args:
        initial_accumulator_value: :math:`v_0 \ge 0`.
        eps: :math:`\epsilon > 0`.
        nu_dtype: the dtype of :math:`v_t` (saturating), or ``None`` (the params' real dtype);
            the update is computed in at least float32.

    References:
        Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
        Stochastic Optimization", JMLR 12, 2011.
    """
    check_range("scale_by_rss", "initial_accumulator_value", initial_accumulator_value, 0.0)
    check_range("scale_by_rss", "eps", eps, 0.0, low_open=True)
    check_state_dtype("scale_by_rss", "nu_dtype", nu_dtype)

    def init_fn(params):
        v0 = full_in(params, initial_accumulator_value, nu_dtype, real=True)
        return ScaleByRssState(jnp.zeros([], jnp.int32), init_hyperparams(eps=eps), v0)

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(dict(eps=eps), state.hyperparams, state.count)
        v = jax.tree.map(lambda g, s: widen(s) + abs2(widen(g)), updates, state.sum_of_squares)
        out = jax.tree.map(lambda g, s: store(widen(g) / (hp["eps"] + jnp.sqrt(s)), g.dtype), updates, v)
        return out, ScaleByRssState(optax.safe_increment(state.count), hp, store_like(v, state.sum_of_squares))

    return transformation("scale_by_rss", init_fn, update_fn)


@declare_optimizer(paper="Duchi, Hazan & Singer 2011", update="`v+=g²; θ-=γ g/(√v+ε)`",
                   test_kwargs=dict(learning_rate=0.3))
def adagrad(learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.0,
            eps: ScalarOrSchedule = 1e-10, *, nu_dtype=None, fused: bool = False, flat_state: bool = False
            ) -> optax.GradientTransformation:
    r"""AdaGrad: :math:`\theta_t = \theta_{t-1} - \gamma_t g_t / (\sqrt{v_t} + \epsilon)`.

    See :func:`scale_by_rss`. PyTorch's ``lr_decay`` is the schedule
    ``lambda t: lr / (1 + t * lr_decay)``. ``fused=True``: the same update as one pass over
    memory on the CPU (see :func:`adam`), as ``torch.optim.Adagrad(fused=True)``;
    ``flat_state`` as in :func:`adam`. ``nu_dtype``: see :func:`scale_by_rss` (``fused=True`` runs
    the chain for a dtype other than float32).
    """
    chain = optax.chain(scale_by_rss(initial_accumulator_value, eps, nu_dtype=nu_dtype),
                        scale_by_learning_rate(learning_rate))
    return accelerated("adagrad", chain, fused=fused, flat_state=flat_state, learning_rate=learning_rate, eps=eps)
