"""Moving averages and bias corrections shared by the Adam family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.dtypes import abs2, widen
from optimizers.contract.hyperparams import check_range


def ema(updates, moments, decay, order: int = 1):
    r""":math:`m_t = \beta m_{t-1} + (1 - \beta) g_t` (``order=1``) or :math:`+ (1 - \beta) |g_t|^2` (``order=2``).

    Computed in at least float32 and returned so: the update uses these values, the state
    keeps them :func:`~optimizers.contract.dtypes.store_like` the old moments.
    """
    power = abs2 if order == 2 else (lambda g: g)
    return jax.tree.map(lambda g, m: decay * widen(m) + (1 - decay) * power(widen(g)), updates, moments)


def step_number(count, dtype):
    r"""The 1-based step :math:`t` of the update at ``count``, as a float (saturating)."""
    return optax.safe_increment(count).astype(dtype)


def bias_correction(decay, t):
    r""":math:`1 - \beta^t`."""
    return 1 - decay**t


def check_betas(owner: str, b1, b2, eps) -> None:
    r"""The Adam family's ranges: :math:`\beta_1, \beta_2 \in [0, 1)`, :math:`\epsilon > 0`."""
    check_range(owner, "b1", b1, 0.0, 1.0, high_open=True)
    check_range(owner, "b2", b2, 0.0, 1.0, high_open=True)
    check_range(owner, "eps", eps, 0.0, low_open=True)


def adam_moments(updates, state, hp):
    r""":math:`(t, m_t, v_t, 1-\beta_1^t, 1-\beta_2^t)` for the update at ``state.count``.

    ``state`` has Adam's ``mu`` and ``nu``; ``hp`` the update's ``b1`` and ``b2``. The moments
    are :func:`ema`'s, in at least float32: store them with ``store_like(m, state.mu)``.
    """
    t = step_number(state.count, hp["b1"].dtype)
    m, v = ema(updates, state.mu, hp["b1"]), ema(updates, state.nu, hp["b2"], 2)
    return t, m, v, bias_correction(hp["b1"], t), bias_correction(hp["b2"], t)


def check_eps_root(owner: str, eps_root) -> None:
    r""":math:`\epsilon_{root} \ge 0` (``None``: none)."""
    if eps_root is not None:
        check_range(owner, "eps_root", eps_root, 0.0)


def corrected_mu(g, m, hp, t, c1, nesterov: bool):
    r""":math:`\hat m_t = m_t / (1-\beta_1^t)`, or with ``nesterov`` (optax's, Dozat's form with a
    constant :math:`\beta_1`) :math:`\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)`."""
    if not nesterov:
        return m / c1
    b1 = hp["b1"]
    return b1 * m / bias_correction(b1, t + 1) + (1 - b1) * widen(g) / c1


def adam_denominator(v, c2, hp):
    r""":math:`\epsilon + \sqrt{v_t / (1-\beta_2^t)}`, or :math:`\epsilon + \sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}}`
    when ``hp`` holds an ``eps_root``."""
    if "eps_root" in hp:
        return hp["eps"] + jnp.sqrt(v / c2 + hp["eps_root"])
    return hp["eps"] + jnp.sqrt(v / c2)
