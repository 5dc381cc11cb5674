r"""Dtypes: what the update rules compute in, what their states are stored in, and complex leaves.

Low-precision params (``bfloat16``, ``float16``) keep their state in their own dtype by
default (DESIGN.md, decision 4), but no update rule computes in it:

* **Compute in at least float32** (:func:`widen`). ``float16`` has a largest finite value of
  65504 and no numbers below ~6e-8: the square of a gradient of 1e4 is ``inf``, and an
  :math:`\epsilon` of 1e-8 is 0, so :math:`0 / (\sqrt 0 + \epsilon)` is NaN.
* **Store saturating** (:func:`store`). A moving average that once holds ``inf`` holds it
  for ever (:math:`\beta \cdot \infty = \infty`; :math:`\infty - \infty` is NaN); a value
  beyond a low-precision dtype's range is stored as its largest finite value instead.
* **Round only what is stored.** The update is computed from the new moments before they are
  stored (a float16 :math:`v_t` of a gradient of 1e-4 stores as 0, but this step still divides
  by its float32 value).

All three are decided from the dtype when the update is traced: for ``float32``, ``float64``
and complex leaves they are no-ops, so float32 results (and float64 ones under
``jax_enable_x64``) are bit for bit what they were.

Complex leaves (:math:`z = x + iy`) follow the real pair :math:`(x, y)`: a second moment is
of :math:`|g|^2 = g_x^2 + g_y^2` (:func:`abs2`), shared by both parts and kept real
(:func:`real_zeros_like`); a first moment stays complex. Rules built on per-coordinate signs
or gains (Lion, Rprop, Funnelled SGDM) have no such extension and refuse complex params
(:func:`reject_complex`).

:func:`with_state_dtype` runs a whole optimizer in another dtype: float32 state for
low-precision params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from optimizers.contract.checks import transformation


def is_low_precision(dtype) -> bool:
    """Whether ``dtype`` is a real floating dtype narrower than float32 (bfloat16, float16, float8s)."""
    dtype = jnp.dtype(dtype)
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def widen(x):
    """``x`` in at least float32 (complex64 for complex); unchanged when it already is."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def store(x, dtype):
    """``x`` cast to ``dtype``; to a low-precision dtype, saturating at its largest finite value.

    NaN stays NaN. For any other dtype this is ``x.astype(dtype)``; a complex ``x`` (a first moment
    kept in a complex dtype for real params) stored in a real dtype keeps its real part.
    """
    if jnp.iscomplexobj(x) and not jnp.issubdtype(dtype, jnp.complexfloating):
        x = jnp.real(x)
    if is_low_precision(dtype):
        big = float(jnp.finfo(dtype).max)
        x = jnp.clip(x, -big, big)
    return x.astype(dtype)


def store_like(values, like):
    """Every leaf of ``values`` :func:`store`-d in the dtype of the same leaf of ``like``."""
    return jax.tree.map(lambda x, s: store(x, s.dtype), values, like)


def inner(a, b):
    r"""Elementwise :math:`\mathrm{Re}(a \bar b)`: ``a * b`` for real arrays; :math:`a_{re} b_{re} + a_{im} b_{im}`
    (the dot product of the real pairs), real, for complex ones."""
    if jnp.iscomplexobj(a) or jnp.iscomplexobj(b):
        return jnp.real(a) * jnp.real(b) + jnp.imag(a) * jnp.imag(b)
    return a * b


def abs2(x):
    r""":math:`|x|^2`: ``x * x`` for real ``x``; :math:`x_{re}^2 + x_{im}^2`, real, for complex ``x``."""
    return inner(x, x)


def real_dtype(dtype):
    """The real dtype of ``dtype``'s precision: float32 for complex64, ``dtype`` for a real one."""
    return jnp.finfo(dtype).dtype


