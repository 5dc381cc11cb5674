"""Shared test set-up: 8 CPU devices (pmap, sharding), strict rank promotion, and a compilation cache.

The cache: many tests compile the same program (an optimizer's update on the same tree, built
afresh by each test); JAX's persistent cache, keyed by the program, compiles it once for the
whole run and both pytest-xdist workers (about a fifth of test_conformance's CPU time). It is
kept under the system's temporary folder (``$OPTIMIZERS_TEST_JAX_CACHE`` to move it; empty: off),
without a size limit: with one, JAX's cache lists and reads every entry under a lock at each
write, which slowed the last part of a whole run to a crawl (9,000 entries).
"""

import os
import sys
import tempfile
from pathlib import Path

# XLA:CPU's compile time dominates the suite (about 0.1 s for the smallest program, and a test
# compiles several); its lowest optimisation level compiles about a fifth faster and computes the
# same IEEE float32 operations (no fast math at any level). Set before jax creates its CPU client.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

import jax  # noqa: E402

# The tests live in folders that mirror the package's; each folder is on the path (as pytest's
# "prepend" import mode puts a test's own folder), so a test imports helpers and other tests'
# references by module name wherever they live (test module names are unique).
sys.path[:0] = sorted(str(d) for d in Path(__file__).parent.rglob("*") if d.is_dir() and d.name != "__pycache__")

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE = os.environ.get("OPTIMIZERS_TEST_JAX_CACHE",
                        os.path.join(tempfile.gettempdir(), f"optimizers-tests-jax-cache-{os.getuid()}"))
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
