"""Gradients without backpropagation: forward gradients, zeroth-order estimates, gradientless descent."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.hyperparams import check_range


def _gaussian_like(key, params):
    """A tree of N(0, 1) entries shaped like ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
                                        for k, x in zip(keys, leaves)])


def _mean_over_samples(estimate, key, num_samples):
    values, grads = jax.vmap(estimate)(jax.random.split(key, num_samples))
    return values[0], jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)


def forward_value_and_grad(fun: Callable[..., jax.Array], num_tangents: int = 1):
    r"""Makes ``(key, params, *args) -> (fun(params, *args), g)`` with a forward gradient :math:`g`.

    .. math::
        g = \frac1K \sum_{k=1}^{K} (\nabla f(\theta) \cdot v_k)\, v_k, \qquad v_k \sim \mathcal N(0, I)

    Each directional derivative :math:`\nabla f \cdot v_k` comes from one ``jax.jvp`` (a
    forward pass, no backpropagation). :math:`g` is an unbiased estimate of
    :math:`\nabla f(\theta)` (:math:`E[v v^\top] = I`), with variance that grows with the
    number of parameters; feed it to any optimizer in place of the gradient.

    Args:
        fun: a scalar function of ``params`` (and further arguments).
        num_tangents: :math:`K \ge 1` tangents, averaged (vectorised with ``jax.vmap``).

    References:
        Baydin et al., "Gradients without Backpropagation", 2022, Algorithm 1.
    """
    check_range("forward_value_and_grad", "num_tangents", num_tangents, 1)

    def value_and_grad(key, params, *args):
        def estimate(k):
            v = _gaussian_like(k, params)
            value, slope = jax.jvp(lambda p: fun(p, *args), (params,), (v,))
            return value, jax.tree.map(lambda t: slope * t, v)

        return _mean_over_samples(estimate, key, num_tangents)

    return value_and_grad


def zeroth_order_value_and_grad(fun: Callable[..., jax.Array], num_directions: int = 1,
                                smoothing: float = 1e-3):
    r"""Makes ``(key, params, *args) -> (fun(params, *args), g)`` from loss values only.

    “Optimization algorithms in deep learning”'s two-point (difference) estimator with Gaussian directions:

    .. math::
        g = \frac1K \sum_{k=1}^{K} \frac{f(\theta + \epsilon u_k) - f(\theta)}{\epsilon} u_k,
        \qquad u_k \sim \mathcal N(0, I)

    the gradient of the Gaussian smoothing of :math:`f` (unbiased for it, biased by
    :math:`O(\epsilon)` for :math:`\nabla f`). :math:`K + 1` evaluations of :math:`f`.

    Args:
        fun: a scalar function of ``params`` (and further arguments).
        num_directions: :math:`K \ge 1`.
        smoothing: :math:`\epsilon > 0`.

    References:
        Nesterov & Spokoiny, "Random Gradient-Free Minimization of Convex Functions", Found.
        Comput. Math. 17, 2017, Eq. (30).
    """
    check_range("zeroth_order_value_and_grad", "num_directions", num_directions, 1)
    check_range("zeroth_order_value_and_grad", "smoothing", smoothing, 0.0, low_open=True)

    def value_and_grad(key, params, *args):
        value = fun(params, *args)

        def estimate(k):
            u = _gaussian_like(k, params)
            moved = jax.tree.map(lambda p, d: p + smoothing * d, params, u)
            slope = (fun(moved, *args) - value) / smoothing
            return value, jax.tree.map(lambda d: slope * d, u)

        return _mean_over_samples(estimate, key, num_directions)

    return value_and_grad


class GradientlessDescentState(NamedTuple):
    value: jax.Array  # f at the current params
    evaluations: jax.Array  # int32: evaluations of f so far


class GradientlessDescent(NamedTuple):
    """``init(params) -> state`` and ``step(key, params, state) -> (params, state)``."""

    init: Callable[[Any], GradientlessDescentState]
    step: Callable[[jax.Array, Any, GradientlessDescentState], tuple[Any, GradientlessDescentState]]


def gradientless_descent(fun: Callable[[Any], jax.Array], max_radius: float, min_radius: float) -> GradientlessDescent:
    r"""Gradientless descent with binary search over radii (GLD-Search): only evaluates ``fun``.

    Each step draws, for each radius :math:`r_k = 2^{-k} R`, :math:`k = 0, \dots, K`,
    :math:`K = \lceil\log_2(R/r)\rceil`, a point :math:`y_k = x + r_k v_k` with :math:`v_k`
    uniform on the unit sphere, and moves to the best of :math:`x, y_0, \dots, y_K`. So the
    step size adapts to the function's scale without a learning rate (“Optimization algorithms in deep learning”).

    Args:
        fun: the objective, a scalar function of a pytree.
        max_radius: :math:`R > 0`, the largest search radius.
        min_radius: :math:`r \in (0, R]`, the smallest.

    References:
        Golovin et al., "Gradientless Descent: High-Dimensional Zeroth-Order Optimization",
        ICLR 2020, Algorithm 1.
    """
    check_range("gradientless_descent", "max_radius", max_radius, 0.0, low_open=True)
    check_range("gradientless_descent", "min_radius", min_radius, 0.0, max_radius, low_open=True)
    radii = jnp.asarray([max_radius * 2.0**-k for k in range(math.ceil(math.log2(max_radius / min_radius)) + 1)])

    def init(params):
        return GradientlessDescentState(jnp.asarray(fun(params)), jnp.ones([], jnp.int32))

    def step(key, params, state):
        def candidate(k, r):
            v = _gaussian_like(k, params)
            norm = optax.tree.norm(v)
            y = jax.tree.map(lambda p, d: p + r / norm * d, params, v)
            return fun(y), y

        values, points = jax.vmap(candidate)(jax.random.split(key, radii.shape[0]), radii)
        best = jnp.argmin(values)
        better = values[best] < state.value
        params = jax.tree.map(lambda p, ys: jnp.where(better, ys[best], p), params, points)
        value = jnp.where(better, values[best], state.value)
        return params, GradientlessDescentState(value, state.evaluations + radii.shape[0])

    return GradientlessDescent(init, step)
