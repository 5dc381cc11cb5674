"""Shared test set-up: 8 CPU devices (pmap, sharding) and strict rank promotion."""

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
