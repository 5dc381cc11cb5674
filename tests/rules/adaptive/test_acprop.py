import jax
import numpy as np
import optax
import optax.contrib
import pytest
from helpers import assert_trees_close, check_reference, random_grads, random_tree, run_params, run_params_f64, run_updates

import optimizers


def _acprop_reference(grads, b1, b2, eps, eps_root):
    """ACProp (Zhuang et al. 2021): the gradient over the previous step's bias-corrected centred second
    moment (1 at the first step); s centred on the previous m."""
    m = np.zeros_like(grads[0], np.float64)
    s = np.zeros_like(m)
    for t, g in enumerate(grads, start=1):
        root = 1.0 if t == 1 else np.sqrt(s / (1 - b2 ** (t - 1)))
        yield g / (root + eps)
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps_root
        m = b1 * m + (1 - b1) * g


CASES = {"defaults": (0.9, 0.999, 1e-16, 1e-16), "large eps, eps_root": (0.5, 0.9, 1e-2, 1e-3)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scale_by_acprop_matches_paper(case):
    b1, b2, eps, eps_root = CASES[case]
    grads = random_grads(22, seed=1)
    got = run_updates(optimizers.scale_by_acprop(b1, b2, eps, eps_root), grads)
    b1, b2 = float(np.float32(b1)), float(np.float32(b2))  # as the float32 state holds them
    check_reference(got, grads, lambda gs: _acprop_reference(gs, b1, b2, eps, eps_root))


def test_acprop_params_match_paper_with_decay():
    grads, theta0 = random_grads(21, seed=2), random_tree(np.random.default_rng(3))

    def reference(theta, gs):
        for u in _acprop_reference(gs, 0.9, float(np.float32(0.999)), 1e-16, 1e-16):
            theta = theta - 0.01 * (u + 0.1 * theta)
            yield theta

    check_reference(run_params(optimizers.acprop(0.01, weight_decay=0.1), grads, theta0), grads, reference,
                    params=theta0)


PAIRS = {
    "acprop": (lambda: optimizers.acprop(0.01, 0.8, 0.99, 1e-8, 1e-10, 1e-2),
               lambda: optax.contrib.acprop(0.01, 0.8, 0.99, 1e-8, 1e-10, 1e-2)),
    "scale_by_acprop": (lambda: optimizers.scale_by_acprop(0.5, 0.9, 1e-3, 0.0),
                        lambda: optax.contrib.scale_by_acprop(0.5, 0.9, 1e-3, 0.0)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_matches_optax_contrib(name):
    ours, theirs = PAIRS[name]
    grads, theta0 = random_grads(21, seed=4), random_tree(np.random.default_rng(5))
    for g, w in zip(run_params_f64(ours(), grads, theta0), run_params_f64(theirs(), grads, theta0)):
        assert_trees_close(g, w, rtol=1e-12)


@pytest.mark.parametrize("kwargs, name", [(dict(b1=1.0), "b1"), (dict(eps=0.0), "eps"),
                                          (dict(eps_root=-1.0), "eps_root"), (dict(weight_decay=-1.0), "weight_decay")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.acprop(0.1, **kwargs)
