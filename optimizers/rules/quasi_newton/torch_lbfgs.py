"""``torch.optim.LBFGS``'s form of L-BFGS, as a solver: one call is one ``LBFGS.step(closure)``."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from optimizers.contract.hyperparams import check_range


@dataclasses.dataclass
class TorchLbfgsState:
    """What ``torch.optim.LBFGS`` keeps between its steps (host-side: lists of flat arrays)."""

    n_iter: int = 0  # iterations done, over all steps
    func_evals: int = 0  # evaluations of the function, over all steps
    d: Optional[jax.Array] = None  # the last direction
    t: float = 0.0  # the last step length
    old_dirs: list = dataclasses.field(default_factory=list)  # y_j
    old_stps: list = dataclasses.field(default_factory=list)  # s_j
    ro: list = dataclasses.field(default_factory=list)  # 1 / y_j^T s_j
    h_diag: float = 1.0  # gamma = s^T y / y^T y of the last pair kept
    prev_flat_grad: Optional[jax.Array] = None
    prev_loss: Optional[float] = None


def _cubic_step(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic with values and slopes at ``x1``, ``x2`` (N&W Eq. 3.59), clipped to ``bounds``."""
    lo, hi = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2
    d2 = math.sqrt(disc)
    if x1 <= x2:
        x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        x = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(x, lo), hi)


