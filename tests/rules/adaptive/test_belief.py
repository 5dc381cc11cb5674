import jax
import numpy as np
import optax
import pytest
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _belief_reference(grads, b1, b2, eps, eps_root=None, nesterov=False):
    """Algorithm 2 of Zhuang et al. (2020): one eps added to s_t at every step and to the denominator;
    ``eps_root`` replaces the first (optax's form); ``nesterov`` is optax's m_hat."""
    added = eps if eps_root is None else eps_root
    m = s = np.zeros_like(grads[0], np.float64)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + added
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        yield m_hat / (np.sqrt(s / (1 - b2**t)) + eps)


CASES = {  # (b1, b2, eps, eps_root, nesterov): both sides of each option
    "paper": (0.9, 0.999, 1e-16, None, False),
    "paper, large eps": (0.5, 0.9, 1e-3, None, False),
    "eps_root given": (0.9, 0.99, 1e-3, 1e-6, False),
    "nesterov": (0.8, 0.999, 1e-8, None, True),
    "no momentum": (0.0, 0.99, 1e-8, None, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scale_by_belief_matches_paper(case):
    b1, b2, eps, eps_root, nesterov = CASES[case]
    grads = random_grads(25, seed=11)
    got = run_updates(optimizers.scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov), grads)
    check_reference(got, grads, lambda gs: _belief_reference(gs, b1, b2, eps, eps_root, nesterov))


def test_adabelief_params_match_paper():
    grads, theta0 = random_grads(25, seed=12), random_tree(np.random.default_rng(13))
    lr = 0.01

    def reference(theta, gs):
        for u in _belief_reference(gs, 0.9, 0.999, 1e-8):
            theta = theta - lr * u
            yield theta

    check_reference(run_params(optimizers.adabelief(lr, eps=1e-8), grads, theta0), grads, reference, params=theta0)


def test_eps_root_is_eps_unless_given():
    """The paper's one eps (the default) differs from two separate constants; given, eps_root is used."""
    grads = random_grads(10, seed=14)
    paper = run_updates(optimizers.scale_by_belief(eps=1e-3), grads)
    same = run_updates(optimizers.scale_by_belief(eps=1e-3, eps_root=1e-3), grads)
    apart = run_updates(optimizers.scale_by_belief(eps=1e-3, eps_root=1e-16), grads)
    assert_trees_close(paper[-1], same[-1], rtol=1e-6)
    assert not np.allclose(jax.tree.leaves(paper[-1])[0], jax.tree.leaves(apart[-1])[0], rtol=1e-3)
    assert "eps_root" not in optimizers.scale_by_belief().init({"w": np.zeros(3, np.float32)}).hyperparams


# optax.adabelief takes eps_root=1e-16 whatever eps is: equal to ours when both are passed (or at the defaults).
OPTAX_PAIRS = {
    "defaults": (lambda: optimizers.adabelief(0.01), lambda: optax.adabelief(0.01)),
    "eps=eps_root": (lambda: optimizers.adabelief(0.01, 0.8, 0.99, 1e-4),
                     lambda: optax.adabelief(0.01, 0.8, 0.99, 1e-4, eps_root=1e-4)),
    "eps_root given": (lambda: optimizers.adabelief(0.01, eps=1e-3, eps_root=1e-6),
                       lambda: optax.adabelief(0.01, eps=1e-3, eps_root=1e-6)),
    "nesterov": (lambda: optimizers.adabelief(0.01, eps=1e-6, eps_root=1e-6, nesterov=True),
                 lambda: optax.adabelief(0.01, eps=1e-6, eps_root=1e-6, nesterov=True)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_matches_optax(name):
    ours, theirs = OPTAX_PAIRS[name]
    grads, theta0 = random_grads(20, seed=15), random_tree(np.random.default_rng(16))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)


def test_optax_default_eps_root_differs_when_eps_is_set():
    grads, theta0 = random_grads(20, seed=17), random_tree(np.random.default_rng(18))
    ours = run_params_f64(optimizers.adabelief(0.01, eps=1e-4), grads, theta0)[-1]
    theirs = run_params_f64(optax.adabelief(0.01, eps=1e-4), grads, theta0)[-1]
    assert not np.allclose(jax.tree.leaves(ours)[0], jax.tree.leaves(theirs)[0], rtol=1e-6)


@pytest.mark.parametrize("eps", [1e-16, 1e-4])
def test_matches_pytorch_optimizer(eps):
    """pytorch_optimizer.AdaBelief without rectification or weight decay is Algorithm 2 (eps in s_t too)."""
    from pytorch_optimizer import AdaBelief

    grads, theta0 = random_grads(30, seed=19), random_tree(np.random.default_rng(20))
    theirs = run_torch(lambda ps: AdaBelief(ps, lr=1e-2, betas=(0.8, 0.99), eps=eps, weight_decay=0.0,
                                            rectify=False, ams_bound=False, foreach=False), theta0, grads)
    ours = run_params_f64(optimizers.adabelief(1e-2, 0.8, 0.99, eps), grads, theta0)
    for g, w in zip(ours, theirs):
        assert_trees_close(g, w, rtol=1e-10)
