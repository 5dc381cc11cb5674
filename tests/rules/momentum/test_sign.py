import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64,
                     run_torch, run_updates)

import optimizers


def _signum_reference(grads, beta):
    """Bernstein et al. (2018): m_t = beta m_{t-1} + (1 - beta) g_t, u_t = sign(m_t); beta = 0 is signSGD."""
    m = np.zeros_like(grads[0], np.float64)
    for g in grads:
        m = beta * m + (1 - beta) * g
        yield np.sign(m)


def _with_zeros(seed):
    """Random gradients with exact zeros in them (sign(0) = 0) and alternating signs."""
    rng = np.random.default_rng(seed)
    grads = random_grads(20, seed=seed)
    return [jax.tree.map(lambda g: np.where(rng.random(np.shape(g)) < 0.2, 0.0, g), tree) for tree in grads]


def test_scale_by_sign_matches_paper():
    grads = _with_zeros(51)
    check_reference(run_updates(optimizers.scale_by_sign(), grads), grads, lambda gs: _signum_reference(gs, 0.0))
    assert any(np.any(np.asarray(x) == 0) for g in grads for x in jax.tree.leaves(g))


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_scale_by_signum_matches_paper(beta):
    grads = random_grads(25, seed=52)
    check_reference(run_updates(optimizers.scale_by_signum(beta), grads), grads,
                    lambda gs: _signum_reference(gs, beta), rtol=0)


@pytest.mark.parametrize("name", ["sign_sgd", "signum"])
def test_params_match_paper(name):
    grads, theta0 = random_grads(25, seed=53), random_tree(np.random.default_rng(54))
    beta, lr = (0.0, 0.01) if name == "sign_sgd" else (0.9, 0.01)
    tx = optimizers.sign_sgd(lr) if name == "sign_sgd" else optimizers.signum(lr, beta)

    def reference(theta, gs):
        for u in _signum_reference(gs, beta):
            theta = theta - lr * u
            yield theta

    check_reference(run_params(tx, grads, theta0), grads, reference, params=theta0)


def test_schedule_of_beta():
    grads = random_grads(20, seed=55)
    got = run_updates(optimizers.scale_by_signum(lambda t: 0.5 + 0.4 * (t % 2)), grads)

    def reference(gs):
        m = np.zeros_like(gs[0])
        for t, g in enumerate(gs):
            beta = 0.5 + 0.4 * (t % 2)
            m = beta * m + (1 - beta) * g
            yield np.sign(m)

    check_reference(got, grads, reference, rtol=0)


OPTAX_PAIRS = {
    "sign_sgd": (lambda: optimizers.sign_sgd(0.01), lambda: optax.sign_sgd(0.01)),
    "signum": (lambda: optimizers.signum(0.01, 0.8), lambda: optax.signum(0.01, 0.8)),
    "signum(accumulator_dtype)": (lambda: optimizers.signum(0.01, accumulator_dtype=jnp.float32),
                                  lambda: optax.signum(0.01, accumulator_dtype=jnp.float32)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_matches_optax(name):
    ours, theirs = OPTAX_PAIRS[name]
    grads, theta0 = random_grads(20, seed=56), random_tree(np.random.default_rng(57))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_matches_pytorch_optimizer(momentum):
    """pytorch_optimizer.SignSGD: momentum 0 is signSGD, momentum beta is Signum (its buffer is lerp'd)."""
    from pytorch_optimizer import SignSGD

    grads, theta0 = random_grads(30, seed=58), random_tree(np.random.default_rng(59))
    theirs = run_torch(lambda ps: SignSGD(ps, lr=1e-2, momentum=momentum, weight_decay=0.0, foreach=False),
                       theta0, grads)
    tx = optimizers.sign_sgd(1e-2) if momentum == 0 else optimizers.signum(1e-2, momentum)
    for g, w in zip(run_params_f64(tx, grads, theta0), theirs):
        assert_trees_close(g, w, rtol=1e-12)


@pytest.mark.parametrize("make", [lambda: optimizers.sign_sgd(0.1), lambda: optimizers.signum(0.1),
                                  optimizers.scale_by_sign], ids=["sign_sgd", "signum", "scale_by_sign"])
def test_complex_params_are_refused(make):
    with pytest.raises(TypeError, match="complex params are not supported"):
        make().init({"z": jnp.ones(3, jnp.complex64)})
