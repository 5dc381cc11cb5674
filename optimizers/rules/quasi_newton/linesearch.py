"""Line searches for a step along a direction: the zoom (strong Wolfe) and backtracking (Armijo) searches.

Both are ``optax.GradientTransformationExtraArgs``: ``update(updates, state, params, *, value, grad,
value_fn, **kwargs)`` scales the direction ``updates`` by the step found, where ``value`` and
``grad`` are :math:`f` and :math:`\\nabla f` at ``params`` and ``value_fn(params, **kwargs)`` is
:math:`f` (``kwargs``: the extra arguments ``value_fn`` accepts by name).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.hyperparams import check_range

_GUESSES = ("one", "keep")


def tree_dot(a, b):
    """:math:`\\mathrm{Re}\\, \\bar a^\\top b` summed over every leaf."""
    return sum(jnp.sum(jnp.real(jnp.conj(x) * y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def real_dtype(params):
    leaves = jax.tree.leaves(params)
    return jnp.real(jnp.zeros((), leaves[0].dtype)).dtype if leaves else jnp.float32


def _moved(params, eta, updates):
    """:math:`w + \\eta u`."""
    return jax.tree.map(lambda p, u: (p + eta * u).astype(p.dtype), params, updates)


def _scaled(eta, updates):
    return jax.tree.map(lambda u: (eta * u).astype(u.dtype), updates)


def value_fn_kwargs(owner: str, value_fn: Callable, extra: dict) -> dict:
    """The extra arguments ``value_fn`` takes by name; ``TypeError`` for any other."""
    names = inspect.signature(value_fn).parameters
    taken = {k: v for k, v in extra.items() if k in names}
    left = sorted(set(extra) - set(taken))
    if left:
        raise TypeError(f"{owner}: update got keyword arguments that value_fn does not take: {left}")
    return taken


def _where(c, a, b):
    return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


def _cast_like(tree, like):
    return jax.tree.map(lambda x, y: jnp.asarray(x, y.dtype), tree, like)


# ---------------------------------------------------------------- zoom (strong Wolfe)

class ZoomLinesearchInfo(NamedTuple):
    num_linesearch_steps: jax.Array  # int: evaluations of value_fn in this search
    decrease_error: jax.Array  # > 0: the accepted step fails the sufficient decrease
    curvature_error: jax.Array  # > 0: it fails the curvature condition


class ScaleByZoomLinesearchState(NamedTuple):  # optax's fields, value and grad first
    value: jax.Array  # f at the accepted step (inf before the first update): value_and_grad_from_state reads it
    grad: optax.Updates  # the gradient there
    learning_rate: jax.Array  # the step accepted at the last update
    info: ZoomLinesearchInfo


class _Search(NamedTuple):
    count: jax.Array
    stepsize: jax.Array
    value: jax.Array
    grad: Any
    slope: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array
    bracketed: jax.Array  # the zoom phase: [low, high] holds a step satisfying both conditions
    done: jax.Array
    failed: jax.Array
    low: jax.Array
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    third: jax.Array  # the previous end point replaced: the cubic's third point
    value_third: jax.Array
    safe: jax.Array  # the best step with sufficient decrease so far (0: none)
    value_safe: jax.Array
    grad_safe: Any


def cubic_minimizer(a, fa, da, b, fb, c, fc):
    r"""The critical point of the cubic through :math:`(a, f_a)`, :math:`(b, f_b)`, :math:`(c, f_c)` with
    slope :math:`f'_a` at :math:`a` (the local minimum's root; NaN when there is none)."""
    db, dc = b - a, c - a
    rb, rc = fb - fa - da * db, fc - fa - da * dc
    denom = (db * dc) ** 2 * (db - dc)
    A = (dc**2 * rb - db**2 * rc) / denom
    B = (-(dc**3) * rb + db**3 * rc) / denom
    return a + (-B + jnp.sqrt(B * B - 3 * A * da)) / (3 * A)


def quadratic_minimizer(a, fa, da, b, fb):
    r"""The critical point of the parabola through :math:`(a, f_a)`, :math:`(b, f_b)` with slope
    :math:`f'_a` at :math:`a`."""
    db = b - a
    curv = (fb - fa - da * db) / db**2
    return a - da / (2 * curv)


def scale_by_zoom_linesearch(max_linesearch_steps: int, max_learning_rate: Optional[float] = None, tol: float = 0.0,
                             increase_factor: float = 2.0, slope_rtol: float = 1e-4, curv_rtol: float = 0.9,
                             approx_dec_rtol: Optional[float] = None, stepsize_precision: float = 1e-5,
                             initial_guess_strategy: str = "keep",
                             verbose: bool = False) -> optax.GradientTransformationExtraArgs:
    r"""A step :math:`\eta` along :math:`u` satisfying the strong Wolfe conditions, by bracketing then zooming.

    With :math:`\phi(\eta) = f(w + \eta u)`, :math:`c_1` = ``slope_rtol`` and :math:`c_2` = ``curv_rtol``:

    .. math::
        \phi(\eta) \le \phi(0) + c_1 \eta \phi'(0) \quad \text{(sufficient decrease)}, \qquad
        |\phi'(\eta)| \le c_2 |\phi'(0)| \quad \text{(curvature)}.

    Bracketing (Nocedal & Wright, Algorithm 3.5): try :math:`\eta_0` (1 for
    ``initial_guess_strategy="one"``, the previous step for ``"keep"``), then
    :math:`\eta_{i+1} = \rho\, \eta_i` (``increase_factor``, capped at ``max_learning_rate``),
    until a step meets both conditions, or an interval is found: :math:`[\eta_{i-1}, \eta_i]` when
    :math:`\eta_i` fails the decrease or :math:`\phi(\eta_i) \ge \phi(\eta_{i-1})`;
    :math:`[\eta_i, \eta_{i-1}]` when :math:`\phi'(\eta_i) \ge 0`. Zoom (Algorithm 3.6) on the
    interval :math:`[\eta_{lo}, \eta_{hi}]`: the trial step is the minimizer of the cubic through
    :math:`\eta_{lo}, \eta_{hi}` and the end point last replaced (with :math:`\phi'(\eta_{lo})`)
    when it lies inside the interval by more than 20% of its length, else that of the quadratic
    through :math:`\eta_{lo}, \eta_{hi}` with :math:`\phi'(\eta_{lo})` when inside by 10%, else
    the midpoint (as SciPy's ``line_search``); a trial failing the decrease or not below
    :math:`\phi(\eta_{lo})` becomes :math:`\eta_{hi}`, else :math:`\eta_{lo}` (and the old
    :math:`\eta_{lo}` becomes :math:`\eta_{hi}` when :math:`\phi'(\eta)(\eta_{hi} - \eta_{lo}) \ge 0`).
    A condition holds within ``tol``. After ``max_linesearch_steps`` evaluations, or an interval
    shorter than ``stepsize_precision`` once a step with sufficient decrease is known, the search
    stops at the best step with sufficient decrease (or the last trial if there is none, or that
    step if it is not finite). ``approx_dec_rtol`` (``None``: off) also accepts Hager & Zhang's
    approximate Wolfe decrease, :math:`\phi'(\eta) \le (2c_1 - 1)\phi'(0)` while
    :math:`\phi(\eta) \le \phi(0) + \epsilon |\phi(0)|`.

    The state keeps the value and gradient at the accepted step (``value``, ``grad``):
    ``optax.value_and_grad_from_state`` reads them for the next update.

    .. warning::
        ``optax.scale_by_zoom_linesearch``'s default ``approx_dec_rtol`` is ``1e-6`` (Hager &
        Zhang's approximate condition on); ours is ``None``, the strong Wolfe conditions of the
        book. With the same ``approx_dec_rtol`` the steps are optax's. ``torch.optim.LBFGS``'s
        ``strong_wolfe`` search interpolates differently (a cubic through the two end points with
        both slopes, and another bracketing rule): see :func:`torch_lbfgs`.

    Args:
        max_linesearch_steps: the most evaluations of ``value_fn`` per search (>= 1).
        max_learning_rate: the largest step, or ``None``.
        tol: the tolerance on both conditions (>= 0).
        increase_factor: :math:`\rho > 1`.
        slope_rtol: :math:`c_1 \in (0, 1)`.
        curv_rtol: :math:`c_2 \in (c_1, 1)`, or ``inf`` for no curvature condition.
        approx_dec_rtol: :math:`\epsilon \ge 0`, or ``None``.
        stepsize_precision: the shortest interval zoomed (>= 0).
        initial_guess_strategy: ``"one"`` or ``"keep"``.
        verbose: print the errors when a search fails.

    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed. 2006, Algorithms 3.5, 3.6 and
        Section 3.5 (interpolation); Hager & Zhang, "Algorithm 851: CG_DESCENT", ACM TOMS 32, 2006.
    """
    owner = "scale_by_zoom_linesearch"
    check_range(owner, "max_linesearch_steps", max_linesearch_steps, 0.0, low_open=True)
    if max_learning_rate is not None:
        check_range(owner, "max_learning_rate", max_learning_rate, 0.0, low_open=True)
    check_range(owner, "tol", tol, 0.0)
    check_range(owner, "increase_factor", increase_factor, 1.0, low_open=True)
    check_range(owner, "slope_rtol", slope_rtol, 0.0, 1.0, low_open=True, high_open=True)
    check_range(owner, "curv_rtol", curv_rtol, 0.0, low_open=True)
    if approx_dec_rtol is not None:
        check_range(owner, "approx_dec_rtol", approx_dec_rtol, 0.0)
    check_range(owner, "stepsize_precision", stepsize_precision, 0.0)
    if initial_guess_strategy not in _GUESSES:
        raise ValueError(f"{owner}: initial_guess_strategy must be one of {_GUESSES}, got {initial_guess_strategy!r}")

    def errors(eta, f, d, f0, d0):
        dec = f - f0 - slope_rtol * eta * d0
        if approx_dec_rtol is not None:
            approx = jnp.maximum(d - (2 * slope_rtol - 1) * d0, f - f0 - approx_dec_rtol * jnp.abs(f0))
            dec = jnp.minimum(dec, approx)
        curv = jnp.abs(d) - curv_rtol * jnp.abs(d0)
        clean = lambda e: jnp.where(jnp.isnan(e), jnp.inf, jnp.maximum(e, 0.0))  # noqa: E731
        return clean(dec), clean(curv)

    def init_fn(params):
        dtype = real_dtype(params)
        info = ZoomLinesearchInfo(jnp.asarray(0), jnp.asarray(jnp.inf), jnp.asarray(jnp.inf))
        return ScaleByZoomLinesearchState(jnp.asarray(jnp.inf, dtype), jax.tree.map(jnp.zeros_like, params),
                                          jnp.asarray(1.0, dtype), info)

    def update_fn(updates, state, params=None, *, value, grad, value_fn, **extra):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        kwargs = value_fn_kwargs(owner, value_fn, extra)
        value_and_grad = jax.value_and_grad(lambda w: value_fn(w, **kwargs))
        dtype = state.value.dtype
        f0 = jnp.asarray(value, dtype)
        d0 = tree_dot(grad, updates).astype(dtype)

        def on_line(eta):
            f, g = value_and_grad(_moved(params, eta, updates))
            return jnp.asarray(f, dtype), g, tree_dot(g, updates).astype(dtype)

        def bracket(s):
            eta = jnp.where(s.count == 0, guess, increase_factor * s.stepsize)
            at_max = jnp.asarray(False)
            if max_learning_rate is not None:
                at_max = eta >= max_learning_rate
                eta = jnp.minimum(eta, max_learning_rate)
            f, g, d = on_line(eta)
            dec, curv = errors(eta, f, d, f0, d0)
            ok = jnp.maximum(dec, curv) <= tol
            safe, value_safe, grad_safe = _where(dec <= tol, (eta, f, g), (s.safe, s.value_safe, s.grad_safe))
            to_high = (dec > 0) | ((f >= s.value) & (s.count > 0))  # [previous, eta]
            to_low = (d >= 0) & ~to_high  # [eta, previous]
            prev, new = (s.stepsize, s.value, s.slope), (eta, f, d)
            lo = _where(to_low, new, prev)
            hi = _where(to_low, prev, new)
            bracketed = to_high | to_low | ok
            done = ok | (at_max & ~bracketed)
            failed = (s.count + 1 >= max_linesearch_steps) & ~done
            return _Search(s.count + 1, eta, f, g, d, dec, curv, bracketed, done, failed, *lo, *hi, lo[0], lo[1],
                           safe, value_safe, grad_safe)

        def zoom(s):
            width = jnp.abs(s.high - s.low)
            left, right = jnp.minimum(s.low, s.high), jnp.maximum(s.low, s.high)
            cubic = cubic_minimizer(s.low, s.value_low, s.slope_low, s.high, s.value_high, s.third, s.value_third)
            quad = quadratic_minimizer(s.low, s.value_low, s.slope_low, s.high, s.value_high)
            use_cubic = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
            use_quad = ~use_cubic & (quad > left + 0.1 * width) & (quad < right - 0.1 * width)
            eta = jnp.where(use_cubic, cubic, jnp.where(use_quad, quad, (s.low + s.high) / 2))
            f, g, d = on_line(eta)
            dec, curv = errors(eta, f, d, f0, d0)
            done = jnp.maximum(dec, curv) <= tol
            better = (dec <= tol) & (f < s.value_safe)
            safe, value_safe, grad_safe = _where(better, (eta, f, g), (s.safe, s.value_safe, s.grad_safe))
            to_high = (dec > 0) | (f >= s.value_low)
            flip = (d * (s.high - s.low) >= 0) & ~to_high
            lo_old, hi_old, trial = (s.low, s.value_low, s.slope_low), (s.high, s.value_high, s.slope_high), (eta, f, d)
            hi = _where(to_high, trial, _where(flip, lo_old, hi_old))
            lo = _where(to_high, lo_old, trial)
            third, value_third = _where(to_high | flip, hi_old[:2], lo_old[:2])
            failed = ((s.count + 1 >= max_linesearch_steps) | ((width <= stepsize_precision) & (safe > 0))) & ~done
            return _Search(s.count + 1, eta, f, g, d, dec, curv, s.bracketed, done, failed, *lo, *hi, third,
                           value_third, safe, value_safe, grad_safe)

        def fall_back(s):
            """Out of steps: the best step with sufficient decrease, else the last (or 0's if not finite)."""
            if verbose:
                jax.debug.print(owner + " failed: step {e}, decrease error {d}, curvature error {c}",
                                e=s.stepsize, d=s.decrease_error, c=s.curvature_error)
            take = (s.safe > 0) | jnp.isinf(s.decrease_error)
            eta, f, g = _where(take, (s.safe, s.value_safe, s.grad_safe), (s.stepsize, s.value, s.grad))
            return s._replace(stepsize=eta, value=f, grad=g)

        def step(s):
            new = jax.lax.cond(s.bracketed, zoom, bracket, s)
            new = _cast_like(new, s)
            return _cast_like(jax.lax.cond(new.failed, fall_back, lambda x: x, new), s)

        guess = jnp.asarray(1.0, dtype) if initial_guess_strategy == "one" else state.learning_rate
        zero, inf = jnp.asarray(0.0, dtype), jnp.asarray(jnp.inf, dtype)
        start = _Search(jnp.asarray(0), zero, f0, grad, d0, inf, inf, jnp.asarray(False), jnp.asarray(False),
                        jnp.asarray(False), zero, f0, d0, zero, f0, d0, zero, f0, zero, f0, grad)
        s = jax.lax.while_loop(lambda s: ~(s.done | s.failed), step, start)
        info = ZoomLinesearchInfo(s.count, s.decrease_error, s.curvature_error)
        new_state = ScaleByZoomLinesearchState(s.value, s.grad, s.stepsize, info)
        return _scaled(s.stepsize, updates), _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------- backtracking (Armijo)

class BacktrackingLinesearchInfo(NamedTuple):
    num_linesearch_steps: jax.Array  # int: evaluations of value_fn in this search
    decrease_error: jax.Array  # > atol: no step met the sufficient decrease


class ScaleByBacktrackingLinesearchState(NamedTuple):  # optax's fields, value and grad first
    value: jax.Array  # f at the accepted step (inf before the first update)
    grad: Optional[optax.Updates]  # the gradient there (store_grad), else None
    learning_rate: jax.Array  # the step accepted at the last update
    info: BacktrackingLinesearchInfo


def scale_by_backtracking_linesearch(max_backtracking_steps: int, slope_rtol: float = 1e-4,
                                     decrease_factor: float = 0.8, increase_factor: float = 1.5,
                                     max_learning_rate: float = 1.0, atol: float = 0.0, rtol: float = 0.0,
                                     store_grad: bool = False,
                                     verbose: bool = False) -> optax.GradientTransformationExtraArgs:
    r"""The largest step :math:`\eta = \eta_0 \delta^i` along :math:`u` with sufficient decrease (Armijo).

    .. math::
        f(w + \eta u) \le (1 + \epsilon_r) f(w) + c\, \eta\, \nabla f(w)^\top u + \epsilon_a,

    with :math:`c` = ``slope_rtol``, :math:`\delta` = ``decrease_factor``,
    :math:`\epsilon_r, \epsilon_a` = ``rtol``, ``atol``; the first trial is
    :math:`\eta_0 = \min(\kappa\, \eta_{prev}, \eta_{max})` (``increase_factor``,
    ``max_learning_rate``; :math:`\eta_{prev} = 1` at the first update), and
    :math:`i = 0, 1, \dots, n` (``max_backtracking_steps``: at most :math:`n + 1` trials). When
    none decreases enough the last trial is taken, and a step of 0 when it is not finite.
    ``store_grad`` keeps the gradient at the accepted step (for ``value_and_grad_from_state``).

    .. warning::
        The same search as ``optax.scale_by_backtracking_linesearch`` (Armijo 1966; its
        increase of the first trial is Vaswani et al. 2019's). ``torch.optim.LBFGS`` has no
        backtracking search.

    Args:
        max_backtracking_steps: :math:`n \ge 0`.
        slope_rtol: :math:`c \in (0, 1)`.
        decrease_factor: :math:`\delta \in (0, 1)`.
        increase_factor: :math:`\kappa \ge 1`.
        max_learning_rate: :math:`\eta_{max} > 0`.
        atol: :math:`\epsilon_a \ge 0`.
        rtol: :math:`\epsilon_r \ge 0`.
        store_grad: keep the gradient at the accepted step.
        verbose: print the error when the search fails.

    References:
        Armijo, "Minimization of functions having Lipschitz continuous first partial
        derivatives", Pacific J. Math. 16, 1966; Nocedal & Wright, "Numerical Optimization",
        2006, Algorithm 3.1; Vaswani et al., "Painless Stochastic Gradient", NeurIPS 2019.
    """
    owner = "scale_by_backtracking_linesearch"
    check_range(owner, "max_backtracking_steps", max_backtracking_steps, 0)
    check_range(owner, "slope_rtol", slope_rtol, 0.0, 1.0, low_open=True, high_open=True)
    check_range(owner, "decrease_factor", decrease_factor, 0.0, 1.0, low_open=True, high_open=True)
    check_range(owner, "increase_factor", increase_factor, 1.0)
    check_range(owner, "max_learning_rate", max_learning_rate, 0.0, low_open=True)
    check_range(owner, "atol", atol, 0.0)
    check_range(owner, "rtol", rtol, 0.0)

    def init_fn(params):
        dtype = real_dtype(params)
        info = BacktrackingLinesearchInfo(jnp.asarray(0), jnp.asarray(jnp.inf, dtype))
        grad = jax.tree.map(jnp.zeros_like, params) if store_grad else None
        return ScaleByBacktrackingLinesearchState(jnp.asarray(jnp.inf, dtype), grad, jnp.asarray(1.0, dtype), info)

    def update_fn(updates, state, params=None, *, value, grad, value_fn, **extra):
        if params is None:
            raise ValueError(f"{owner}: update needs params, got params=None")
        kwargs = value_fn_kwargs(owner, value_fn, extra)
        f_at = lambda w: value_fn(w, **kwargs)  # noqa: E731
        dtype = state.value.dtype
        f0 = jnp.asarray(value, dtype)
        d0 = tree_dot(grad, updates).astype(dtype)

        def error(eta, f):
            e = f - (1 + rtol) * f0 - eta * slope_rtol * d0
            return jnp.where(jnp.isnan(e), jnp.inf, jnp.maximum(e, 0.0))

        def body(c):
            i, eta, _, _ = c
            eta = jnp.where(i > 0, decrease_factor * eta, eta)
            f = jnp.asarray(f_at(_moved(params, eta, updates)), dtype)
            return i + 1, eta, f, error(eta, f)

        first = jnp.minimum(increase_factor * state.learning_rate, max_learning_rate).astype(dtype)
        start = (jnp.asarray(0), first, f0, jnp.asarray(jnp.inf, dtype))
        i, eta, f, err = jax.lax.while_loop(lambda c: ~(c[3] <= atol) & (c[0] <= max_backtracking_steps), body, start)
        if verbose:
            jax.lax.cond(err > atol, lambda: jax.debug.print(owner + " failed: step {e}, decrease error {d}",
                                                             e=eta, d=err), lambda: None)
        eta = jnp.where(jnp.isinf(err), 0.0, eta).astype(dtype)
        new_grad = jax.grad(f_at)(_moved(params, eta, updates)) if store_grad else None
        new_state = ScaleByBacktrackingLinesearchState(f, new_grad, eta, BacktrackingLinesearchInfo(i, err))
        return _scaled(eta, updates), _cast_like(new_state, state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
