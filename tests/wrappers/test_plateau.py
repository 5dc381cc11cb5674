import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import serialization

import optimizers

# A scripted loss: improves, plateaus (patience), improves by less than the threshold,
# jumps, and plateaus again during and after cooldowns.
SCRIPT = ([10.0, 9.0, 8.0] + [8.0] * 6 + [7.9999, 7.5] + [7.5 - 1e-5 * k for k in range(8)]
          + [7.0, 6.0] + [6.1] * 12 + [5.0] + [5.0005] * 10 + list(np.linspace(4.9, 4.0, 10)) + [4.5] * 15)


def _torch_scales(values, **kw):
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    out = []
    for v in values:
        opt.step()
        sched.step(v)
        out.append(opt.param_groups[0]["lr"])
    return np.array(out)


def _our_scales(values, **kw):
    tx = optimizers.reduce_on_plateau(**kw)
    params = {"w": jnp.ones(3)}
    state, update = tx.init(params), jax.jit(tx.update)
    out = []
    for v in values:
        u, state = update({"w": jnp.ones(3)}, state, params, value=v)
        np.testing.assert_allclose(u["w"], np.full(3, float(state.scale)), rtol=1e-7)  # the updates are scaled
        out.append(float(state.scale))
    return np.array(out)


@pytest.mark.parametrize("threshold_mode,threshold", [("rel", 1e-4), ("abs", 0.05), ("rel", 0.02)])
@pytest.mark.parametrize("patience,cooldown", [(3, 0), (2, 4), (0, 1)])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_matches_torch(threshold_mode, threshold, patience, cooldown, mode):
    values = SCRIPT if mode == "min" else [20 - v for v in SCRIPT]
    kw = dict(mode=mode, factor=0.5, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
              cooldown=cooldown)
    want = _torch_scales(values, **kw, min_lr=0.01)
    got = _our_scales(values, **kw, min_scale=0.01)
    assert len(set(want)) > 2, "the script must trigger several reductions"
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_negative_values_use_the_magnitude_of_the_best():
    """A flat -10 never improves; PyTorch's bound -10 * (1 - tau) = -9.999 takes every -10 as better."""
    values = [-10.0, -10.0002, -10.0001, -10.0004, -10.0003, -10.0, -10.0005, -10.0002]
    ours = _our_scales(values, factor=0.5, patience=2, threshold=1e-4)
    torchs = _torch_scales(values, factor=0.5, patience=2, threshold=1e-4)
    assert ours[-1] < 1.0 and torchs[-1] == 1.0  # PyTorch's b * (1 - tau) takes each as better
    mirrored = _our_scales([-v for v in values], factor=0.5, patience=2, threshold=1e-4, mode="max")
    np.testing.assert_array_equal(ours, mirrored)


def test_accumulation_averages_values():
    values = [5.0, 3.0] * 10  # means of pairs are all 4: a plateau after the first check
    per_pair = _our_scales(values, factor=0.5, patience=1, accumulation_size=2)
    plain = _our_scales([4.0] * 10, factor=0.5, patience=1)
    np.testing.assert_allclose(per_pair[1::2], plain)
    np.testing.assert_allclose(per_pair[2::2], per_pair[1:-1:2])  # no change between checks


def test_resumes_from_a_checkpoint():
    tx = optimizers.reduce_on_plateau(factor=0.5, patience=2, cooldown=2)
    params = {"w": jnp.ones(2)}
    straight = tx.init(params)
    for v in SCRIPT:
        _, straight = tx.update(params, straight, params, value=v)
    half = tx.init(params)
    for v in SCRIPT[:20]:
        _, half = tx.update(params, half, params, value=v)
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(half))
    for v in SCRIPT[20:]:
        _, restored = tx.update(params, restored, params, value=v)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)


def test_in_a_chain_with_an_optimizer():
    tx = optax.chain(optimizers.sgd(0.1), optimizers.reduce_on_plateau(factor=0.5, patience=0))
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    u1, state = tx.update(params, state, params, value=1.0)
    u2, state = tx.update(params, state, params, value=2.0)  # worse: halved at once (patience 0)
    np.testing.assert_allclose(u1["w"], -0.1 * np.ones(2), rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -0.05 * np.ones(2), rtol=1e-6)
