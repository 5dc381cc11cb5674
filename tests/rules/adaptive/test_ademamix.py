import math

import jax
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64, run_torch, run_updates

import optimizers


def _f32(x):
    """A hyperparameter as the float32 state holds it (1 - b in float32 is then exact)."""
    return float(np.float32(x))


def _alpha_t(t, alpha, warmup):
    """Eq. (3) of Pagliardini et al. (2024), t from 1."""
    return min(t * alpha / warmup, alpha)


def _beta3_t(t, b3, b_start, warmup):
    """Eq. (3): linear in the half-life, from b_start to b3 over ``warmup`` steps, t from 1."""
    ls, le = math.log(b_start), math.log(b3)
    return min(math.exp(ls * le / ((1 - t / warmup) * le + (t / warmup) * ls)), b3)


def _ademamix_reference(grads, b1, b2, b3, alpha, eps, eps_root=0.0):
    """Algorithm 1: Adam's bias-corrected fast EMA plus alpha times the uncorrected slow EMA.
    ``b3`` and ``alpha`` are functions of the 1-based step."""
    m1 = np.zeros_like(grads[0], np.float64)
    m2 = np.zeros_like(m1)
    v = np.zeros_like(m1)
    for t, g in enumerate(grads, start=1):
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b3(t) * m2 + (1 - b3(t)) * g
        v = b2 * v + (1 - b2) * g * g
        yield (m1 / (1 - b1**t) + alpha(t) * m2) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)


def _simplified_reference(grads, b1, b2, alpha, eps, eps_root=0.0):
    """Simplified AdEMAMix (Morwani et al. 2025): an undamped momentum, alpha times the gradient added."""
    m = np.zeros_like(grads[0], np.float64)
    v = np.zeros_like(m)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + g
        v = b2 * v + (1 - b2) * g * g
        yield (alpha * g + m) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)


