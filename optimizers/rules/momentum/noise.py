"""Annealed Gaussian gradient noise (noisy SGD)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.checks import transformation
from optimizers.contract.dtypes import reject_complex
from optimizers.contract.hyperparams import check_range, current_hyperparams, init_hyperparams
from optimizers.contract.registry import declare_optimizer, declare_state
from optimizers.rules.scaling import scale_by_learning_rate
from schedules import ScalarOrSchedule


@declare_state(elementwise=False)  # the noise is drawn for the whole leaf: not block by block
class AddNoiseState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    hyperparams: dict  # {"eta": ..., "gamma": ...}
    rng_key: tuple  # the next draw's raw key (jax.random.key_data): its two uint32 words, as scalars


def _checked_key_data(owner, key, seed) -> jax.Array:
    """The raw data of optax's key: ``key`` (an int seed or a key), else ``seed``, else 0."""
    if seed is not None and key is not None:
        raise ValueError(f"{owner}: give key or seed (optax's deprecated spelling), not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"{owner}: seed must be an int (optax's deprecated spelling of key), got {seed!r}")
    key = seed if key is None else key
    key = 0 if key is None else key
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.ndim == 1:
        return key  # a raw jax.random.PRNGKey
    if isinstance(key, bool) or not isinstance(key, (int, jax.Array)) or jnp.ndim(key) != 0:
        raise ValueError(f"{owner}: key must be an int seed or a jax.random key, got {key!r}")
    return jax.random.key_data(jax.random.key(key))


def add_noise(eta: ScalarOrSchedule = 0.01, gamma: ScalarOrSchedule = 0.55, key=None, *,
              seed: Optional[int] = None) -> optax.GradientTransformation:
    r"""Adds annealed Gaussian noise to the gradient.

    .. math::
        u_t = g_t + \sigma_t \xi_t, \quad \xi_t \sim N(0, I), \quad \sigma_t^2 = \frac{\eta}{(1+t)^\gamma}

    with :math:`t = 0, 1, \dots` the update's index (the first update has variance :math:`\eta`).
    The draws are ``optax.add_noise``'s for the same key: the key is split at every update, the
    second half drawing :math:`\xi_t` with ``optax.tree.random_like``, the first kept as the next
    key, so the same key gives optax's noise bit for bit. Complex leaves get complex normal
    noise (``jax.random.normal``'s, unit variance of the modulus).

    Complex params are refused (``TypeError``): the paper's noise is real, and ``jax.random.normal``'s
    complex draw would give each real coordinate half the variance.

    Args:
        eta: :math:`\eta \ge 0`, the first variance.
        gamma: :math:`\gamma \ge 0`, the annealing exponent (0.55 in the paper).
        key: an int seed or a ``jax.random`` key (typed or raw); ``None`` is seed 0 (optax's
            default after its warning).
        seed: optax's deprecated spelling of an int ``key``; giving both is an error.

    References:
        Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, "Adding Gradient Noise
        Improves Learning for Very Deep Networks", 2015, Section 2.
    """
    return _add_noise("add_noise", eta, gamma, key, seed)


def _add_noise(owner, eta, gamma, key, seed):
    check_range(owner, "eta", eta, 0.0)
    check_range(owner, "gamma", gamma, 0.0)
    key_data = _checked_key_data(owner, key, seed)
    values = dict(eta=eta, gamma=gamma)

    def init_fn(params):
        reject_complex(owner, params, "the paper's noise is real; split complex leaves into real pairs")
        return AddNoiseState(jnp.zeros([], jnp.int32), init_hyperparams(**values), tuple(jnp.asarray(key_data)))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(values, state.hyperparams, state.count)
        t1 = optax.safe_increment(state.count).astype(hp["eta"].dtype)
        sigma = jnp.sqrt(hp["eta"] / t1 ** hp["gamma"])
        next_key, draw = jax.random.split(jax.random.wrap_key_data(jnp.stack(state.rng_key)))
        noise = optax.tree.random_like(draw, updates, jax.random.normal)
        out = jax.tree.map(lambda g, z: (g + sigma * z).astype(g.dtype), updates, noise)
        new = AddNoiseState(optax.safe_increment(state.count), hp, tuple(jax.random.key_data(next_key)))
        return out, new

    return transformation(owner, init_fn, update_fn)


@declare_optimizer(paper="Neelakantan et al. 2015", update="`θ-=γ(g+σₜξ), σₜ²=η/(1+t)^γ`",
                   test_kwargs=dict(learning_rate=2e-3, eta=1e-8))
def noisy_sgd(learning_rate: ScalarOrSchedule, eta: ScalarOrSchedule = 0.01, gamma: ScalarOrSchedule = 0.55,
              key=None, *, seed: Optional[int] = None) -> optax.GradientTransformation:
    r"""SGD with annealed Gaussian gradient noise: :math:`\theta_t = \theta_{t-1} - \gamma_t u_t` (:func:`add_noise`).

    The same update as ``optax.noisy_sgd`` for the same key (its draws, its schedule of
    :math:`\sigma_t`); ``key=None`` is seed 0 without optax's warning.

    References:
        Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, "Adding Gradient Noise
        Improves Learning for Very Deep Networks", 2015, Section 2.
    """
    return optax.chain(_add_noise("noisy_sgd", eta, gamma, key, seed), scale_by_learning_rate(learning_rate))
