"""The zoom and backtracking line searches against float64 transcriptions of the books' algorithms, and optax."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers

C1, C2 = 1e-4, 0.9


def _zoom_reference(phi, guess, max_steps=20, rho=2.0, precision=1e-5, margins=(0.2, 0.1)):
    """Nocedal & Wright Alg. 3.5/3.6 on ``phi(eta) -> (value, slope)``, interpolating as the docstring says.

    Returns ``(eta, evaluations)``.
    """
    f0, d0 = phi(0.0)
    dec = lambda e, f: f - f0 - C1 * e * d0 > 0  # noqa: E731  (fails the sufficient decrease)
    curv = lambda d: abs(d) > C2 * abs(d0)  # noqa: E731
    prev, f_prev, d_prev, eta, n = 0.0, f0, d0, guess, 0
    safe = (0.0, f0)
    while True:  # bracketing
        f, d = phi(eta)
        n += 1
        if not dec(eta, f):
            safe = (eta, f)
        if not dec(eta, f) and not curv(d):
            return eta, n
        if dec(eta, f) or (n > 1 and f >= f_prev):
            lo, hi = (prev, f_prev, d_prev), (eta, f, d)
            break
        if d >= 0:
            lo, hi = (eta, f, d), (prev, f_prev, d_prev)
            break
        if n >= max_steps:
            return (safe[0] if safe[0] > 0 else eta), n
        prev, f_prev, d_prev, eta = eta, f, d, rho * eta
    third = lo[:2]
    while True:  # zoom
        (a, fa, da), (b, fb, _) = lo, hi
        width, left, right = abs(b - a), min(a, b), max(a, b)
        c, fc = third
        db, dc = b - a, c - a
        rb, rc = fb - fa - da * db, fc - fa - da * dc
        den = (db * dc) ** 2 * (db - dc)
        A = (dc**2 * rb - db**2 * rc) / den if den else math.nan
        B = (-(dc**3) * rb + db**3 * rc) / den if den else math.nan
        rad = B * B - 3 * A * da
        cubic = a + (-B + math.sqrt(rad)) / (3 * A) if rad >= 0 and A != 0 and not math.isnan(A) else math.nan
        quad = a - da / (2 * rb / db**2)
        if left + margins[0] * width < cubic < right - margins[0] * width:
            eta = cubic
        elif left + margins[1] * width < quad < right - margins[1] * width:
            eta = quad
        else:
            eta = (a + b) / 2
        f, d = phi(eta)
        n += 1
        if not dec(eta, f) and not curv(d):
            return eta, n
        if not dec(eta, f) and f < safe[1]:
            safe = (eta, f)
        if n >= max_steps or (width <= precision and safe[0] > 0):
            return (safe[0] if safe[0] > 0 else eta), n
        old_lo, old_hi = lo, hi
        if dec(eta, f) or f >= fa:
            hi = (eta, f, d)
        else:
            if d * (old_hi[0] - a) >= 0:
                hi = old_lo
            lo = (eta, f, d)
        third = old_hi[:2] if (hi is not old_hi) else old_lo[:2]


def _search(tx, f, w, u, **kwargs):
    """One update of the line search ``tx`` along ``u`` from ``w`` (float64): the step and the evaluations."""
    with jax.enable_x64(True):
        w, u = jnp.asarray(w, jnp.float64), jnp.asarray(u, jnp.float64)
        v, g = jax.value_and_grad(f)(w)
        state = tx.init(w)
        out, state = jax.jit(lambda u, s: tx.update(u, s, w, value=v, grad=g, value_fn=f))(u, state)
        return float(state.learning_rate), int(state.info.num_linesearch_steps), np.asarray(out), state


def _phi(f, w, u):
    w, u = np.asarray(w, np.float64), np.asarray(u, np.float64)

    def phi(eta):
        with jax.enable_x64(True):
            v, g = jax.value_and_grad(f)(jnp.asarray(w + eta * u))
            return float(v), float(np.dot(np.asarray(g), u))

    return phi


def rosenbrock(w):
    return jnp.sum(100 * (w[1:] - w[:-1] ** 2) ** 2 + (1 - w[:-1]) ** 2)


def quartic(w):  # 1-D: phi(eta) has its minimum far beyond the first trial
    return jnp.sum((w - 3.0) ** 4 + 0.1 * w**2)


def wiggle(w):
    return jnp.sum(jnp.sin(3 * w) + 0.05 * (w - 2.0) ** 2)


def double_well(w):
    return jnp.sum((w - 3.0) ** 4 - 2 * (w - 3.0) ** 2 + 0.1 * w**2)


# (f, w, u): the first trial accepted; bracketing that grows the step; zooms in the interval, two of them
# where the cubic's 20% and the quadratic's 10% margins decide (found with the reference: other margins
# give other steps)
CASES = {
    "cubic-margin": (wiggle, [1.0], [12.38135593220339]),
    "quadratic-margin": (double_well, [0.0], [9.361016949152543]),
    "accepted": (lambda w: 0.5 * jnp.sum(w**2), [1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]),
    "grow": (quartic, [0.0], [0.05]),
    "zoom-1d": (quartic, [0.0], [40.0]),
    "zoom-nd": (rosenbrock, [-1.2, 1.0, 0.3], None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_zoom_is_the_book_algorithm(case):
    f, w, u = CASES[case]
    if u is None:
        with jax.enable_x64(True):
            u = -np.asarray(jax.grad(f)(jnp.asarray(w, jnp.float64)))
    want_eta, want_n = _zoom_reference(_phi(f, w, u), 1.0)
    eta, n, out, state = _search(optimizers.scale_by_zoom_linesearch(20, initial_guess_strategy="one"), f, w, u)
    assert n == want_n
    np.testing.assert_allclose(eta, want_eta, rtol=1e-10)
    np.testing.assert_allclose(out, want_eta * np.asarray(u), rtol=1e-10)
    with jax.enable_x64(True):  # the value and gradient kept are those at the accepted step
        v, g = jax.value_and_grad(f)(jnp.asarray(w, jnp.float64) + eta * jnp.asarray(u))
    np.testing.assert_allclose(float(state.value), float(v), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(state.grad), np.asarray(g), rtol=1e-12)
    branch = {"accepted": n == 1, "grow": n > 1 and eta > 1}
    assert branch.get(case, eta < 1), (n, eta)
    phi = _phi(f, w, u)
    if case == "cubic-margin":
        assert _zoom_reference(phi, 1.0, margins=(0.3, 0.1)) != (want_eta, want_n)
    if case == "quadratic-margin":
        assert _zoom_reference(phi, 1.0, margins=(0.2, 0.2)) != (want_eta, want_n)


@pytest.mark.parametrize("case", ["grow", "zoom-nd"])  # a growing bracket, and a zoom on n-D
@pytest.mark.parametrize("approx", [None, 1e-6])
def test_zoom_is_optax_with_the_same_keywords(case, approx):
    f, w, u = CASES[case]
    if u is None:
        u = -np.asarray(jax.grad(f)(jnp.asarray(w)))
    kw = dict(initial_guess_strategy="one", approx_dec_rtol=approx)
    ours = _search(optimizers.scale_by_zoom_linesearch(20, **kw), f, w, u)
    theirs = _search(optax.scale_by_zoom_linesearch(20, **kw), f, w, u)
    assert ours[1] == theirs[1]
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-10)


def _armijo_reference(f, w, u, first, delta=0.8, n_max=15):
    """Nocedal & Wright Alg. 3.1: shrink by delta until sufficient decrease (at most n_max + 1 trials)."""
    f0 = float(f(w))
    d0 = float(np.dot(np.asarray(jax.grad(f)(w)), u))
    eta = first
    for i in range(n_max + 1):
        if i > 0:
            eta *= delta
        if float(f(w + eta * u)) <= f0 + C1 * eta * d0:
            return eta, i + 1
    return eta, n_max + 1


@pytest.mark.parametrize("case", ["accepted", "zoom-1d", "zoom-nd"])
def test_backtracking_is_armijo_and_optax(case):
    f, w, u = CASES[case]
    with jax.enable_x64(True):
        w64 = jnp.asarray(w, jnp.float64)
        if u is None:
            u = -np.asarray(jax.grad(f)(w64))
        want = _armijo_reference(f, w64, jnp.asarray(u), first=1.0)
    ours = _search(optimizers.scale_by_backtracking_linesearch(15, store_grad=True), f, w, u)
    theirs = _search(optax.scale_by_backtracking_linesearch(15, store_grad=True), f, w, u)
    assert ours[1] == want[1] == theirs[1]
    np.testing.assert_allclose(ours[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ours[3].grad), np.asarray(theirs[3].grad), rtol=1e-12)
    assert (want[1] == 1) == (case == "accepted")


def test_backtracking_in_a_jitted_loop_is_optax_step_for_step():
    """SGD then backtracking, 20 steps: the next first trial grows by increase_factor, capped."""
    def run(search):
        tx = optax.chain(optax.sgd(1.0), search(10, store_grad=True, increase_factor=1.5, max_learning_rate=2.0))
        vg = optax.value_and_grad_from_state(rosenbrock)

        def body(c, _):
            w, s = c
            v, g = vg(w, state=s)
            u, s = tx.update(g, s, w, value=v, grad=g, value_fn=rosenbrock)
            return (optax.apply_updates(w, u), s), w

        w0 = jnp.asarray([-1.2, 1.0], jnp.float32)
        return np.asarray(jax.jit(lambda w: jax.lax.scan(body, (w, tx.init(w)), None, length=20)[1])(w0))

    np.testing.assert_allclose(run(optimizers.scale_by_backtracking_linesearch),
                               run(optax.scale_by_backtracking_linesearch), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["lbfgs", "scale_by_zoom_linesearch", "scale_by_backtracking_linesearch"])
def test_optax_defaults_are_accepted_and_step(name):
    """The signature suite skips these (their update needs value_fn): optax's defaults here, one step."""
    kwargs = {p: v.default for p, v in inspect.signature(getattr(optax, name)).parameters.items()
              if v.default is not inspect.Parameter.empty}
    kwargs.update({p: 15 for p in ("max_linesearch_steps", "max_backtracking_steps") if p in
                   inspect.signature(getattr(optax, name)).parameters})
    tx = getattr(optimizers, name)(**kwargs)
    if name != "lbfgs":
        tx = optax.chain(optax.sgd(1.0), tx)
    w, f = jnp.asarray([-1.2, 1.0]), CASES["accepted"][0]
    v, g = jax.value_and_grad(f)(w)
    u, _ = tx.update(g, tx.init(w), w, value=v, grad=g, value_fn=f)
    assert float(f(w + u)) < 0.5 * float(v)


def test_extra_arguments_reach_value_fn():
    def loss(w, x, y):
        return jnp.sum((x @ w - y) ** 2)

    x, y = jnp.asarray([[1.0, 2.0], [3.0, -1.0]]), jnp.asarray([1.0, 0.0])
    tx = optimizers.lbfgs()
    w = jnp.zeros(2)
    state = tx.init(w)
    for _ in range(6):
        v, g = jax.value_and_grad(loss)(w, x, y)
        u, state = tx.update(g, state, w, value=v, grad=g, value_fn=loss, x=x, y=y)
        w = optax.apply_updates(w, u)
    np.testing.assert_allclose(w, np.linalg.solve(np.asarray(x), np.asarray(y)), atol=1e-4)


@pytest.mark.parametrize("make,name,value", [
    (lambda **k: optimizers.scale_by_zoom_linesearch(10, **k), "curv_rtol", 0.0),
    (lambda **k: optimizers.scale_by_zoom_linesearch(10, **k), "initial_guess_strategy", "two"),
    (lambda **k: optimizers.scale_by_backtracking_linesearch(10, **k), "decrease_factor", 1.0),
])
def test_bad_values_raise_naming_the_argument(make, name, value):
    with pytest.raises(ValueError, match=name):
        make(**{name: value})
