import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import random_grads, random_tree

import optimizers

WEIGHTS = random_grads(100, seed=11)  # a sequence of weight trees, float64


def _drive(tx, weights):
    """Feeds ``tx`` updates that move the params to each weight tree in turn (float64)."""
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, random_tree(np.random.default_rng(3)))
        state = tx.init(params)
        out = []
        for w in weights:
            w = jax.tree.map(jnp.asarray, w)
            updates = jax.tree.map(jnp.subtract, w, params)
            _, state = jax.jit(tx.update)(updates, state, params)
            params = w
            out.append(jax.tree.map(np.asarray, optimizers.averaged_params(state)))
    return out


def _torch_average(weights, take, **kw):
    leaves = [torch.nn.Parameter(torch.tensor(x)) for x in jax.tree.leaves(weights[0])]
    model = torch.nn.ParameterList(leaves)
    averaged = torch.optim.swa_utils.AveragedModel(model, **kw)
    out = []
    for k, w in enumerate(weights):
        with torch.no_grad():
            for p, x in zip(model, jax.tree.leaves(w)):
                p.copy_(torch.tensor(x))
        if take(k):
            averaged.update_parameters(model)
        out.append([p.detach().numpy().copy() for p in averaged.module])
    return out


@pytest.mark.parametrize("start,every", [(0, 1), (30, 1), (20, 7)])
def test_swa_matches_averaged_model(start, every):
    got = _drive(optimizers.swa(start, every), WEIGHTS)
    want = _torch_average(WEIGHTS, lambda k: k >= start and (k - start) % every == 0)
    for k in range(start, len(WEIGHTS)):
        for a, b in zip(jax.tree.leaves(got[k]), want[k]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("decay", [0.9, 0.99])
def test_weight_ema_matches_averaged_model(decay):
    got = _drive(optimizers.weight_ema(decay), WEIGHTS)
    want = _torch_average(WEIGHTS, lambda k: True, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))
    for g, w in zip(got, want):
        for a, b in zip(jax.tree.leaves(g), w):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_weight_ema_bias_correction_and_warmup_schedule():
    beta = lambda t: np.minimum(0.99, (1 + t) / (10 + t))  # noqa: E731
    got = _drive(optimizers.weight_ema(lambda t: jnp.minimum(0.99, (1.0 + t) / (10.0 + t)), bias_correction=True), WEIGHTS)
    for i, leaf in enumerate(jax.tree.leaves(WEIGHTS[0])):
        avg, prod = np.zeros_like(leaf), 1.0
        for k, w in enumerate(WEIGHTS):
            avg = beta(k) * avg + (1 - beta(k)) * jax.tree.leaves(w)[i]
            prod *= beta(k)
            np.testing.assert_allclose(jax.tree.leaves(got[k])[i], avg / (1 - prod), rtol=1e-12)


def test_average_survives_donated_params():
    tx = optax.chain(optimizers.sgd(0.1), optimizers.swa())
    params = {"w": jnp.ones(4)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        u, state = tx.update({"w": jnp.full(4, 2.0)}, state, params)
        return optax.apply_updates(params, u), state

    step = jax.jit(step, donate_argnums=(0,))
    for _ in range(3):
        params, state = step(params, state)
    np.testing.assert_allclose(optimizers.averaged_params(state)["w"], np.full(4, (0.8 + 0.6 + 0.4) / 3), rtol=1e-6)


def test_averaged_params_needs_an_averaging_state():
    with pytest.raises(ValueError, match="no swa or weight_ema"):
        optimizers.averaged_params(optimizers.adam(1e-3).init({"w": jnp.ones(2)}))


class _BnModel(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(2)(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


def test_recompute_batch_stats_gives_the_population_statistics():
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.normal(loc=3.0, scale=2.0, size=(16, 5)), jnp.float32) for _ in range(6)]
    model = _BnModel()
    variables = model.init(jax.random.key(0), batches[0], train=False)
    stats = optimizers.recompute_batch_stats(model.apply, variables["params"], variables["batch_stats"], batches,
                                             train=True)
    x = np.stack([np.asarray(b, np.float64) for b in batches])
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], x.reshape(-1, 5).mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], x.var(axis=1).mean(0), rtol=1e-4)
