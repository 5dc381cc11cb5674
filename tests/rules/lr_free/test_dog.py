import math

import jax
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, random_grads, random_tree, run_params, run_params_f64

import optimizers


def _dog_reference(theta0, grads, init_step=("heuristic", 1e-6), eps=1e-8, lr=1.0, wd=None, decays=None):
    """DoG (Algorithm 1) over a list of leaves (the model), in float64, with optax's eps under the root and its
    three initial steps; ``wd`` adds wd * x to the gradient of the leaves ``decays`` marks. Yields params, eta."""
    x = [np.array(t, np.float64) for t in theta0]
    x0 = [t.copy() for t in x]
    tag, value = init_step
    norm = lambda leaves: math.sqrt(sum(float(np.sum(t * t)) for t in leaves))  # noqa: E731
    r_bar = {"heuristic": value * (1 + norm(x0)), "distance": value, "learning_rate": 0.0}[tag]
    big_g = 0.0
    for t, gs in enumerate(grads):
        g = [np.array(gi, np.float64) + (wd * xi if wd is not None and (decays is None or decays[i]) else 0.0)
             for i, (gi, xi) in enumerate(zip(gs, x))]
        r_bar = max(r_bar, norm([a - b for a, b in zip(x, x0)]))
        big_g += norm(g) ** 2
        eta = value if tag == "learning_rate" and t == 0 else r_bar / math.sqrt(big_g + eps)
        x = [xi - lr * eta * gi for xi, gi in zip(x, g)]
        yield [a.copy() for a in x], eta


CASES = {
    "defaults": {},
    "distance": dict(init_step=("distance", 0.05)),
    "learning rate": dict(init_step=("learning_rate", 0.01)),
    "heuristic 1e-4, decay, lr 0.5": dict(init_step=("heuristic", 1e-4), weight_decay=0.1, learning_rate=0.5),
    "eps 1e-2": dict(eps=1e-2, init_step=("distance", 1e-3)),
}


def _problem(seed, steps=20):
    """Gradients pulled toward a point: the distance travelled, so eta, grows."""
    rng = np.random.default_rng(seed)
    theta0 = random_tree(rng)
    grads = [jax.tree.map(lambda g, t: 0.3 * g + t + 1.0, gi, theta0) for gi in random_grads(steps, seed=seed + 1)]
    return theta0, grads


