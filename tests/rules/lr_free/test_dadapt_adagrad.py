import logging
import math

import jax
import numpy as np
import pytest
from dadaptation import DAdaptAdaGrad
from helpers import (assert_trees_close, estimates_beside_torch, random_grads, random_tree, run_params, run_params_f64,
                     run_torch)

import optimizers


def _dadapt_adagrad_reference(theta0, grads, lr=1.0, momentum=0.0, wd=0.0, eps=1e-6, d0=1e-6, growth=math.inf):
    """D-Adapted AdaGrad over a list of leaves (the model), in float64, from Algorithm 3 as dadaptation 3.2
    states it (alpha starts at 1e-6, eps outside the root, L2 decay, momentum averaging toward z).

    Yields the params and the estimate d after each step.
    """
    x = [np.array(t, np.float64) for t in theta0]
    x0 = [t.copy() for t in x]
    alpha = [np.full_like(t, 1e-6) for t in x]
    s = [np.zeros_like(t) for t in x]
    d, gsq = d0, 0.0
    for gs in grads:
        g = [np.array(gi, np.float64) + wd * xi for gi, xi in zip(gs, x)]
        alpha = [ai + gi * gi for ai, gi in zip(alpha, g)]
        den = [np.sqrt(ai) + eps for ai in alpha]
        s = [si + d * lr * gi for si, gi in zip(s, g)]
        l1 = sum(float(np.sum(np.abs(si))) for si in s)
        if l1 == 0:
            yield [t.copy() for t in x], d
            continue
        gsq += (d * lr) ** 2 * sum(float(np.sum(gi * gi / di)) for gi, di in zip(g, den))
        d_hat = (sum(float(np.sum(si * si / di)) for si, di in zip(s, den)) - gsq) / l1
        d = max(d, min(d_hat, d * growth))
        x = [momentum * xi + (1 - momentum) * (x0i - si / di) for xi, x0i, si, di in zip(x, x0, s, den)]
        yield [t.copy() for t in x], d


# (our keywords, DAdaptAdaGrad's keywords): decay on with momentum on and off, growth, d0, eps, lr.
CASES = {
    "defaults": ({}, {}),
    "l2 decay": (dict(weight_decay=0.1), dict(weight_decay=0.1)),
    "l2 decay, momentum": (dict(weight_decay=0.1, momentum=0.9), dict(weight_decay=0.1, momentum=0.9)),
    "momentum, growth, d0": (dict(momentum=0.5, growth_rate=1.1, d0=1e-3), dict(momentum=0.5, growth_rate=1.1, d0=1e-3)),
    "lr, eps, decay": (dict(learning_rate=0.5, eps=1e-2, weight_decay=0.05, d0=1e-3),
                       dict(lr=0.5, eps=1e-2, weight_decay=0.05, d0=1e-3)),
}
NAMES = dict(learning_rate="lr", momentum="momentum", weight_decay="wd", eps="eps", d0="d0", growth_rate="growth")


def _problem(seed, steps=100):
    """Gradients with a pull back toward the start (so d grows) and a constant drift (so it keeps growing)."""
    rng = np.random.default_rng(seed)
    theta0 = random_tree(rng)
    grads = [jax.tree.map(lambda g, t: 0.5 * g + t + 1.0, gi, theta0) for gi in random_grads(steps, seed=seed + 1)]
    return theta0, grads


