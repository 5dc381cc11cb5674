import warnings

import numpy as np
import optax
import pytest
from helpers import assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64, run_updates

import optimizers


def _ogd_reference(grads, alpha, beta):
    """Optimistic direction (Daskalakis et al. 2018, Eq. (3); Mokhtari et al.'s alpha, beta): (a + b) g_t - b g_{t-1},
    with g_0 := g_1 (the first step is alpha g_1)."""
    prev = None
    for g in grads:
        prev = g if prev is None else prev
        yield (alpha + beta) * g - beta * prev
        prev = g


def _optimistic_adam_reference(theta, grads, lr, optimism, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 1 of Daskalakis et al. (2018): theta -= lr r_t + optimism (r_t - r_{t-1}), r = m_hat / (sqrt(v_hat) + eps),
    r_0 := r_1."""
    m = v = np.zeros_like(theta, np.float64)
    r_prev = None
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        r = m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps)
        r_prev = r if r_prev is None else r_prev
        theta = theta - lr * r - optimism * (r - r_prev)
        r_prev = r
        yield theta


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0), (1.0, 0.0)])
def test_scale_by_optimistic_gradient_matches_paper(alpha, beta):
    grads = random_grads(22, seed=1)
    got = run_updates(optimizers.scale_by_optimistic_gradient(alpha, beta), grads)
    check_reference(got, grads, lambda gs: _ogd_reference(gs, alpha, beta))


@pytest.mark.parametrize("lr,optimism", [(0.01, None), (0.02, 0.05)])
def test_optimistic_adam_matches_paper(lr, optimism):
    grads, theta0 = random_grads(22, seed=2), random_tree(np.random.default_rng(3))
    got = run_params(optimizers.optimistic_adam(lr, optimism), grads, theta0)
    o = lr if optimism is None else optimism
    check_reference(got, grads, lambda t, gs: _optimistic_adam_reference(t, gs, lr, o), params=theta0)


def test_optimistic_adam_v2_matches_paper():
    grads, theta0 = random_grads(22, seed=4), random_tree(np.random.default_rng(5))
    got = run_params(optimizers.optimistic_adam_v2(0.01, alpha=1.0, beta=2.0), grads, theta0)
    check_reference(got, grads, lambda t, gs: _optimistic_adam_reference(t, gs, 0.01, 0.02), params=theta0)


OPTAX_PAIRS = {
    "optimistic_gradient_descent": (lambda: optimizers.optimistic_gradient_descent(0.05, 0.7, 1.3),
                                    lambda: optax.optimistic_gradient_descent(0.05, 0.7, 1.3)),
    "optimistic_gradient_descent(schedule)": (
        lambda: optimizers.optimistic_gradient_descent(lambda t: 0.05 / (1 + t)),
        lambda: optax.optimistic_gradient_descent(lambda t: 0.05 / (1 + t))),
    "optimistic_adam": (lambda: optimizers.optimistic_adam(0.01, 0.03, 0.8, 0.99, 1e-6, 1e-8, nesterov=True),
                        lambda: optax.optimistic_adam(0.01, 0.03, 0.8, 0.99, 1e-6, 1e-8, nesterov=True)),
    "optimistic_adam(nesterov=False)": (lambda: optimizers.optimistic_adam(0.01),
                                        lambda: optax.optimistic_adam(0.01, nesterov=False)),
    "optimistic_adam_v2": (lambda: optimizers.optimistic_adam_v2(0.01, alpha=0.5, beta=1.5, nesterov=True),
                           lambda: optax.optimistic_adam_v2(0.01, alpha=0.5, beta=1.5)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_matches_optax(name):
    ours, theirs = OPTAX_PAIRS[name]
    grads, theta0 = random_grads(22, seed=6), random_tree(np.random.default_rng(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        want = run_params_f64(theirs(), grads, theta0)
    for g, w in zip(run_params_f64(ours(), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-12)


def test_default_differs_from_optax_nesterov():
    grads, theta0 = random_grads(10, seed=8), random_tree(np.random.default_rng(9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = run_params_f64(optax.optimistic_adam(0.01), grads, theta0)[-1]
    ours = run_params_f64(optimizers.optimistic_adam(0.01), grads, theta0)[-1]
    assert not np.allclose(ours["dense"]["w"], theirs["dense"]["w"], rtol=1e-6)


@pytest.mark.parametrize("build,name", [(lambda: optimizers.scale_by_optimistic_gradient(alpha=-1.0), "alpha"),
                                        (lambda: optimizers.optimistic_gradient_descent(0.1, beta=-1.0), "beta"),
                                        (lambda: optimizers.optimistic_adam(0.1, optimism=-1.0), "optimism"),
                                        (lambda: optimizers.optimistic_adam(-0.1), "learning_rate"),
                                        (lambda: optimizers.optimistic_adam_v2(0.1, b1=1.5), "b1")])
def test_bad_values_name_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()
