"""SAM: a step of the outer optimizer taken with the gradient at an adversarially perturbed point."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.dtypes import abs2
from optimizers.contract.hyperparams import check_range


def normalize() -> optax.GradientTransformation:
    r"""Divides the whole update by its global norm: :math:`u = g / \|g\|` (every leaf, one norm).

    As ``optax.contrib.normalize`` (a zero gradient gives NaN, as there).
    """
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        norm = jnp.sqrt(sum(jnp.sum(abs2(u)) for u in jax.tree.leaves(updates)))
        return jax.tree.map(lambda u: u / norm, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


class SAMState(NamedTuple):
    """The state of :func:`sam`: the adversarial steps since the outer one, and both optimizers' states."""

    steps_since_sync: jax.Array  # int32 scalar: adversarial calls since the last outer step
    opt_state: Any  # the outer optimizer's state
    adv_state: Any  # the adversarial optimizer's state
    cache: Optional[optax.Params]  # the outer params w (transparent mode; None in opaque mode)


def _select(cond, if_true, if_false):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), if_true, if_false)


def sam(optimizer: optax.GradientTransformation, adv_optimizer: Optional[optax.GradientTransformation] = None,
        sync_period: int = 2, reset_state: bool = True, opaque_mode: bool = False,
        batch_axis_name: Optional[str] = None, *, rho: float = 0.05) -> optax.GradientTransformationExtraArgs:
    r"""Sharpness-Aware Minimization: the outer step uses the gradient at an ascent-perturbed point.

    With the default adversarial optimizer (``None``: :func:`normalize` then a step of size
    :math:`\rho`, the paper's :math:`p = 2` solution) and ``sync_period=2``:

    .. math::
        \hat\epsilon(w) = \rho\, \frac{\nabla L(w)}{\|\nabla L(w)\|_2}, \qquad
        w \leftarrow w + \mathrm{outer}\big(\nabla L(w + \hat\epsilon(w))\big).

    ``opaque_mode=False`` (optax's default): the calls alternate. A call with
    ``steps_since_sync < sync_period - 1`` returns the adversarial step
    (:math:`-` ``adv_optimizer``'s update, an ascent: the params become
    :math:`w + \hat\epsilon`) and remembers :math:`w` at the first; the last call of the period
    takes the gradient at the perturbed point, asks ``optimizer`` for its update :math:`u`
    (with :math:`w` as params) and returns :math:`w - \text{params} + u`, so the params become
    :math:`w + u`. The outer state moves only at that call; with ``reset_state`` the adversarial
    state restarts after it. ``opaque_mode=True``: one call does the whole period, calling
    ``update(grads, state, params, grad_fn=g)`` with ``g(params, i)`` the gradient at the
    ``i``-th adversarial point (``sync_period - 1`` calls), and returns the outer update only
    (``batch_axis_name``: the adversarial gradients are ``pmean``-ed over that axis).

    Numbers as ``optax.contrib.sam`` (which takes no default ``adv_optimizer``; optax's docs
    build it as ``chain(normalize(), sgd(rho))``, the same as ours).

    Args:
        optimizer: the outer optimizer.
        adv_optimizer: the adversarial optimizer, or ``None`` for :func:`normalize` and a step
            of ``rho``.
        sync_period: calls per outer step, at least 1 (2: one ascent step, the paper's).
        reset_state: restart the adversarial optimizer's state after each outer step.
        opaque_mode: do the adversarial steps inside one call, with ``grad_fn``.
        batch_axis_name: the ``pmap`` axis to average the adversarial gradients over (opaque mode).
        rho: :math:`\rho \ge 0`, the radius of the default adversarial step.

    References:
        Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021, Algorithm 1 and Eq. (2).
    """
    check_range("sam", "sync_period", sync_period, 1)
    check_range("sam", "rho", rho, 0.0)
    if batch_axis_name is not None and not isinstance(batch_axis_name, str):
        raise ValueError(f"sam: batch_axis_name must be None or a str (a pmap axis name), got {batch_axis_name!r}")
    if isinstance(sync_period, (int, float)) and int(sync_period) != sync_period:
        raise ValueError(f"sam: sync_period must be an int >= 1, got {sync_period!r}")
    if adv_optimizer is None:
        adv_optimizer = optax.chain(normalize(), optax.scale(-rho))
    period = int(sync_period)

    def init_fn(params):
        return SAMState(jnp.zeros([], jnp.int32), optimizer.init(params), adv_optimizer.init(params),
                        None if opaque_mode else params)

    def transparent_update(updates, state, params=None, **extra):
        del extra
        first, last = state.steps_since_sync == 0, state.steps_since_sync == period - 1
        adv_updates, adv_state = adv_optimizer.update(updates, state.adv_state, params)
        adv_updates = jax.tree.map(jnp.negative, adv_updates)
        outer, opt_state = optimizer.update(updates, state.opt_state, state.cache)
        outer = jax.tree.map(lambda c, p, u: c - p + u, state.cache, params, outer)
        cache = _select(first, params, state.cache)
        out = _select(last, outer, adv_updates)
        restart = adv_optimizer.init(params) if reset_state else state.adv_state
        adv_state = _select(last, restart, adv_state)
        opt_state = _select(last, opt_state, state.opt_state)
        steps = (state.steps_since_sync + 1) % period
        return out, SAMState(steps, opt_state, adv_state, cache)

    def opaque_update(updates, state, params=None, *, grad_fn: Optional[Callable] = None, **extra):
        del extra
        if grad_fn is None:
            raise ValueError("sam: opaque_mode=True needs update(..., grad_fn=g), g(params, i) the gradient")
        adv_params, adv_grads, adv_state = params, updates, state.adv_state
        for i in range(period - 1):
            step, adv_state = adv_optimizer.update(adv_grads, adv_state, adv_params)
            adv_params = optax.apply_updates(adv_params, jax.tree.map(jnp.negative, step))
            adv_grads = grad_fn(adv_params, i)
            if batch_axis_name is not None:
                adv_grads = jax.lax.pmean(adv_grads, axis_name=batch_axis_name)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        out, opt_state = optimizer.update(adv_grads, state.opt_state, params)
        return out, SAMState(jnp.zeros([], jnp.int32), opt_state, adv_state, None)

    return optax.GradientTransformationExtraArgs(init_fn, opaque_update if opaque_mode else transparent_update)
