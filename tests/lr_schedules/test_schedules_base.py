import jax
import jax.numpy as jnp
import numpy as np

import schedules


def test_constant_under_jit_and_vmap():
    s = schedules.constant(0.25)
    steps = jnp.arange(10)
    np.testing.assert_array_equal(jax.jit(jax.vmap(s))(steps), np.full(10, 0.25, np.float32))
    assert float(jax.jit(s)(jnp.int32(7))) == 0.25


def test_resolve_numbers_and_schedules():
    assert schedules.resolve(0.5, 3) == 0.5
    assert float(schedules.resolve(lambda t: 2.0 * t, jnp.int32(3))) == 6.0
    assert float(jax.jit(lambda t: schedules.resolve(schedules.constant(1.5), t))(4)) == 1.5
