"""Elementwise pieces that keep a donated update in place on XLA:CPU.

Params and state donated to a jitted step are overwritten in place. XLA:CPU writes each new
buffer with its own kernel (it has no multi-output fusion by default); when a kernel still
has to read an old buffer that another overwrites, XLA copies the old value into a
temporary, and a temporary is fresh memory, page-faulted in at every step (on the 16M-element
benchmark tensor, ~50 ms for 64 MB, ten times the time of the pass itself). The pieces here
give the same values as the plain ``jnp`` forms, in forms for which XLA needs no copy
(``benchmarks/run.py`` counts the copies and temporaries of every optimizer).
"""

from __future__ import annotations

from jax import lax


def clip(x, low, high):
    """``jnp.clip(x, low, high)`` as two compares and selects (the same values, NaN included; a zero
    at a zero bound keeps its sign).

    XLA:CPU copies a ``clamp`` into every kernel that reads it (it counts as free to
    recompute). When the clipped value is also a state buffer updated in place, the update's
    kernel then reads the old state, which the in-place write overwrites, and XLA copies the
    old state into a temporary first; selects are read from memory once written.
    """
    low, high = lax.full_like(x, low), lax.full_like(x, high)
    return lax.select(lax.lt(x, low), low, lax.select(lax.gt(x, high), high, x))


def after(x, ready):
    r"""``x`` bit for bit, as a value computed once ``ready`` is: :math:`x - 0 \cdot \min(|r|, 1)`.

    Writing a value into a donated state buffer (``prev_grad = g``) must wait until every
    kernel reading the buffer's old value has run. XLA:CPU does not order independent kernels
    and copies the old value into a temporary instead; making the new value depend on what
    those kernels produce (``ready``) orders them, so it is written in place. The product is
    :math:`+0` for every :math:`r` (infinities and NaNs included, through the select), and
    :math:`x - (+0) = x` for every :math:`x`, signed zeros, infinities and NaNs included.
    """
    r = lax.abs(ready)
    one = lax.full_like(r, 1)
    return x - (lax.select(lax.lt(r, one), r, one) * 0).astype(x.dtype)