def _moved(run, theta0):
    return max(np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(run[-1]), jax.tree.leaves(theta0)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_dadaptation_100_steps(case):
    ours, theirs = CASES[case]
    theta0, grads = _problem(3)
    want = run_torch(lambda ps: DAdaptAdaGrad(ps, **theirs), theta0, grads)
    for g, w in zip(run_params_f64(optimizers.dadapt_adagrad(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-10)
    # float32: z = x0 - s / (sqrt(alpha) + eps) is a few roundings of sums of 100 terms each; the estimate's
    # numerator (sum s^2/den - G) loses a few digits to the difference, which moves d, not x, by ~1e-6.
    for g, w in zip(run_params(optimizers.dadapt_adagrad(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=5e-5)
    assert _moved(want, theta0) > 1e-3  # the estimate grew: d0 = 1e-6 alone moves ~1e-5 in 100 steps


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_float64_transcription(case):
    ours, _ = CASES[case]
    theta0, grads = _problem(5, steps=40)
    treedef = jax.tree.structure(theta0)
    want = [jax.tree.unflatten(treedef, w) for w, _ in
            _dadapt_adagrad_reference(jax.tree.leaves(theta0), [jax.tree.leaves(g) for g in grads],
                                      **{NAMES[k]: v for k, v in ours.items()})]
    for g, w in zip(run_params_f64(optimizers.dadapt_adagrad(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-10)


def test_estimate_is_readable_and_equals_dadaptations():
    theta0, grads = _problem(7, steps=15)
    tx = optimizers.dadapt_adagrad(momentum=0.9, weight_decay=0.01, growth_rate=2.0)
    tensors = [torch_tensor(x) for x in jax.tree.leaves(theta0)]
    ref = DAdaptAdaGrad(tensors, momentum=0.9, weight_decay=0.01, growth_rate=2.0)
    for d, want in estimates_beside_torch(tx, ref, tensors, theta0, grads):
        np.testing.assert_allclose(d, want, rtol=1e-10)
    assert float(d) > 5e-6  # grew from d0 = 1e-6 (AdaGrad's estimate grows slowly, as the authors note)


def torch_tensor(x):
    import torch

    return torch.tensor(np.asarray(x, np.float64), requires_grad=True)


def test_zero_gradients_skip_the_step_as_dadaptation_does():
    """||s||_1 = 0: no move, no estimate; then it is DAdaptAdaGrad fed the same zero gradients first."""
    theta0, grads = _problem(9, steps=8)
    grads = [jax.tree.map(np.zeros_like, grads[0])] * 2 + grads[2:]
    got = run_params_f64(optimizers.dadapt_adagrad(momentum=0.5), grads, theta0)
    assert_trees_close(got[0], theta0, rtol=0.0)
    assert_trees_close(got[1], theta0, rtol=0.0)
    want = run_torch(lambda ps: DAdaptAdaGrad(ps, momentum=0.5), theta0, grads)
    for g, w in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)


def test_zero_learning_rate_keeps_d_but_moves_to_the_new_z():
    """dadaptation updates d only where lr > 0; x still moves to x0 - s / (sqrt(alpha) + eps) (alpha grew)."""
    import torch

    theta0, grads = _problem(11, steps=8)
    lrs = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    got = run_params_f64(optimizers.dadapt_adagrad(lambda t: jax.numpy.asarray(lrs)[t]), grads, theta0)
    flat, treedef = jax.tree.flatten(theta0)
    tensors = [torch_tensor(x) for x in flat]
    ref = DAdaptAdaGrad(tensors)
    for step, (g, mine) in enumerate(zip(grads, got)):
        ref.param_groups[0]["lr"] = lrs[step]
        for t, gl in zip(tensors, jax.tree.leaves(g)):
            t.grad = torch.tensor(np.asarray(gl, np.float64))
        ref.step()
        assert_trees_close(mine, jax.tree.unflatten(treedef, [t.detach().numpy() for t in tensors]), rtol=1e-10)
    assert np.max(np.abs(jax.tree.leaves(got[3])[0] - jax.tree.leaves(got[2])[0])) > 0


def test_log_every_logs_the_estimate(caplog):
    theta0, grads = _problem(13, steps=4)
    with caplog.at_level(logging.INFO):
        run_params_f64(optimizers.dadapt_adagrad(log_every=2), grads, theta0)
        jax.effects_barrier()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("d_hat:")]
    assert len(lines) == 2  # k = 0 and k = 2


@pytest.mark.parametrize("kwargs,name", [
    (dict(d0=0.0), "d0"), (dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"), (dict(growth_rate=0.5), "growth_rate"),
    (dict(learning_rate=-1.0), "learning_rate"), (dict(eps=0.0), "eps"), (dict(log_every=-1), "log_every"),
    (dict(log_every=1.5), "log_every"),
])
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.dadapt_adagrad(**kwargs)
    with pytest.raises(ValueError, match=name):
        optimizers.scale_by_dadapt_adagrad(**kwargs)


def test_complex_params_are_refused():
    with pytest.raises(TypeError, match="dadapt_adagrad: complex params are not supported"):
        optimizers.dadapt_adagrad().init({"w": np.ones(3, np.complex64)})
