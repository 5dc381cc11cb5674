"""Checkpoints resume exactly, in a fresh process, and refuse a state that does not fit.

Every optimizer of the package (and the plateau wrapper, and a one-cycle learning rate) runs
100 steps straight; the same run saved after step 50, restored in a new Python process
(tests/tools/checkpoint_resume.py) and continued must end bit for bit equal, params and state.
"""

import os
import subprocess
import sys

import checkpoint_resume as resume
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TREE_SHAPES, random_tree

import optimizers
from optimizers import checkpoint

FORMATS = ["msgpack", "orbax"]


def _straight(root):
    """Every case's (params, state) after 50 and 100 steps straight; after 50 saved both ways."""
    start = [(resume.PARAMS, tx.init(resume.PARAMS)) for tx in resume.TXS]
    middle = resume.run_all(start, resume.noise(0, resume.SPLIT))
    (root / "msgpack").mkdir()
    for i, (params, state) in enumerate(middle):
        for fmt in FORMATS:
            resume.save(fmt, root / fmt / str(i), {"params": params, "opt": state})
    return middle, resume.run_all(middle, resume.noise(resume.SPLIT, resume.STEPS))


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    middle, end = _straight(tmp_path)
    want = dict(zip(resume.CASES, end))
    assert len(want) == len(resume.RESUMED) + 2
    # The first process compiles the steps and leaves them in a compilation cache, where
    # the second finds them (half the test's time).
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    for fmt in FORMATS:
        done = subprocess.run([sys.executable, resume.__file__, fmt, str(tmp_path / fmt)], check=False, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        got = checkpoint.from_bytes(want, (tmp_path / fmt / "out").read_bytes())  # also checks trees, dtypes
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{fmt}: {jax.tree_util.keystr(path)}")
    # A lost state would show: from a fresh state the params differ, but for the two whose
    # state holds only a count and a learning rate that is constant (or, for the relative
    # step, min(2e-3, 1/sqrt(t)) = 2e-3) after step 50; the plateau scale drops before and after.
    fresh = resume.run_all([(p, tx.init(p)) for (p, _), tx in zip(middle, resume.TXS)],
                           resume.noise(resume.SPLIT, resume.STEPS))
    same = [name for name, a, b in zip(resume.CASES, fresh, end) if np.array_equal(a[0]["big"], b[0]["big"])]
    assert same == ["scale_by_learning_rate", "scale_by_relative_step"]
    plateau = list(resume.CASES).index("reduce_on_plateau(adam)")
    assert float(end[plateau][1][1].scale) < float(middle[plateau][1][1].scale) < 1.0


def _params(shapes=TREE_SHAPES, dtype=jnp.float32):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), random_tree(np.random.default_rng(3), shapes))


