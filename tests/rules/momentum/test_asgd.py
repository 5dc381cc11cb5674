"""ASGD against a float64 transcription of torch.optim.ASGD's documented algorithm, and torch itself."""

import jax
import numpy as np
import optax
import pytest
from helpers import assert_close, random_grads, random_tree, run_params

import optimizers

STEPS = 24
T0 = 9.0  # averaging starts inside the run: mu_t < 1 from t = 11 on


def _reference(theta, grads, lr, lambd, alpha, t0, weight_decay):
    """Yields ``(theta_t, average_t)``: the step of Polyak-Juditsky ASGD as torch.optim.ASGD orders it."""
    theta, ax = np.asarray(theta, np.float64), np.zeros_like(theta)
    for t, g in enumerate(grads):  # t: updates done before this one
        eta = lr / (1 + lambd * lr * t) ** alpha
        mu = 1 / max(1.0, t - t0)
        g = g + weight_decay * theta
        theta = theta * (1 - lambd * eta) - eta * g
        ax = ax + mu * (theta - ax)
        yield theta, ax


def _run(tx, params, grads, dtype):
    """(params, the average) after each step."""
    return run_params(tx, grads, params, dtype, read=lambda p, s: (p, optimizers.asgd_averaged_params(s)))


HP = dict(learning_rate=0.05, lambd=0.3, alpha=0.75, t0=T0, weight_decay=0.02)


@pytest.mark.parametrize("weight_decay", [0.0, 0.02])
def test_matches_the_float64_reference(weight_decay):
    hp = {**HP, "weight_decay": weight_decay}
    grads = random_grads(STEPS, seed=3)
    theta0 = random_tree(np.random.default_rng(4))
    got = _run(optimizers.asgd(**hp), theta0, grads, np.float32)
    for i, (start, *seq) in enumerate(zip(jax.tree.leaves(theta0), *[jax.tree.leaves(g) for g in grads])):
        want = list(_reference(start, seq, hp["learning_rate"], hp["lambd"], hp["alpha"], T0, weight_decay))
        for (p, a), (wp, wa) in zip(got, want):
            assert_close(jax.tree.leaves(p)[i], wp)
            assert_close(jax.tree.leaves(a)[i], wa)
    # the average left the last iterate once t > t0 + 1
    last_p, last_a = got[-1]
    assert not np.allclose(jax.tree.leaves(last_p)[0], jax.tree.leaves(last_a)[0], rtol=1e-3)


def test_matches_torch_asgd_with_its_average():
    import torch

    torch.set_default_dtype(torch.float64)  # torch keeps eta and mu in the default dtype
    try:
        grads = random_grads(STEPS, seed=5)
        theta0 = random_tree(np.random.default_rng(6))
        flat, treedef = jax.tree.flatten(theta0)
        tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in flat]
        ref = torch.optim.ASGD(tensors, lr=HP["learning_rate"], lambd=HP["lambd"], alpha=HP["alpha"], t0=T0,
                               weight_decay=HP["weight_decay"])
        with jax.enable_x64(True):
            got = _run(optimizers.asgd(**HP), theta0, grads, np.float64)
        for g, (p, a) in zip(grads, got):
            for t, gl in zip(tensors, jax.tree.leaves(g)):
                t.grad = torch.tensor(np.asarray(gl, np.float64))
            ref.step()
            for t, pl, al in zip(tensors, jax.tree.leaves(p), jax.tree.leaves(a)):
                np.testing.assert_allclose(pl, t.detach().numpy(), rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(al, ref.state[t]["ax"].numpy(), rtol=1e-12, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_schedule_is_read_at_the_update_count():
    grads = random_grads(6, seed=7)
    theta0 = random_tree(np.random.default_rng(8))
    lr = lambda t: 0.05 * 0.5**t  # noqa: E731
    got = _run(optimizers.asgd(lr, lambd=0.3, t0=2.0), theta0, grads, np.float32)
    start, seq = jax.tree.leaves(theta0)[1], [jax.tree.leaves(g)[1] for g in grads]
    theta, ax = np.asarray(start), np.zeros_like(start)
    for t, (g, (p, a)) in enumerate(zip(seq, got)):
        eta = lr(t) / (1 + 0.3 * lr(t) * t) ** 0.75
        theta = theta * (1 - 0.3 * eta) - eta * g
        ax = ax + (theta - ax) / max(1.0, t - 2.0)
        assert_close(jax.tree.leaves(p)[1], theta)
        assert_close(jax.tree.leaves(a)[1], ax)


def test_needs_params_and_finds_its_state():
    tx = optimizers.asgd(0.1)
    params = {"w": np.ones(3, np.float32)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state)
    chained = optax.chain(optax.clip(1.0), tx)
    np.testing.assert_array_equal(optimizers.asgd_averaged_params(chained.init(params))["w"], np.zeros(3))
    with pytest.raises(ValueError, match="no asgd state"):
        optimizers.asgd_averaged_params(optimizers.sgd(0.1).init(params))


@pytest.mark.parametrize("name,value", [("lambd", -1e-4), ("alpha", -0.5), ("t0", -1.0), ("learning_rate", -0.1)])
def test_bad_values_raise_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        optimizers.asgd(**{name: value})
