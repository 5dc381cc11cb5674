import jax
import numpy as np
import optax
import optax.contrib
import pytest
import schedulefree
import torch
from helpers import assert_close, assert_trees_close, random_grads, random_tree

import optimizers


def _run(tx, grads, theta0, dtype=np.float64, eval_params=optimizers.schedule_free_eval_params):
    """(y_t, x_t) after each step, as float64 NumPy trees; float64 runs under ``jax_enable_x64``."""

    def go():
        cast = lambda t: jax.tree.map(lambda a: np.asarray(a, dtype), t)  # noqa: E731
        params = cast(theta0)
        state = tx.init(params)

        @jax.jit
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
            return p, s, eval_params(s, p)

        out = []
        for g in grads:
            params, state, x = step(params, state, cast(g))
            out.append(jax.tree.map(lambda a: np.asarray(a, np.float64), (params, x)))
        return out, state

    if dtype == np.float64:
        with jax.enable_x64(True):
            return go()
    return go()


def _run_schedulefree(make, theta0, grads):
    """(y_t, x_t) of a ``schedulefree`` torch optimizer in float64 (``x`` read through its ``eval()``)."""
    flat, treedef = jax.tree.flatten(theta0)
    tensors = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in flat]
    opt = make(tensors)
    opt.train()
    out = []
    for g in grads:
        for t, gl in zip(tensors, jax.tree.leaves(g)):
            t.grad = torch.tensor(np.asarray(gl, np.float64))
        opt.step()
        y = [t.detach().numpy().copy() for t in tensors]
        opt.eval()
        x = [t.detach().numpy().copy() for t in tensors]
        opt.train()
        out.append((jax.tree.unflatten(treedef, y), jax.tree.unflatten(treedef, x)))
    return out


# Warm-up 5 steps of 100 (the step-0 value and the end of the warm-up), weight decay, r and
# weight_lr_power off their defaults, b1 and b2 off theirs.
ADAMW = dict(lr=0.05, b1=0.8, b2=0.95, eps=1e-6, wd=0.1, warmup=5, r=0.5, p=1.5)
SGD = dict(lr=0.2, b1=0.7, wd=0.05, warmup=4, r=1.0, p=3.0)


def _ours(name, c):
    if name == "adamw":
        return optimizers.schedule_free_adamw(c["lr"], c["warmup"], c["b1"], c["b2"], c["eps"], c["wd"], c["p"],
                                              r=c["r"])
    return optimizers.schedule_free_sgd(c["lr"], c["warmup"], c["b1"], c["wd"], c["p"], r=c["r"])


def _theirs(name, c, cls):
    if name == "adamw":
        return lambda ps: cls(ps, lr=c["lr"], betas=(c["b1"], c["b2"]), eps=c["eps"], weight_decay=c["wd"],
                              warmup_steps=c["warmup"], r=c["r"], weight_lr_power=c["p"])
    return lambda ps: cls(ps, lr=c["lr"], momentum=c["b1"], weight_decay=c["wd"], warmup_steps=c["warmup"],
                          r=c["r"], weight_lr_power=c["p"])


