import jax
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, check_reference, random_tree, run_params, run_params_f64, run_torch

import optimizers


def _fromage_reference(theta, grads, lr, min_norm=None, form="paper", ratios=None):
    """Algorithm 1 of Bernstein et al. (2020) per leaf: theta <- (theta - lr |theta|/|g| g) / sqrt(1 + lr^2);
    the ratio is 1 where a norm is zero (the authors' code), or optax's clip of both norms by min_norm."""
    theta = np.asarray(theta, np.float64)
    if form == "optax" and min_norm is None:
        min_norm = 1e-6  # optax's default
    for g in grads:
        p_norm, g_norm = np.linalg.norm(theta), np.linalg.norm(g)
        if form == "paper" and g_norm == 0:  # no gradient (PyTorch's grad=None): the layer is skipped
            yield theta
            continue
        zero = p_norm == 0 or g_norm == 0
        if min_norm is not None:
            p_norm, g_norm = max(p_norm, min_norm), max(g_norm, min_norm)
        if form == "optax":
            zero = p_norm == 0 or g_norm == 0
        ratio = 1.0 if zero else p_norm / g_norm
        if ratios is not None:
            ratios.append(ratio)
        theta = (theta - lr * ratio * g) / np.sqrt(1 + lr**2)
        yield theta


def _problem(seed, zero_leaf=True, zero_grads=True):
    rng = np.random.default_rng(seed)
    grads = [random_tree(rng) for _ in range(24)]
    theta0 = random_tree(rng)
    if zero_leaf:  # a zero-initialised bias: ratio 1 in the paper form
        theta0["dense"]["b"] = np.zeros(3)
    for g in grads[5:8] if zero_grads else []:  # a leaf without gradient for three steps
        g["blocks"][1] = np.zeros(5)
    return grads, theta0


@pytest.mark.parametrize("lr,min_norm,form", [(0.1, None, "paper"), (0.3, 1e-6, "paper"), (0.1, None, "optax"),
                                              (0.1, 0.0, "optax"),
                                              (0.05, 0.5, "optax")])
def test_fromage_matches_paper(lr, min_norm, form):
    grads, theta0 = _problem(1)
    got = run_params(optimizers.fromage(lr, min_norm, form=form), grads, theta0)
    check_reference(got, grads, lambda t, gs: _fromage_reference(t, gs, lr, min_norm, form), params=theta0,
                    rtol=5e-5)
    ratios = []
    for t, seq in zip(jax.tree.leaves(theta0), zip(*[jax.tree.leaves(g) for g in grads])):
        list(_fromage_reference(t, list(seq), lr, min_norm, form, ratios))
    if form == "optax" and min_norm != 0.0:  # optax's clip: no zero norm is left, no ratio of one
        assert 1.0 not in ratios
    else:
        assert 1.0 in ratios and any(r != 1.0 for r in ratios)  # both sides of the zero-norm branch


def test_paper_form_moves_a_zero_bias_and_optax_does_not():
    grads, theta0 = _problem(2)
    paper = run_params(optimizers.fromage(0.1), grads[:1], theta0)[0]["dense"]["b"]
    theirs = run_params(optimizers.fromage(0.1, form="optax"), grads[:1], theta0)[0]["dense"]["b"]
    np.testing.assert_allclose(paper, -0.1 * grads[0]["dense"]["b"] / np.sqrt(1.01), rtol=1e-5)
    assert np.max(np.abs(theirs)) < 1e-6


@pytest.mark.parametrize("lr", [0.1, lambda t: 0.1 / (1 + t)])
def test_optax_form_matches_optax(lr):
    grads, theta0 = _problem(3)
    ours = run_params_f64(optimizers.fromage(lr, 1e-6, form="optax"), grads, theta0)
    theirs = run_params_f64(optax.fromage(lr, 1e-6), grads, theta0)
    for a, b in zip(ours, theirs):
        assert_trees_close(a, b, rtol=1e-12)


def test_paper_form_matches_pytorch_optimizer():
    from pytorch_optimizer import Fromage

    grads, theta0 = _problem(4, zero_grads=False)  # torch shrinks a zero gradient's layer (grad=None skips it)
    theirs = run_torch(lambda ps: Fromage(ps, lr=0.1, foreach=False), theta0, grads)
    ours = run_params_f64(optimizers.fromage(0.1), grads, theta0)
    for a, b in zip(ours, theirs):
        assert_trees_close(a, b, rtol=1e-10)


def test_a_layer_without_gradient_is_not_shrunk_unless_optax_form():
    theta0 = {"w": np.ones(3), "v": np.ones(2)}
    grads = [{"w": np.ones(3), "v": np.zeros(2)}]
    paper = run_params(optimizers.fromage(0.5), grads, theta0)[0]
    theirs = run_params(optimizers.fromage(0.5, form="optax"), grads, theta0)[0]
    np.testing.assert_array_equal(paper["v"], 1.0)
    np.testing.assert_allclose(theirs["v"], 1 / np.sqrt(1.25), rtol=1e-6)


def test_layer_axes_give_one_ratio_per_layer():
    rng = np.random.default_rng(5)
    theta0, grads = {"w": rng.normal(size=(3, 4, 2))}, [{"w": rng.normal(size=(3, 4, 2))} for _ in range(20)]
    got = run_params(optimizers.fromage(0.1, layer_axes=1), grads, theta0)
    for k in range(3):
        want = list(_fromage_reference(theta0["w"][k], [g["w"][k] for g in grads], 0.1))
        for step, w in enumerate(want):
            np.testing.assert_allclose(got[step]["w"][k], w, rtol=5e-5, atol=5e-5 * np.max(np.abs(w)))


@pytest.mark.parametrize("kwargs,name", [(dict(learning_rate=-0.1), "learning_rate"),
                                         (dict(learning_rate=0.1, min_norm=-1.0), "min_norm"),
                                         (dict(learning_rate=0.1, form="torch"), "form")])
def test_bad_values_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.fromage(**kwargs)


def test_needs_params():
    tx = optimizers.fromage(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": np.ones(2, np.float32)}, tx.init({"w": np.ones(2, np.float32)}))
