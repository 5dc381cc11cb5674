import jax
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64, run_torch

import optimizers


def _madgrad_reference(theta, grads, lr, momentum, eps, weight_decay=0.0):
    """Algorithm 1 of Defazio & Jelassi (2021) as the authors' code runs it (lambda_k = (lr + eps) sqrt(k+1),
    dual averaging around the first params, cube root, momentum as an average of the iterates); ``lr`` a
    function of k; weight decay as an L2 term in the gradient. Yields the params."""
    x0 = theta.copy()
    s = np.zeros_like(theta, np.float64)
    nu = np.zeros_like(theta, np.float64)
    for k, g in enumerate(grads):
        g = g + weight_decay * theta
        lam = (lr(k) + eps) * np.sqrt(k + 1)
        s = s + lam * g
        nu = nu + lam * g * g
        z = x0 - s / (np.cbrt(nu) + eps)
        theta = momentum * theta + (1 - momentum) * z
        yield theta


CASES = {  # learning rate (of k), momentum, eps, weight_decay
    "defaults": (lambda k: 0.01, 0.9, 1e-6, 0.0),
    "no momentum, schedule": (lambda k: 0.02 / (1 + 0.1 * k), 0.0, 1e-6, 0.0),
    "weight decay, large eps": (lambda k: 0.01, 0.5, 0.1, 0.05),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_madgrad_matches_paper(case):
    lr, momentum, eps, wd = CASES[case]
    grads, theta0 = random_grads(22, seed=1), random_tree(np.random.default_rng(2))
    tx = optimizers.madgrad(lr if case.endswith("schedule") else lr(0), momentum, wd, eps)
    # the params move by small steps around theta: 5e-5 of their scale in float32 (x0 - s/rho is a difference)
    check_reference(run_params(tx, grads, theta0), grads,
                    lambda th, gs: _madgrad_reference(th, gs, lr, momentum, eps, wd), params=theta0, rtol=5e-5)


def test_zero_gradients_keep_the_params():
    """nu = 0 where g has always been 0: z = x0 there (the eps of the denominator), no NaN."""
    theta = {"w": np.array([1.0, -2.0], np.float32)}
    grads = [{"w": np.array([0.0, 0.5], np.float32)}] * 3
    got = run_params(optimizers.madgrad(0.1), grads, theta)[-1]["w"]
    assert got[0] == 1.0 and got[1] < -2.0


PAIRS = {
    "madgrad": (lambda: optimizers.madgrad(0.01, 0.8, 1e-2, 1e-6), lambda: optax.contrib.madgrad(0.01, 0.8, 1e-2, 1e-6)),
    "scale_by_madgrad(schedule)": (lambda: optimizers.scale_by_madgrad(optax.linear_schedule(0.02, 0.005, 15), 0.0),
                                   lambda: optax.contrib.scale_by_madgrad(optax.linear_schedule(0.02, 0.005, 15), 0.0)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_matches_optax_contrib(name):
    ours, theirs = PAIRS[name]
    grads, theta0 = random_grads(21, seed=3), random_tree(np.random.default_rng(4))
    # optax's sqrt(k + 1) of its int32 count is float32 even with x64 (6e-8 relative): 1e-6
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_matches_pytorch_optimizer(momentum):
    """pytorch_optimizer.MADGRAD follows the authors' code (momentum 0: x0 recomputed from the params)."""
    from pytorch_optimizer import MADGRAD

    grads, theta0 = random_grads(21, seed=5), random_tree(np.random.default_rng(6))
    theirs = run_torch(lambda ps: MADGRAD(ps, lr=1e-2, momentum=momentum, weight_decay=1e-2, eps=1e-6,
                                          foreach=False), theta0, grads)
    ours = run_params_f64(optimizers.madgrad(1e-2, momentum, 1e-2, 1e-6), grads, theta0)
    for g, w in zip(ours, theirs):
        assert_trees_close(g, w, rtol=1e-10)


def test_update_needs_params():
    tx = optimizers.scale_by_madgrad(0.1)
    params = {"w": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("kwargs, name", [(dict(momentum=1.0), "momentum"), (dict(eps=0.0), "eps"),
                                          (dict(learning_rate=-1.0), "learning_rate"),
                                          (dict(weight_decay=-1.0), "weight_decay")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.madgrad(**{"learning_rate": 0.1, **kwargs})
