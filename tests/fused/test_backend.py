"""The fused backend's contract with the rules and the user: nothing compiled at build time, a
missing compiler reported at the first fused update, no silent fallback, and the in-place step
kept on the transform (and a warning where a wrapper hides it)."""

import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers
from optimizers.fused import backend, ffi


def _params():
    return {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}


def test_no_rule_imports_the_backend():
    out = subprocess.run(["git", "grep", "-n", "optimizers.fused", "--", "optimizers/rules"], capture_output=True,
                         text=True)
    assert out.stdout == ""


def test_building_compiles_nothing_and_the_first_fused_update_reports_a_missing_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("OPTIMIZERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backend, "load_kernels", ffi.load_kernels.__wrapped__)  # not the process's cached one
    tx = optimizers.adam(1e-3, fused=True)  # builds: no compiler needed
    params = _params()
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*no-such-compiler"):
        jax.jit(tx.update).lower(params, tx.init(params), params)


def test_a_fresh_process_builds_without_loading_the_library():
    code = ("import optimizers, optimizers.fused.ffi as f; optimizers.adam(1e-3, fused=True); "
            "print(f.load_kernels.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_a_fallback_warns_once_naming_the_optimizer_and_the_reason():
    tx = optimizers.adamw(1e-3, fused=True)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
    state = tx.init(params)
    with pytest.warns(UserWarning, match=r"adamw: fused=True runs the unfused chain: .*bfloat16"):
        _, state = tx.update(params, state, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx.update(params, state, params)  # the same transform, the same reason: once


def test_an_option_the_kernel_lacks_warns_at_build():
    with pytest.warns(UserWarning, match="adam: fused=True runs the unfused chain: its kernel has no eps_root"):
        tx = optimizers.adam(1e-3, eps_root=1e-8, fused=True)
    assert not hasattr(tx, "step") or tx.step is None


def test_the_step_travels_with_the_transform_and_a_chain_around_it_warns_once():
    tx = optimizers.adam(1e-2, fused=True)
    assert isinstance(tx, optax.GradientTransformation) and tx.step is not None and tx.coded is not None
    init, update = tx  # still the pair optax.chain unpacks
    params = _params()
    chained = optax.chain(optax.clip_by_global_norm(1.0), tx)
    state = chained.init(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizers.update_and_apply(tx, params, tx.init(params), params)  # its own step: no warning
    with pytest.warns(UserWarning, match="update_and_apply: the transform wraps a fused adam"):
        new, state = optimizers.update_and_apply(chained, params, state, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = optimizers.update_and_apply(chained, params, state, new)  # once per transform
    updates, _ = chained.update(params, chained.init(params), params)
    np.testing.assert_array_equal(new["w"], optax.apply_updates(params, updates)["w"])


def test_kernel_scalars_are_checked_by_name():
    from optimizers.fused.links import hyper
    with pytest.raises(AssertionError, match=re.escape("the kernel takes ('b1', 'nlr')")):
        hyper(("b1", "nlr"), {"b1": 0.9})
