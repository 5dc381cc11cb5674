"""ASGD: SGD whose iterates are averaged (Polyak & Juditsky), in torch.optim.ASGD's form."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import store, widen
from optimizers.contract.hyperparams import check_learning_rate, check_range, current_hyperparams, init_hyperparams
from optimizers.contract.registry import declare_optimizer, declare_state
from schedules import ScalarOrSchedule


@declare_state(elementwise=True)
class AsgdState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"learning_rate": ..., "lambd": ..., "alpha": ..., "weight_decay": ...}
    ax: optax.Params  # the average of the iterates, same tree and dtype as params


def _rates(hp, count, t0):
    """:math:`\\eta_t` and :math:`\\mu_t` of the update at ``count`` (0 at the first update)."""
    t = count.astype(hp["learning_rate"].dtype)
    eta = hp["learning_rate"] / (1 + hp["lambd"] * hp["learning_rate"] * t) ** hp["alpha"]
    mu = 1 / jnp.maximum(1.0, t - t0)
    return eta, mu


@declare_optimizer(paper="Polyak & Juditsky 1992", update="`θ←(1-λη)θ-ηg; θ̄+=μ(θ-θ̄)`",
                   test_kwargs=dict(learning_rate=2e-3, lambd=1e-4, t0=5000.0))
def asgd(learning_rate: ScalarOrSchedule = 1e-2, lambd: ScalarOrSchedule = 1e-4, alpha: ScalarOrSchedule = 0.75,
         t0: float = 1e6, weight_decay: ScalarOrSchedule = 0.0) -> optax.GradientTransformation:
    r"""Averaged SGD: SGD with a decaying step whose iterates are averaged, as ``torch.optim.ASGD``.

    At the update :math:`t = 0, 1, \dots` (``count``), with :math:`g_t` the gradient plus
    :math:`\omega \theta_{t-1}` (``weight_decay``):

    .. math::
        \eta_t = \frac{\gamma}{(1 + \lambda \gamma t)^{\alpha}}, \quad
        \mu_t = \frac{1}{\max(1, t - t_0)}, \quad
        \theta_t = (1 - \lambda \eta_t)\, \theta_{t-1} - \eta_t g_t, \quad
        \bar\theta_t = \bar\theta_{t-1} + \mu_t (\theta_t - \bar\theta_{t-1})

    with :math:`\bar\theta_0 = 0`. Until :math:`t > t_0 + 1` the average is the last iterate
    (:math:`\mu_t = 1`); after it, :math:`\bar\theta` is the running mean of the iterates from
    there on (Polyak & Juditsky's averaging). The params follow :math:`\theta_t`; read
    :math:`\bar\theta_t` with :func:`asgd_averaged_params` (evaluate with it, as
    :func:`averaged_params` for SWA). The update returned is :math:`\theta_t - \theta_{t-1}`,
    so ``update`` needs ``params``; the learning rate is inside (:math:`\eta_t` is not
    proportional to :math:`\gamma`), so there is no ``scale_by_*`` direction. A schedule for
    :math:`\gamma`, :math:`\lambda`, :math:`\alpha` or :math:`\omega` is read at :math:`t`.
    Complex params: per real coordinate (the real pair's update).

    .. warning::
        optax has no ASGD. ``torch.optim.ASGD`` computes the same steps (its ``eta`` and ``mu``
        are those of its step count before the increment, as here); its ``ax`` is our
        :func:`asgd_averaged_params`. Its ``maximize``, ``foreach``, ``capturable`` and
        ``differentiable`` have no counterpart (negate the loss to maximize).

    Args:
        learning_rate: :math:`\gamma \ge 0`.
        lambd: :math:`\lambda \ge 0`, the decay of the step and of the params.
        alpha: :math:`\alpha \ge 0`, the power of the step's decay.
        t0: :math:`t_0 \ge 0`, the step after which averaging starts.
        weight_decay: :math:`\omega \ge 0`, the L2 coefficient added to the gradient.

    References:
        Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
        Control Optim. 30(4), 1992; Bottou, "Large-Scale Machine Learning with Stochastic
        Gradient Descent", COMPSTAT 2010 (the step :math:`\eta_t`).
    """
    check_learning_rate("asgd", learning_rate)
    check_range("asgd", "lambd", lambd, 0.0)
    check_range("asgd", "alpha", alpha, 0.0)
    check_range("asgd", "t0", t0, 0.0)
    check_range("asgd", "weight_decay", weight_decay, 0.0)
    values = dict(learning_rate=learning_rate, lambd=lambd, alpha=alpha, weight_decay=weight_decay)

    def init_fn(params):
        ax = jax.tree.map(jnp.zeros_like, params)
        return AsgdState(jnp.zeros([], jnp.int32), init_hyperparams(**values), ax)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("asgd: update needs params, got params=None")
        hp = current_hyperparams(values, state.hyperparams, state.count)
        eta, mu = _rates(hp, state.count, t0)

        def step(g, p):
            g, p = widen(g), widen(p)
            g = g + hp["weight_decay"] * p
            return -(hp["lambd"] * eta * p + eta * g)

        out = jax.tree.map(lambda g, p: store(step(g, p), g.dtype), updates, params)
        moved = optax.apply_updates(params, out)  # the params the caller will hold
        ax = jax.tree.map(lambda a, w: store(widen(a) + mu * (widen(w) - widen(a)), a.dtype), state.ax, moved)
        return out, AsgdState(optax.safe_increment(state.count), hp, ax)

    return transformation("asgd", init_fn, update_fn)


def asgd_averaged_params(state) -> optax.Params:
    r"""The average :math:`\bar\theta_t` kept by the first :func:`asgd` found in ``state``.

    Raises:
        ValueError: ``state`` holds no :func:`asgd` state.
    """
    for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, AsgdState)):
        if isinstance(node, AsgdState):
            return node.ax
    raise ValueError("asgd_averaged_params: no asgd state in this optimizer state")