def _reference(theta0, grads, kw):
    names = dict(init_step="init_step", eps="eps", learning_rate="lr", weight_decay="wd")
    treedef = jax.tree.structure(theta0)
    return [(jax.tree.unflatten(treedef, w), eta) for w, eta in
            _dog_reference(jax.tree.leaves(theta0), [jax.tree.leaves(g) for g in grads],
                           **{names[k]: v for k, v in kw.items()})]


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_paper_transcription(case):
    kw = CASES[case]
    theta0, grads = _problem(3)
    want = _reference(theta0, grads, kw)
    for g, (w, _) in zip(run_params_f64(optimizers.dog(**kw), grads, theta0), want):
        assert_trees_close(g, w, rtol=1e-10)
    for g, (w, _) in zip(run_params(optimizers.dog(**kw), grads, theta0), want):
        assert_trees_close(g, w, rtol=2e-5)  # float32: the norms are sums of a few dozen squares
    assert want[-1][1] > 2 * want[0][1]  # eta grew (40x in most cases): the test sees the estimate move


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_optax(case):
    kw = CASES[case]
    theta0, grads = _problem(5)
    for g, w in zip(run_params_f64(optimizers.dog(**kw), grads, theta0),
                    run_params_f64(optax.contrib.dog(**kw), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-10)


def test_masked_decay_matches_optax_and_paper():
    theta0, grads = _problem(7)
    mask = {"dense": {"w": True, "b": False}, "blocks": [True, False], "scale": False}
    got = run_params_f64(optimizers.dog(weight_decay=0.2, mask=mask), grads, theta0)
    for g, w in zip(got, run_params_f64(optax.contrib.dog(weight_decay=0.2, mask=mask), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-10)
    treedef = jax.tree.structure(theta0)
    want = _dog_reference(jax.tree.leaves(theta0), [jax.tree.leaves(g) for g in grads], wd=0.2,
                          decays=jax.tree.leaves(mask))
    for g, (w, _) in zip(got, want):
        assert_trees_close(g, jax.tree.unflatten(treedef, w), rtol=1e-10)


def test_eta_is_readable():
    theta0, grads = _problem(9, steps=10)
    tx = optimizers.dog(init_step=("distance", 0.05))
    want = _reference(theta0, grads, dict(init_step=("distance", 0.05)))
    with jax.enable_x64(True):
        params = jax.tree.map(np.asarray, theta0)
        state, step = tx.init(params), jax.jit(tx.update)
        assert float(optimizers.get_hyperparams(state)["eta"]) == 0.0
        for g, (_, eta) in zip(grads, want):
            u, state = step(g, state, params)
            params = optax.apply_updates(params, u)
            np.testing.assert_allclose(float(optimizers.get_hyperparams(state)["eta"]), eta, rtol=1e-10)


@pytest.mark.parametrize("kwargs,name", [
    (dict(init_step=("bogus", 1e-6)), "init_step"), (dict(init_step=("distance", 0.0)), "init_step"),
    (dict(init_step=("heuristic", float("nan"))), "init_step"), (dict(init_step=1e-6), "init_step"),
    (dict(eps=-1.0), "eps"), (dict(learning_rate=-1.0), "learning_rate"), (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.dog(**kwargs)


def test_complex_params_are_refused():
    with pytest.raises(TypeError, match="dog: complex params are not supported"):
        optimizers.dog().init({"w": np.ones(3, np.complex64)})


def _dowg_reference(theta0, grads, r2=1e-4, eps=1e-4, lr=1.0, wd=None):
    """DoWG (Khaled, Mishchenko & Jin 2023, Algorithm 1) over a list of leaves, in float64, with optax's eps
    added to the root (0: the paper's). Yields params, eta."""
    x = [np.array(t, np.float64) for t in theta0]
    x0 = [t.copy() for t in x]
    sq = lambda leaves: sum(float(np.sum(t * t)) for t in leaves)  # noqa: E731
    v = 0.0
    for gs in grads:
        g = [np.array(gi, np.float64) + (wd * xi if wd is not None else 0.0) for gi, xi in zip(gs, x)]
        r2 = max(r2, sq([a - b for a, b in zip(x, x0)]))
        v += r2 * sq(g)
        eta = r2 / (math.sqrt(v) + eps)
        x = [xi - lr * eta * gi for xi, gi in zip(x, g)]
        yield [a.copy() for a in x], eta


DOWG_CASES = {
    "defaults": ({}, {}),
    "initial estimate": (dict(init_estim_sq_dist=1e-2), dict(r2=1e-2)),
    "paper (eps 0)": (dict(init_estim_sq_dist=1e-3, eps=0.0), dict(r2=1e-3, eps=0.0)),
    "decay, lr 0.5, eps": (dict(weight_decay=0.1, learning_rate=0.5, eps=1e-3), dict(wd=0.1, lr=0.5, r2=1e-3,
                                                                                     eps=1e-3)),
}


@pytest.mark.parametrize("case", sorted(DOWG_CASES))
def test_dowg_matches_paper_transcription_and_optax(case):
    ours, ref_kw = DOWG_CASES[case]
    theta0, grads = _problem(3, steps=25)
    treedef = jax.tree.structure(theta0)
    want = [(jax.tree.unflatten(treedef, w), eta) for w, eta in
            _dowg_reference(jax.tree.leaves(theta0), [jax.tree.leaves(g) for g in grads], **ref_kw)]
    got = run_params_f64(optimizers.dowg(**ours), grads, theta0)
    for g, (w, _) in zip(got, want):
        assert_trees_close(g, w, rtol=1e-10)
    for g, w in zip(got, run_params_f64(optax.contrib.dowg(**ours), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-10)
    for g, (w, _) in zip(run_params(optimizers.dowg(**ours), grads, theta0), want):
        assert_trees_close(g, w, rtol=2e-5)  # float32: the norms are sums of a few dozen squares
    assert want[-1][1] > 2 * want[0][1]  # eta grew: the test sees the estimate move


def test_dowg_masked_decay_matches_optax():
    theta0, grads = _problem(7)
    mask = {"dense": {"w": True, "b": False}, "blocks": [True, False], "scale": False}
    for g, w in zip(run_params_f64(optimizers.dowg(weight_decay=0.2, mask=mask), grads, theta0),
                    run_params_f64(optax.contrib.dowg(weight_decay=0.2, mask=mask), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-10)


def test_dowg_eta_is_readable():
    theta0, grads = _problem(9, steps=10)
    tx = optimizers.dowg(init_estim_sq_dist=1e-2)
    treedef = jax.tree.structure(theta0)
    want = _dowg_reference(jax.tree.leaves(theta0), [jax.tree.leaves(g) for g in grads], r2=1e-2)
    with jax.enable_x64(True):
        params = jax.tree.map(np.asarray, theta0)
        state, step = tx.init(params), jax.jit(tx.update)
        assert float(optimizers.get_hyperparams(state)["eta"]) == 0.0
        for g, (w, eta) in zip(grads, want):
            u, state = step(g, state, params)
            params = optax.apply_updates(params, u)
            np.testing.assert_allclose(float(optimizers.get_hyperparams(state)["eta"]), eta, rtol=1e-10)
        assert_trees_close(params, jax.tree.unflatten(treedef, w), rtol=1e-10)


@pytest.mark.parametrize("kwargs,name", [
    (dict(init_estim_sq_dist=0.0), "init_estim_sq_dist"), (dict(init_estim_sq_dist=-1.0), "init_estim_sq_dist"),
    (dict(eps=-1.0), "eps"), (dict(eps=0.0), "eps"), (dict(learning_rate=-1.0), "learning_rate"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_dowg_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.dowg(**kwargs)


def test_dowg_complex_params_are_refused():
    with pytest.raises(TypeError, match="dowg: complex params are not supported"):
        optimizers.dowg().init({"w": np.ones(3, np.complex64)})