def real_zeros_like(params):
    """Zeros shaped like each leaf in its real dtype (a second moment of a complex leaf is real)."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=real_dtype(p.dtype)), params)


def real_full_like(params, value):
    """``value`` shaped like each leaf, in its real dtype."""
    return jax.tree.map(lambda p: jnp.full_like(p, value, dtype=real_dtype(p.dtype)), params)


def check_state_dtype(owner: str, name: str, dtype) -> None:
    """Raises ``ValueError`` naming ``owner``'s ``name`` unless ``dtype`` is ``None`` or a floating dtype
    (real or complex, as optax's state dtypes)."""
    if dtype is not None and _floating_or_complex(dtype) is None:
        raise ValueError(f"{owner}: {name} must be None or a floating or complex dtype such as 'bfloat16', "
                         f"got {dtype!r}")


def _real_floating(dtype):
    """``dtype`` as a numpy dtype if it names a real floating dtype, else ``None``."""
    try:
        checked = jnp.dtype(dtype)
    except TypeError:
        return None
    return checked if jnp.issubdtype(checked, jnp.floating) else None


def _floating_or_complex(dtype):
    """``dtype`` as a numpy dtype if it names a real floating or a complex dtype, else ``None``."""
    try:
        checked = jnp.dtype(dtype)
    except TypeError:
        return None
    return checked if jnp.issubdtype(checked, jnp.inexact) else None


def moment_dtype(leaf_dtype, dtype=None, real: bool = False):
    """The dtype of a state buffer of a leaf of ``leaf_dtype`` kept in ``dtype`` (a state-dtype keyword).

    ``None``: the leaf's dtype (its real dtype with ``real``, for a second moment). Otherwise
    ``dtype`` (float64 only under ``jax_enable_x64``), or for a complex leaf's complex moment
    the smallest complex dtype holding it (complex64 for float32 or bfloat16, complex128 for
    float64); a second moment (``real``) stays real. A complex ``dtype`` is stored as given for
    a first moment, of real leaves too (as optax's ``mu_dtype``/``accumulator_dtype``: its
    imaginary part stays 0 there and the update is its real part); for a second moment, whose
    values are real (optax's are, in a complex buffer), it means its real dtype (complex64:
    float32).
    """
    if dtype is None:
        return real_dtype(leaf_dtype) if real else jnp.dtype(leaf_dtype)
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    if real:
        return real_dtype(dtype)
    if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
        return jnp.promote_types(dtype, jnp.complex64)
    return dtype


def zeros_in(params, dtype=None, real: bool = False):
    """Zeros shaped like each leaf, in :func:`moment_dtype` (``None``: as ``zeros_like``/:func:`real_zeros_like`)."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=moment_dtype(p.dtype, dtype, real)), params)


def full_in(params, value, dtype=None, real: bool = False):
    """``value`` shaped like each leaf, in :func:`moment_dtype`."""
    return jax.tree.map(lambda p: jnp.full_like(p, value, dtype=moment_dtype(p.dtype, dtype, real)), params)


def reject_complex(owner: str, params, why: str) -> None:
    """Raises ``TypeError`` when ``params`` has a complex leaf: ``owner``'s rule does not extend to them."""
    if any(jnp.iscomplexobj(p) for p in jax.tree.leaves(params)):
        raise TypeError(f"{owner}: complex params are not supported: {why}")


def _cast(tree, dtype):
    """Every leaf in ``dtype``, complex ones in its complex form (complex64 for float32)."""
    complex_dtype = jnp.promote_types(dtype, jnp.complex64)
    return jax.tree.map(lambda x: x.astype(complex_dtype if jnp.iscomplexobj(x) else dtype), tree)


def _floating_dtype(dtype):
    checked = _real_floating(dtype)
    if checked is None:
        raise ValueError(f"with_state_dtype: dtype must be a floating dtype such as float32, got {dtype!r}")
    return checked


def with_state_dtype(optimizer: optax.GradientTransformation, dtype: DTypeLike | str = jnp.float32
                     ) -> optax.GradientTransformation:
    r"""``optimizer`` run in ``dtype``: its state kept in ``dtype`` whatever the params' dtype.

    ``init`` and ``update`` hand ``optimizer`` the params and updates cast to ``dtype``
    (complex leaves to ``dtype``'s complex form; integer, boolean and ``None`` leaves are
    passed through, as by every transform here), and the updates it returns are cast back to
    each param's dtype (the updates' own dtype when ``update`` gets no params). The state is
    ``optimizer``'s own, so :func:`get_hyperparams` and checkpoints see it unchanged.

    ``with_state_dtype(adam(1e-3))`` on bfloat16 params is the usual mixed-precision recipe:
    moments that keep float32's 24 bits instead of bfloat16's 8 (and float32's range instead
    of float16's 6e-8 to 65504). The trade: the state takes 4 bytes per number instead of 2
    (Adam: 8 bytes per parameter instead of 4), and every step casts the grads and params up
    and the updates down (elementwise, fused by XLA into the update). The params themselves
    stay in their dtype, so an update smaller than their rounding step is still lost when it
    is applied; keeping float32 master weights is the caller's choice of params.

    Args:
        optimizer: any transformation.
        dtype: a floating dtype or its name (float32 by default).

    Raises:
        ValueError: ``dtype`` is not a floating dtype.
    """
    dtype = _floating_dtype(dtype)

    def init_fn(params):
        return optimizer.init(_cast(params, dtype))

    def update_fn(updates, state, params=None):
        out, state = optimizer.update(_cast(updates, dtype), state, None if params is None else _cast(params, dtype))
        like = updates if params is None else params
        return jax.tree.map(lambda u, p: u.astype(p.dtype), out, like), state

    return transformation("with_state_dtype", init_fn, update_fn)