CASES = {  # b1, b2, b3, alpha, eps, eps_root, warmup (None: constants)
    "constants": (0.9, 0.999, 0.99, 5.0, 1e-8, 0.0, None),
    "warm-ups, eps_root": (0.8, 0.99, 0.999, 2.0, 1e-3, 1e-4, 12),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scale_by_ademamix_matches_paper(case):
    b1, b2, b3, alpha, eps, eps_root, warmup = map(lambda x: x if x is None else x, CASES[case])
    b1, b2 = _f32(b1), _f32(b2)
    if warmup is None:
        b3_t, alpha_t, kw = (lambda t: _f32(b3)), (lambda t: alpha), dict(b3=b3, alpha=alpha)
    else:  # both sides of the warm-ups' min: 22 steps, warm-up over 12
        b3_t = lambda t: _beta3_t(t, _f32(b3), b1, warmup)  # noqa: E731
        alpha_t = lambda t: _alpha_t(t, alpha, warmup)  # noqa: E731
        kw = dict(b3=optimizers.beta3_scheduler(b3, b1, warmup), alpha=optimizers.alpha_scheduler(alpha, warmup))
        assert b3_t(5) < b3_t(11) < _f32(b3) == b3_t(15) and alpha_t(5) < alpha == alpha_t(15)
    grads = random_grads(22, seed=1)
    got = run_updates(optimizers.scale_by_ademamix(b1, b2, eps=eps, eps_root=eps_root or None, **kw), grads)
    # the warmed-up b3 is computed in float32 (its 1 - b3 to about 1e-3 relative at b3 near 1)
    check_reference(got, grads, lambda gs: _ademamix_reference(gs, b1, b2, b3_t, alpha_t, eps, eps_root),
                    rtol=2e-5 if warmup is None else 2e-4)


def test_ademamix_params_match_paper_with_decay_and_mask():
    grads, theta0 = random_grads(21, seed=2), random_tree(np.random.default_rng(3))
    tx = optimizers.ademamix(0.01, b3=0.99, weight_decay=0.1, mask=jax.tree.map(lambda x: x.ndim > 0, theta0))
    decay = iter([0.1 if np.ndim(x) > 0 else 0.0 for x in jax.tree.leaves(theta0)])

    def reference(theta, gs):
        lam = next(decay)
        for u in _ademamix_reference(gs, _f32(0.9), _f32(0.999), lambda t: _f32(0.99), lambda t: 5.0, 1e-8):
            theta = theta - 0.01 * (u + lam * theta)
            yield theta

    check_reference(run_params(tx, grads, theta0), grads, reference, params=theta0)


@pytest.mark.parametrize("alpha, eps_root", [(0.0, 0.0), (2.0, 1e-4)])
def test_scale_by_simplified_ademamix_matches_paper(alpha, eps_root):
    grads = random_grads(22, seed=4)
    got = run_updates(optimizers.scale_by_simplified_ademamix(0.9, 0.95, alpha, 1e-8, eps_root or None), grads)
    check_reference(got, grads, lambda gs: _simplified_reference(gs, _f32(0.9), _f32(0.95), alpha, 1e-8, eps_root))


OPTAX_PAIRS = {
    "ademamix": (lambda: optimizers.ademamix(0.01, 0.8, 0.99, 0.995, 3.0, 1e-6, weight_decay=1e-2),
                 lambda: optax.contrib.ademamix(0.01, 0.8, 0.99, 0.995, 3.0, 1e-6, weight_decay=1e-2)),
    "ademamix(schedules, eps_root, mask)": (
        lambda: optimizers.ademamix(0.01, b3=optimizers.beta3_scheduler(0.999, 0.9, 10),
                                    alpha=optimizers.alpha_scheduler(4.0, 10), eps_root=1e-6, weight_decay=0.1,
                                    mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        lambda: optax.contrib.ademamix(0.01, b3=optimizers.beta3_scheduler(0.999, 0.9, 10),
                                       alpha=optimizers.alpha_scheduler(4.0, 10), eps_root=1e-6, weight_decay=0.1,
                                       mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))),
    "simplified_ademamix": (lambda: optimizers.simplified_ademamix(0.01, 0.9, 0.9, 2.0, 1e-6, 1e-8, 1e-2),
                            lambda: optax.contrib.simplified_ademamix(0.01, 0.9, 0.9, 2.0, 1e-6, 1e-8, 1e-2)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_matches_optax_contrib(name):
    ours, theirs = OPTAX_PAIRS[name]
    grads, theta0 = random_grads(21, seed=5), random_tree(np.random.default_rng(6))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)


@pytest.mark.parametrize("warmup", [None, 10])
def test_ademamix_matches_pytorch_optimizer(warmup):
    """pytorch_optimizer.AdEMAMix(t_alpha_beta3=T): the paper's warm-ups at the 1-based step."""
    from pytorch_optimizer import AdEMAMix

    grads, theta0 = random_grads(21, seed=7), random_tree(np.random.default_rng(8))
    theirs = run_torch(lambda ps: AdEMAMix(ps, lr=1e-2, betas=(0.8, 0.99, 0.999), alpha=3.0, t_alpha_beta3=warmup,
                                           eps=1e-8, weight_decay=1e-2, weight_decouple=True, foreach=False),
                       theta0, grads)
    kw = (dict(b3=0.999, alpha=3.0) if warmup is None else
          dict(b3=optimizers.beta3_scheduler(0.999, 0.8, warmup), alpha=optimizers.alpha_scheduler(3.0, warmup)))
    with jax.enable_x64(True):  # the schedulers in float64 too
        ours = run_params(optimizers.ademamix(1e-2, 0.8, 0.99, weight_decay=1e-2, **kw), grads, theta0, np.float64)
    for g, w in zip(ours, theirs):
        assert_trees_close(g, w, rtol=1e-6 if warmup else 1e-10)  # the schedulers count in float32


@pytest.mark.parametrize("build, name", [
    (lambda: optimizers.ademamix(0.1, alpha=-1.0), "alpha"), (lambda: optimizers.ademamix(0.1, b3=1.0), "b3"),
    (lambda: optimizers.ademamix(0.1, eps_root=-1.0), "eps_root"),
    (lambda: optimizers.simplified_ademamix(0.1, alpha=float("nan")), "alpha"),
    (lambda: optimizers.alpha_scheduler(1.0, 0), "warmup"), (lambda: optimizers.alpha_scheduler(-1.0, 5), "alpha"),
    (lambda: optimizers.beta3_scheduler(1.0, 0.9, 5), "b3"), (lambda: optimizers.beta3_scheduler(0.99, 0.0, 5), "b_start"),
    (lambda: optimizers.beta3_scheduler(0.99, 0.9, -5), "warmup")])
def test_bad_arguments_are_named(build, name):
    with pytest.raises(ValueError, match=name):
        build()
