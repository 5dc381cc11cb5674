"""L-BFGS: the two-loop recursion of Nocedal (1980) and Liu & Nocedal (1989), and its alias."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.hyperparams import check_count
from optimizers.contract.registry import declare_state
from optimizers.rules.quasi_newton.linesearch import real_dtype, scale_by_zoom_linesearch, tree_dot
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(elementwise=False)
class ScaleByLbfgsState(NamedTuple):
    count: jax.Array  # int32 scalar: updates seen
    params: optax.Params  # w_{k-1}: the params of the previous update
    updates: optax.Updates  # g_{k-1}: the gradient of the previous update
    diff_params_memory: optax.Params  # s_j = w_{j+1} - w_j, each leaf stacked (memory_size, *shape), circular
    diff_updates_memory: optax.Updates  # y_j = g_{j+1} - g_j, same layout
    weights_memory: jax.Array  # rho_j = 1 / y_j^T s_j (0 where y_j^T s_j = 0), (memory_size,)


def _slot(memory, i):
    return jax.tree.map(lambda m: m[i], memory)


def two_loop(g, s_memory, y_memory, rho, gamma, newest):
    r""":math:`H_k g` by the two-loop recursion over the stored pairs, newest at slot ``newest``.

    Slots with :math:`\rho_j = 0` (empty, or :math:`y_j^\top s_j = 0`) leave the product unchanged.
    """
    m = rho.shape[0]

    def backward(j, carry):  # newest -> oldest: alpha_i = rho_i s_i^T q, q -= alpha_i y_i
        q, alphas = carry
        i = (newest - j) % m
        a = rho[i] * tree_dot(_slot(s_memory, i), q)
        q = jax.tree.map(lambda x, y: x - (a * y).astype(x.dtype), q, _slot(y_memory, i))
        return q, alphas.at[i].set(a)

    q, alphas = jax.lax.fori_loop(0, m, backward, (g, jnp.zeros_like(rho)))
    r = jax.tree.map(lambda x: (gamma * x).astype(x.dtype), q)

    def forward(j, r):  # oldest -> newest: beta = rho_i y_i^T r, r += (alpha_i - beta) s_i
        i = (newest + 1 + j) % m
        b = rho[i] * tree_dot(_slot(y_memory, i), r)
        return jax.tree.map(lambda x, s: x + ((alphas[i] - b) * s).astype(x.dtype), r, _slot(s_memory, i))

    return jax.lax.fori_loop(0, m, forward, r)


def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> optax.GradientTransformation:
    r"""L-BFGS's direction :math:`H_k g_k`: the inverse-Hessian estimate from the last ``memory_size`` pairs.

    With :math:`s_j = w_{j+1} - w_j`, :math:`y_j = g_{j+1} - g_j` and :math:`\rho_j = 1/y_j^\top s_j`
    (0 where :math:`y_j^\top s_j = 0`), for the last :math:`m` pairs
    :math:`j = k-m, \dots, k-1`:

    .. math::
        H_k = V_{k-1}^\top \cdots V_{k-m}^\top\, \gamma_k I\, V_{k-m} \cdots V_{k-1}
              + \sum_j \rho_j (\cdots) s_j s_j^\top (\cdots), \quad V_j = I - \rho_j y_j s_j^\top,

    computed by the two-loop recursion (Nocedal 1980): :math:`q = g_k`; for :math:`j` from the
    newest to the oldest :math:`\alpha_j = \rho_j s_j^\top q,\ q \mathrel{-}= \alpha_j y_j`;
    :math:`r = \gamma_k q`; for :math:`j` from the oldest to the newest
    :math:`\beta = \rho_j y_j^\top r,\ r \mathrel{+}= (\alpha_j - \beta) s_j`; :math:`u_k = r`.
    The initial scaling (``scale_init_precond``, Liu & Nocedal 1989, Eq. (7.20) of Nocedal &
    Wright) is :math:`\gamma_k = s_{k-1}^\top y_{k-1} / y_{k-1}^\top y_{k-1}` (1 where
    :math:`y_{k-1} = 0`), and at the first update :math:`\gamma_0 = \min(1, 1/\|g_0\|)`, so that
    the first step has length at most 1 (the papers leave :math:`\gamma_0` open; this is optax's
    choice). Without ``scale_init_precond``, :math:`\gamma_k = 1`. The pairs are taken from the
    ``params`` and updates of consecutive calls, so ``update`` needs ``params``; the direction
    points uphill (a descent needs a negative step: :func:`lbfgs` chains ``scale(-1)`` or
    ``scale_by_learning_rate``).

    .. warning::
        Equal to ``optax.scale_by_lbfgs`` (same :math:`\gamma_0`, pairs with
        :math:`y^\top s \le 0` kept as optax keeps them). ``torch.optim.LBFGS`` skips a pair
        with :math:`y^\top s \le 10^{-10}` and scales its first step by
        :math:`\min(1, 1/\|g_0\|_1)` (an L1 norm): see :func:`torch_lbfgs`.

    Args:
        memory_size: :math:`m \ge 1`, the pairs kept.
        scale_init_precond: use :math:`\gamma_k` above (else the identity).

    References:
        Nocedal, "Updating Quasi-Newton Matrices with Limited Storage", Math. Comp. 35, 1980;
        Liu & Nocedal, "On the limited memory BFGS method for large scale optimization",
        Math. Programming 45, 1989; Nocedal & Wright, "Numerical Optimization", 2006, Algorithms 7.4, 7.5.
    """
    check_count("scale_by_lbfgs", "memory_size", memory_size)

    def init_fn(params):
        stacked = jax.tree.map(lambda p: jnp.zeros((memory_size, *p.shape), p.dtype), params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        real = real_dtype(params)
        return ScaleByLbfgsState(jnp.zeros([], jnp.int32), zeros, zeros, stacked, stacked,
                                 jnp.zeros([memory_size], real))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_lbfgs: update needs params, got params=None")
        started = state.count > 0
        s = jax.tree.map(lambda p, q: jnp.where(started, p - q, 0).astype(p.dtype), params, state.params)
        y = jax.tree.map(lambda g, h: jnp.where(started, g - h, 0).astype(g.dtype), updates, state.updates)
        ys = tree_dot(y, s)
        rho = jnp.where(ys == 0, 0.0, 1 / jnp.where(ys == 0, 1.0, ys)).astype(state.weights_memory.dtype)
        newest = (state.count - 1) % memory_size
        s_mem = jax.tree.map(lambda m, x: m.at[newest].set(x), state.diff_params_memory, s)
        y_mem = jax.tree.map(lambda m, x: m.at[newest].set(x), state.diff_updates_memory, y)
        rho_mem = state.weights_memory.at[newest].set(rho)
        if scale_init_precond:
            yy = tree_dot(y, y)
            gamma = jnp.where(yy > 0, ys / jnp.where(yy > 0, yy, 1.0), 1.0)
            first = jnp.minimum(1.0, 1.0 / jnp.sqrt(tree_dot(updates, updates)))
            gamma = jnp.where(started, gamma, first)
        else:
            gamma = jnp.asarray(1.0)
        out = two_loop(updates, s_mem, y_mem, rho_mem, gamma.astype(rho_mem.dtype), newest)
        return out, ScaleByLbfgsState(optax.safe_increment(state.count), params, updates, s_mem, y_mem, rho_mem)

    return transformation("scale_by_lbfgs", init_fn, update_fn)


def lbfgs(learning_rate: Optional[ScalarOrSchedule] = None, memory_size: int = 10, scale_init_precond: bool = True,
          linesearch: Optional[Union[optax.GradientTransformationExtraArgs, optax.GradientTransformation]] = (
              scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")),
          ) -> optax.GradientTransformationExtraArgs:
    r"""L-BFGS: :math:`w_{k+1} = w_k - \eta_k H_k g_k`, :math:`\eta_k` from a line search.

    The chain :func:`scale_by_lbfgs`, then :math:`-1` (or ``scale_by_learning_rate`` when a
    ``learning_rate`` is given), then ``linesearch``. Its ``update`` takes the line search's
    extra arguments: ``value`` and ``grad`` at ``params``, and ``value_fn`` (plus any keyword
    ``value_fn`` accepts), as ``optax.lbfgs``; ``optax.value_and_grad_from_state(f)`` reuses the
    value and gradient the line search computed at the new params::

        solver = optimizers.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(f)
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=f)

    The default ``linesearch`` is :func:`scale_by_zoom_linesearch` with
    ``max_linesearch_steps=20`` and ``initial_guess_strategy="one"`` (strong Wolfe, Nocedal &
    Wright's Algorithms 3.5-3.6); pass ``linesearch=optimizers.scale_by_zoom_linesearch(20,
    initial_guess_strategy="one", approx_dec_rtol=1e-6)`` for ``optax.lbfgs``'s default.
    ``linesearch=None`` takes the step :math:`-\gamma H_k g_k` as it is (as optax's).

    .. warning::
        ``optax.lbfgs``'s default line search also accepts Hager & Zhang's approximate Wolfe
        condition (``approx_dec_rtol=1e-6``); ours is the strong Wolfe conditions only. With the
        line search above the iterates are optax's (tested). ``torch.optim.LBFGS`` differs in its
        first step, its pair skipping and its zoom: see :func:`torch_lbfgs`.

    Args:
        learning_rate: a fixed step (or schedule) before the line search, or ``None`` (1).
        memory_size: :math:`m \ge 1`, see :func:`scale_by_lbfgs`.
        scale_init_precond: see :func:`scale_by_lbfgs`.
        linesearch: the line search transform (``optax``'s are accepted), or ``None`` (none).

    References:
        Liu & Nocedal, "On the limited memory BFGS method for large scale optimization", Math.
        Programming 45, 1989; Nocedal & Wright, "Numerical Optimization", 2006, Algorithms 3.5, 3.6, 7.4, 7.5.
    """
    base = optax.scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate)
    links = [scale_by_lbfgs(memory_size, scale_init_precond), base] + ([] if linesearch is None else [linesearch])
    return optax.chain(*links)