ADAM = optimizers.adam(0.1).init(_params())
MISMATCHES = {
    # what was saved, the path the error names, and what it says differs
    "other optimizer": (optimizers.adamax(0.1).init(_params()), "at state[0]:",
                        "has a ScaleByAdamaxState, the target a ScaleByAdamState"),
    "other chain": (optimizers.lion(0.1).init(_params()), "at state[2]:",
                    "extra in the restored state (tuple keys missing: none; extra: [2])"),
    "other shapes": (optimizers.adam(0.1).init(_params({**TREE_SHAPES, "dense": {"w": (3, 4), "b": (3,)}})),
                     "at state[0].mu['dense']['w']:", "has an array float32[3, 4], the target an array float32[4, 3]"),
    "missing leaf": (optimizers.adam(0.1).init(_params({**TREE_SHAPES, "dense": {"w": (4, 3)}})),
                     "at state[0].mu['dense']['b']:", "missing from the restored state"),
    "other dtype": (optimizers.adam(0.1).init(_params(dtype=jnp.bfloat16)),
                    "at state[0].mu['blocks'][0]:", "has an array bfloat16[2, 2, 3], the target an array float32[2, 2, 3]"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
@pytest.mark.parametrize("how", ["check_compatible", *FORMATS])
def test_mismatch_names_the_first_differing_path(case, how, tmp_path):
    saved, where, what = MISMATCHES[case]
    with pytest.raises(ValueError) as error:
        if how == "check_compatible":
            checkpoint.check_compatible(ADAM, saved)
        else:
            resume.save(how, tmp_path / "ckpt", saved)
            resume.load(how, tmp_path / "ckpt", jax.eval_shape(optimizers.adam(0.1).init, _params()))
    assert where in str(error.value) and what in str(error.value)


def test_flax_alone_restores_mismatches_silently_or_cryptically():
    """Why the checks: flax's from_bytes takes other shapes and another optimizer's state."""
    other_shapes, _, _ = MISMATCHES["other shapes"]
    got = flax.serialization.from_bytes(ADAM, flax.serialization.to_bytes(other_shapes))
    assert got[0].mu["dense"]["w"].shape == (3, 4) != ADAM[0].mu["dense"]["w"].shape
    adamax, _, _ = MISMATCHES["other optimizer"]
    assert isinstance(flax.serialization.from_bytes(ADAM, flax.serialization.to_bytes(adamax))[0],
                      optimizers.ScaleByAdamState)
    lion, _, _ = MISMATCHES["other chain"]
    with pytest.raises(ValueError, match=r"size of the list and the state dict do not match, got 2 and 3 at path \.$"):
        flax.serialization.from_bytes(ADAM, flax.serialization.to_bytes(lion))


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_types_dtypes_none_and_empty_leaves(fmt, tmp_path):
    """bfloat16, ``None`` params, ``EmptyState`` and Adafactor's empty placeholders (orbax cannot write them)."""
    params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.arange(3, dtype=jnp.bfloat16), "none": None}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optimizers.adafactor(0.1, min_dim_size_to_factor=2))
    state = tx.init(params)
    for k in range(2):
        _, state = jax.jit(tx.update)(jax.tree.map(lambda p, k=k: p * (k - 0.5), params), state, params)
    assert {x.shape for x in jax.tree.leaves(state) if x.size == 0} == {(0,)}
    resume.save(fmt, tmp_path / "ckpt", state)
    for target in (tx.init(params), jax.eval_shape(tx.init, params)):
        got = resume.load(fmt, tmp_path / "ckpt", target)
        assert jax.tree.structure(got) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
            assert isinstance(a, jax.Array) and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_checkpoints_it_did_not_write(fmt, tmp_path):
    if fmt == "orbax":
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as plain:
            plain.save(tmp_path / "ckpt", ADAM)
    else:
        (tmp_path / "ckpt").write_bytes(flax.serialization.to_bytes(ADAM))
    with pytest.raises(ValueError, match="not written by optimizers.checkpoint"):
        resume.load(fmt, tmp_path / "ckpt", ADAM)


@pytest.mark.parametrize("fmt", FORMATS)
def test_restores_onto_the_targets_shardings(fmt, tmp_path):
    """A state split over 8 devices comes back split the way the target says, values equal."""
    mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    params, tx = _params({"w": (16, 8), "b": (8,)}), optimizers.adam(0.1)
    param_sh = optimizers.fsdp_shardings(params, mesh, "model")
    state_sh = optimizers.state_shardings(tx, params, param_sh)
    state = jax.jit(tx.init, out_shardings=state_sh)(jax.device_put(params, param_sh))
    resume.save(fmt, tmp_path / "ckpt", state)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          jax.eval_shape(tx.init, params), state_sh)
    got = resume.load(fmt, tmp_path / "ckpt", target)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
        assert a.sharding == b.sharding
        np.testing.assert_array_equal(a, b)
    assert got[0].mu["w"].sharding.spec == jax.sharding.PartitionSpec("model", None)


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
def test_flax_nnx_optimizer_state_round_trip(fmt, tmp_path):
    """``nnx.Optimizer.opt_state`` (arrays in ``nnx.OptArray``s, ``nnx.State`` nodes) is saved and restored
    into a new optimizer's state, its containers kept, and training resumes bit for bit."""
    from flax import nnx

    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)

    def build():
        model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, optimizers.adamw(1e-2, weight_decay=0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

    model, optimizer = build()
    for _ in range(3):
        step(model, optimizer)
    resumed_model, resumed = build()
    nnx.update(resumed_model, nnx.state(model, nnx.Param))
    if fmt == "msgpack":
        resumed.opt_state = checkpoint.from_bytes(resumed.opt_state, checkpoint.to_bytes(optimizer.opt_state))
    else:
        checkpoint.save(tmp_path / "ckpt", optimizer.opt_state)
        resumed.opt_state = checkpoint.restore(tmp_path / "ckpt", resumed.opt_state)
    kinds = lambda tree: [type(v) for v in jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, nnx.Variable))]  # noqa: E731
    assert kinds(resumed.opt_state) == kinds(optimizer.opt_state)
    for _ in range(2):
        step(model, optimizer)
        step(resumed_model, resumed)
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(resumed_model, nnx.Param)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