def _strong_wolfe(evaluate, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's strong Wolfe search (minFunc's): extrapolation by cubic steps, then a safeguarded cubic zoom.

    ``evaluate(t) -> (f, g, g.d)``; returns ``(f, g, t, evaluations)``.
    """
    d_norm = float(jnp.max(jnp.abs(d)))
    f_new, g_new, gtd_new = evaluate(t)
    evals, it = 1, 0
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    br, br_f, br_g, br_gtd = None, None, None, None
    while it < max_ls:
        if f_new > f + c1 * t * gtd or (it > 1 and f_new >= f_prev):
            br, br_f, br_g, br_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            br, br_f, br_g, done = [t], [f_new], [g_new], True
            break
        if gtd_new >= 0:
            br, br_f, br_g, br_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        nxt = _cubic_step(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(t + 0.01 * (t - t_prev), t * 10))
        t_prev, f_prev, g_prev, gtd_prev = t, f_new, g_new, gtd_new
        t = nxt
        f_new, g_new, gtd_new = evaluate(t)
        evals += 1
        it += 1
    if it == max_ls:
        br, br_f, br_g = [0.0, t], [f, f_new], [g, g_new]
    low, high = (0, 1) if br_f[0] <= br_f[-1] else (1, 0)
    stalled = False
    while not done and it < max_ls:
        if abs(br[1] - br[0]) * d_norm < tolerance_change:
            break
        t = _cubic_step(br[0], br_f[0], br_gtd[0], br[1], br_f[1], br_gtd[1])
        left, right = min(br), max(br)
        eps = 0.1 * (right - left)
        if min(right - t, t - left) < eps:  # too close to an end: move it in, unless the last one was too
            if stalled or t >= right or t <= left:
                t = right - eps if abs(t - right) < abs(t - left) else left + eps
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        f_new, g_new, gtd_new = evaluate(t)
        evals += 1
        it += 1
        if f_new > f + c1 * t * gtd or f_new >= br_f[low]:
            br[high], br_f[high], br_g[high], br_gtd[high] = t, f_new, g_new, gtd_new
            low, high = (0, 1) if br_f[0] <= br_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (br[high] - br[low]) >= 0:
                br[high], br_f[high], br_g[high], br_gtd[high] = br[low], br_f[low], br_g[low], br_gtd[low]
            br[low], br_f[low], br_g[low], br_gtd[low] = t, f_new, g_new, gtd_new
    return br_f[low], br_g[low], br[low], evals


def torch_lbfgs(value_fn: Callable, params, state: Optional[TorchLbfgsState] = None, *, lr: float = 1.0,
                max_iter: int = 20, max_eval: Optional[int] = None, tolerance_grad: float = 1e-7,
                tolerance_change: float = 1e-9, history_size: int = 100,
                line_search_fn: Optional[str] = None):
    r"""One ``torch.optim.LBFGS(...).step(closure)``: up to ``max_iter`` L-BFGS iterations on ``value_fn``.

    Returns ``(params, state, loss)``: the new params, the state to pass to the next call
    (:class:`TorchLbfgsState`: ``n_iter`` and ``func_evals`` count as torch's), and the loss at the
    params given (what torch's ``step`` returns). PyTorch's form, which differs from
    :func:`lbfgs` (Liu & Nocedal's, and optax's) in:

    * the first step of the first iteration: :math:`t = \min(1, 1/\|g_0\|_1)\,\gamma` along
      :math:`-g_0` (an L1 norm; ours scales the direction by :math:`\min(1, 1/\|g_0\|_2)`);
    * a pair is kept only when :math:`y^\top s > 10^{-10}`, and :math:`\gamma_k` is that of the
      last pair kept;
    * its ``"strong_wolfe"`` search (from minFunc) starts at :math:`t = \gamma` (``lr``),
      extrapolates with the minimizer of the cubic through the last two trials (within
      :math:`[t + 0.01(t - t_{prev}), 10t]`) and zooms with the two-point cubic of N&W's Eq.
      (3.59), moved in to 10% of the interval from its ends; it shares ``max_eval`` with the
      iterations; without a search the step is :math:`\gamma`;
    * it stops when :math:`\|g\|_\infty \le` ``tolerance_grad``, when
      :math:`g^\top d > -` ``tolerance_change``, when a step or a change of the loss is below
      ``tolerance_change``, or after ``max_iter`` iterations or ``max_eval`` evaluations.

    The iterations run on the host (a Python loop calling a jitted ``value_and_grad``), as
    torch's; for a jitted loop use :func:`lbfgs`. Params are flattened into one vector, as torch's
    ``_gather_flat_grad``.

    Args:
        value_fn: :math:`f(\text{params})`, a scalar.
        params: the starting point (a pytree of real arrays).
        state: the state from the previous call, or ``None`` (a new optimizer).
        lr: :math:`\gamma > 0`.
        max_iter, max_eval, tolerance_grad, tolerance_change, history_size, line_search_fn:
            ``torch.optim.LBFGS``'s (``max_eval=None``: ``max_iter * 5 // 4``; ``line_search_fn``
            ``None`` or ``"strong_wolfe"``).

    References:
        Nocedal & Wright, "Numerical Optimization", 2006, Algorithms 3.5, 3.6, 7.4 and Eq. (3.59);
        Schmidt, minFunc (2005), on which ``torch.optim.LBFGS`` is modelled.
    """
    check_range("torch_lbfgs", "lr", lr, 0.0, low_open=True)
    check_range("torch_lbfgs", "max_iter", max_iter, 1)
    check_range("torch_lbfgs", "history_size", history_size, 1)
    check_range("torch_lbfgs", "tolerance_grad", tolerance_grad, 0.0)
    check_range("torch_lbfgs", "tolerance_change", tolerance_change, 0.0)
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"torch_lbfgs: line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    st = TorchLbfgsState() if state is None else dataclasses.replace(state, old_dirs=list(state.old_dirs),
                                                                     old_stps=list(state.old_stps), ro=list(state.ro))
    x, unravel = ravel_pytree(params)
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: value_fn(unravel(v))))

    def evaluate_at(v):
        f, g = value_and_grad(v)
        return float(f), g

    loss, g = evaluate_at(x)
    orig_loss, evals = loss, 1
    st.func_evals += 1
    if float(jnp.max(jnp.abs(g))) <= tolerance_grad:
        return unravel(x), st, orig_loss
    d, t = st.d, st.t
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        st.n_iter += 1
        if st.n_iter == 1:
            d, st.old_dirs, st.old_stps, st.ro, st.h_diag = -g, [], [], [], 1.0
        else:
            y, s = g - st.prev_flat_grad, d * t
            ys = jnp.dot(y, s)  # float32 scalars, as torch's tensors
            if float(ys) > 1e-10:
                if len(st.old_dirs) == history_size:
                    st.old_dirs.pop(0), st.old_stps.pop(0), st.ro.pop(0)
                st.old_dirs.append(y), st.old_stps.append(s), st.ro.append(1.0 / ys)
                st.h_diag = ys / jnp.dot(y, y)
            q, al = -g, [0.0] * len(st.old_dirs)
            for i in range(len(st.old_dirs) - 1, -1, -1):
                al[i] = jnp.dot(st.old_stps[i], q) * st.ro[i]
                q = q - al[i] * st.old_dirs[i]
            d = q * st.h_diag
            for i in range(len(st.old_dirs)):
                be = jnp.dot(st.old_dirs[i], d) * st.ro[i]
                d = d + (al[i] - be) * st.old_stps[i]
        st.prev_flat_grad, st.prev_loss = g, loss
        t = min(1.0, 1.0 / float(jnp.sum(jnp.abs(g)))) * lr if st.n_iter == 1 else lr
        gtd = float(jnp.dot(g, d))
        if gtd > -tolerance_change:
            break
        if line_search_fn is not None:
            def evaluate(step, x=x, d=d):
                f_new, g_new = evaluate_at(x + step * d)
                return f_new, g_new, float(jnp.dot(g_new, d))

            loss, g, t, ls_evals = _strong_wolfe(evaluate, t, d, loss, g, gtd, max_ls=max_eval - evals)
            x = x + t * d
        else:
            x = x + t * d
            ls_evals = 0
            if n_iter != max_iter:
                loss, g = evaluate_at(x)
                ls_evals = 1
        opt_cond = float(jnp.max(jnp.abs(g))) <= tolerance_grad
        evals += ls_evals
        st.func_evals += ls_evals
        if n_iter == max_iter or evals >= max_eval or opt_cond:
            break
        if float(jnp.max(jnp.abs(d * t))) <= tolerance_change or abs(loss - st.prev_loss) < tolerance_change:
            break
    st.d, st.t = d, t
    return unravel(x), st, orig_loss