CASES = {
    "adamw": ("adamw", ADAMW, schedulefree.AdamWScheduleFree),
    "adamw-reference": ("adamw", ADAMW, schedulefree.AdamWScheduleFreeReference),
    "sgd": ("sgd", SGD, schedulefree.SGDScheduleFree),
    "sgd-reference": ("sgd", SGD, schedulefree.SGDScheduleFreeReference),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_schedulefree_in_float64(case):
    name, c, cls = CASES[case]
    grads, theta0 = random_grads(100, seed=1), random_tree(np.random.default_rng(2))
    got, _ = _run(_ours(name, c), grads, theta0)
    want = _run_schedulefree(_theirs(name, c, cls), theta0, grads)
    for (gy, gx), (wy, wx) in zip(got, want, strict=True):
        assert_trees_close(gy, wy, rtol=1e-10)  # float64 on both sides: rounding only
        assert_trees_close(gx, wx, rtol=1e-10)


def test_adamw_matches_schedulefree_in_float32():
    grads, theta0 = random_grads(100, seed=3), random_tree(np.random.default_rng(4))
    got, _ = _run(_ours("adamw", ADAMW), grads, theta0, dtype=np.float32)
    want = _run_schedulefree(_theirs("adamw", ADAMW, schedulefree.AdamWScheduleFree), theta0, grads)
    for (gy, gx), (wy, wx) in zip(got, want, strict=True):
        assert_trees_close(gy, wy, rtol=2e-5)
        # x = y + (1 - 1/b1)(z - y) amplifies y's and z's float32 rounding by 1/b1 - 1 = 0.25.
        assert_trees_close(gx, wx, rtol=2e-5)


def _algorithm1(theta, grads, lr, b1, b2, eps, wd, warmup, r, p, adam):
    """The paper's Algorithm 1 (x, y, z kept explicitly), AdamW's or SGD's z-step, float64, one leaf."""
    x = y = z = np.asarray(theta, np.float64)
    v = np.zeros_like(x)
    lr_max, weight_sum = -1.0, 0.0
    for t, g in enumerate(grads):
        lr_t = lr * min((t + 1) / warmup, 1.0) if warmup else lr
        if adam:
            v = b2 * v + (1 - b2) * g**2
            d = g / (np.sqrt(v / (1 - b2 ** (t + 1))) + eps)
        else:
            d = g
        z = z - lr_t * (d + wd * y)
        lr_max = max(lr_max, lr_t)
        w = (t + 1) ** r * lr_max**p
        weight_sum += w
        c = w / weight_sum if weight_sum > 0 else 0.0
        x = (1 - c) * x + c * z
        y = (1 - b1) * z + b1 * x
        yield y, x


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_matches_algorithm_1(name):
    c = ADAMW if name == "adamw" else SGD
    grads, theta0 = random_grads(15, seed=5), random_tree(np.random.default_rng(6))
    got, _ = _run(_ours(name, c), grads, theta0, dtype=np.float32)
    seqs = list(zip(*[jax.tree.leaves(g) for g in grads]))
    for i, (seq, start) in enumerate(zip(seqs, jax.tree.leaves(theta0))):
        want = _algorithm1(start, seq, c["lr"], c["b1"], c.get("b2", 0.0), c.get("eps", 0.0), c["wd"],
                           c["warmup"], c["r"], c["p"], adam=name == "adamw")
        for step, (wy, wx) in enumerate(want):
            assert_close(jax.tree.leaves(got[step][0])[i], wy, 2e-5)
            assert_close(jax.tree.leaves(got[step][1])[i], wx, 2e-5)


def test_averaging_quantities_are_readable():
    grads, theta0 = random_grads(3, seed=7), random_tree(np.random.default_rng(8))
    lr, warmup, p = 0.1, 2, 2.0
    _, state = _run(optimizers.schedule_free_sgd(lr, warmup, weight_lr_power=p), grads, theta0)
    hp = optimizers.get_hyperparams(state)
    weights = [(lr * min((t + 1) / warmup, 1)) ** p for t in range(3)]  # lr_max = lr_t while it grows
    np.testing.assert_allclose(float(hp["weight_sum"]), sum(weights), rtol=1e-12)
    np.testing.assert_allclose(float(hp["c"]), weights[-1] / sum(weights), rtol=1e-12)
    np.testing.assert_allclose(float(hp["lr_max"]), lr, rtol=1e-12)


def test_optax_warmup_skips_the_step_0_value():
    # optax.contrib moves z by 0 at the first update of a warm-up: its first y differs entirely.
    grads, theta0 = random_grads(30, seed=9), random_tree(np.random.default_rng(10))
    ours, _ = _run(optimizers.schedule_free_adamw(0.05, 10, weight_decay=0.01), grads, theta0)
    theirs, _ = _run(optax.contrib.schedule_free_adamw(0.05, 10, weight_decay=0.01), grads, theta0,
                     eval_params=optax.contrib.schedule_free_eval_params)
    first = [np.max(np.abs(a - t0)) for a, t0 in zip(jax.tree.leaves(ours[0][0]), jax.tree.leaves(theta0))]
    first_optax = [np.max(np.abs(a - t0)) for a, t0 in zip(jax.tree.leaves(theirs[0][0]), jax.tree.leaves(theta0))]
    assert min(first) > 1e-4 and max(first_optax) < 1e-12
    assert not np.allclose(jax.tree.leaves(ours[-1][0])[0], jax.tree.leaves(theirs[-1][0])[0], rtol=1e-3)


def test_agrees_with_optax_without_warmup_or_r():
    grads, theta0 = random_grads(20, seed=11), random_tree(np.random.default_rng(12))
    ours, _ = _run(optimizers.schedule_free_adamw(0.05, None, 0.8, weight_decay=0.01), grads, theta0)
    theirs, _ = _run(optax.contrib.schedule_free_adamw(0.05, None, 0.8, weight_decay=0.01), grads, theta0,
                     eval_params=optax.contrib.schedule_free_eval_params)
    for (gy, gx), (wy, wx) in zip(ours, theirs):
        assert_trees_close(gy, wy, rtol=1e-10)
        assert_trees_close(gx, wx, rtol=1e-10)


def test_wrapper_around_a_base_optimizer_is_the_sgd_alias():
    grads, theta0 = random_grads(8, seed=13), random_tree(np.random.default_rng(14))
    lr = 0.3
    wrapped = optimizers.schedule_free(optimizers.sgd(lr), lr, b1=0.85, weight_lr_power=1.0, r=0.25)
    alias = optimizers.schedule_free_sgd(lr, b1=0.85, weight_lr_power=1.0, r=0.25)
    for a, b in zip(_run(wrapped, grads, theta0)[0], _run(alias, grads, theta0)[0]):
        assert_trees_close(a, b, rtol=1e-12)


@pytest.mark.parametrize("kwargs,name", [
    (dict(b1=0.0), "b1"), (dict(b1=1.0), "b1"), (dict(weight_lr_power=-1.0), "weight_lr_power"),
    (dict(r=-0.5), "r"), (dict(warmup_steps=-1), "warmup_steps"), (dict(learning_rate=-1.0), "learning_rate"),
])
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimizers.schedule_free_adamw(**kwargs)


def test_eval_params_needs_its_state():
    with pytest.raises(ValueError, match="ScheduleFreeState"):
        optimizers.schedule_free_eval_params(optax.sgd(0.1).init({"w": np.zeros(2)}), {"w": np.zeros(2)})


def test_complex_params_are_refused():
    with pytest.raises(TypeError, match="complex"):
        optimizers.schedule_free_adamw(0.1).init({"w": np.zeros(2, np.complex64)})


def test_eval_params_through_a_flax_nnx_optimizer():
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    tx = optimizers.schedule_free_sgd(0.1, b1=0.75)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    y0 = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    grads = jax.tree.map(np.ones_like, y0)
    optimizer.update(model, grads)
    y1 = nnx.state(model, nnx.Param)
    x1 = optimizers.schedule_free_eval_params(optimizer.opt_state, y1)
    # First update, no warm-up: c_1 = 1, so x_1 = z_1 = y_0 - 0.1 g; y_1 = z_1 as well.
    for a, b in zip(jax.tree.leaves(x1), jax.tree.leaves(y0)):
        np.testing.assert_allclose(a, b - 0.1, rtol=1e-6)
    optimizer.update(model, grads)
    x2 = optimizers.schedule_free_eval_params(optimizer.opt_state, nnx.state(model, nnx.Param))
    # Second: z_2 = y_0 - 0.2 g, c_2 = 1/2, x_2 = (x_1 + z_2)/2 = y_0 - 0.15 g.
    for a, b in zip(jax.tree.leaves(x2), jax.tree.leaves(y0)):
        np.testing.assert_allclose(a, b - 0.15, rtol=1e-6, atol=1e-6)


OPTAX_FORM = {
    "adamw": (lambda f: optimizers.schedule_free_adamw(0.05, 7, 0.8, 0.95, 1e-6, 0.1, 1.5, form=f),
              lambda: optax.contrib.schedule_free_adamw(0.05, 7, 0.8, 0.95, 1e-6, 0.1, 1.5)),
    "sgd": (lambda f: optimizers.schedule_free_sgd(0.2, 4, 0.7, 0.05, 3.0, form=f),
            lambda: optax.contrib.schedule_free_sgd(0.2, 4, 0.7, 0.05, 3.0)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_FORM))
def test_optax_form_matches_optax_contrib(name):
    ours, theirs = OPTAX_FORM[name]
    grads, theta0 = random_grads(30, seed=15), random_tree(np.random.default_rng(16))
    got, _ = _run(ours("optax"), grads, theta0)
    want, _ = _run(theirs(), grads, theta0, eval_params=optax.contrib.schedule_free_eval_params)
    # optax evaluates its warm-up in float32 even under x64 (int32 count / int): its learning
    # rates carry ~1e-7 relative rounding (3e-6 of a small scalar leaf after 30 steps), so 1e-5
    # here: the two forms differ by whole percents over these steps.
    for (gy, gx), (wy, wx) in zip(got, want, strict=True):
        assert_trees_close(gy, wy, rtol=1e-5)
        assert_trees_close(gx, wx, rtol=1e-5)
    reference, _ = _run(ours("reference"), grads, theta0)  # the documented difference: the warm-up's first step
    assert not np.allclose(jax.tree.leaves(reference[0][0])[0], jax.tree.leaves(got[0][0])[0], rtol=1e-3)


def test_optax_form_has_no_r():
    with pytest.raises(ValueError, match="r must be 0"):
        optimizers.schedule_free_sgd(0.1, form="optax", r=1.0)
