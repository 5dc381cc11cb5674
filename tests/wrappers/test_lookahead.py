import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_grads, random_tree

import optimizers


@pytest.mark.parametrize("k,alpha,reset", [(5, 0.5, False), (3, 0.8, True), (1, 0.3, False)])
def test_matches_optax_lookahead(k, alpha, reset):
    grads = random_grads(30, seed=1)
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, random_tree(np.random.default_rng(2)))
        ours = optimizers.lookahead(optimizer=optimizers.adam(0.05), sync_period=k, slow_step_size=alpha,
                                    reset_state=reset)
        theirs = optax.lookahead(optax.adam(0.05), sync_period=k, slow_step_size=alpha, reset_state=reset)
        p_ours, s_ours = params, ours.init(params)
        p_theirs = optax.LookaheadParams.init_synced(params)
        s_theirs = theirs.init(p_theirs)
        for t, g in enumerate(grads):
            g = jax.tree.map(jnp.asarray, g)
            u, s_ours = jax.jit(ours.update)(g, s_ours, p_ours)
            p_ours = optax.apply_updates(p_ours, u)
            u, s_theirs = theirs.update(g, s_theirs, p_theirs)
            p_theirs = optax.apply_updates(p_theirs, u)
            for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs.fast)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
            for a, b in zip(jax.tree.leaves(optimizers.slow_params(s_ours)), jax.tree.leaves(p_theirs.slow)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
            if (t + 1) % k == 0:  # just synchronised: the params are the slow weights
                for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(optimizers.slow_params(s_ours))):
                    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_inner_hyperparams_are_reachable():
    tx = optimizers.lookahead(optimizer=optimizers.adam(1e-3), sync_period=5, slow_step_size=0.5)
    state = optimizers.set_hyperparams(tx.init({"w": jnp.ones(2)}), learning_rate=5e-4)
    hp = optimizers.get_hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(5e-4) and float(hp["slow_step_size"]) == 0.5
