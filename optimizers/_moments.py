"""Moving averages and bias corrections shared by the Adam family."""

from __future__ import annotations

import jax
import optax


def ema(updates, moments, decay, order: int = 1):
    r""":math:`m_t = \beta m_{t-1} + (1 - \beta) g_t^{k}`, stored in the moments' dtype."""
    return jax.tree.map(lambda g, m: (decay * m + (1 - decay) * g**order).astype(m.dtype), updates, moments)


def step_number(count, dtype):
    r"""The 1-based step :math:`t` of the update at ``count``, as a float (saturating)."""
    return optax.safe_increment(count).astype(dtype)


def bias_correction(decay, t):
    r""":math:`1 - \beta^t`."""
    return 1 - decay**t
