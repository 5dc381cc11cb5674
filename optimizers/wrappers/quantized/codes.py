r"""Block-wise quantization of a float32 array to 8-bit codes of the dynamic (tree) code.

The array is cut into blocks of ``block_size`` consecutive elements (row-major order). Each
block keeps one float32 scale, its largest finite :math:`|x|` (absmax), and one code per
element: the index of a value of the code's table next to :math:`x / \text{absmax}` (the
nearest, or for the signed code one of the two around it, drawn: see *Rounding*).
Dequantizing multiplies the table value by the scale.

**The dynamic code** (Dettmers et al., ICLR 2022, Section 2.2; Dettmers, ICLR 2016). Its bits
after the sign are a run of :math:`e` zeros (the exponent: the value is of order
:math:`10^{-e}`), an indicator bit, and linear fraction bits for the rest: for :math:`b` value
bits, decade :math:`e \in \{0, \dots, b-1\}` holds :math:`n_e = 2^{b-1-e}` values, evenly spaced
over :math:`(0.1, 1] \cdot 10^{-e}`:

.. math::
    q_{e,j} = 10^{-e}\,\bigl(0.1 + 0.9\, j / n_e\bigr), \qquad j = 1, \dots, n_e

so a block spans 6 decades (8 bits) with a relative resolution that is finest near its
absmax (steps of 1.4% of it) and coarsest near :math:`10^{-6}` of it.

* **Signed** (``int8`` codes, for buffers of either sign: first moments, momenta, averages):
  7 value bits, :math:`\pm q_{e,j}` (127 values of each sign, :math:`\pm 1` included), 0, and
  one code for a non-finite element (255 values and NaN). Code :math:`c \in [-127, 127]` is
  the value of sign :math:`\mathrm{sign}(c)`; -128 is NaN.
* **Unsigned** (``uint8`` codes, for buffers declared non-negative: second moments,
  accumulated squares): the sign bit becomes a fraction bit, :math:`n_e = 2^{7-e}` (254
  positive values), 0, and NaN (code 255). A positive element never rounds to 0: an Adam
  :math:`v` stored as 0 under a nonzero :math:`m` would make the step :math:`m/\epsilon`;
  values below the smallest code (:math:`5.5 \cdot 10^{-7}` of the absmax) are stored as it.

The paper's table puts its fractions at the midpoints of those intervals and has no
:math:`-1`; here they are the right ends, so both signs' absmax are exact and the decades
meet without a gap. The freed code of the two zeros (:math:`\pm 0`) marks a non-finite element:
NaN and :math:`\pm\infty` come back as NaN, only at their own place (the scale is the absmax
of the finite elements, so one Inf does not wipe out its block).

**Rounding.** The unsigned code rounds to the nearest value. The signed code rounds
stochastically: to the upper of the two values around :math:`|y|` with probability the
fraction of the way to it, so that :math:`E[\hat y] = y`. A momentum or an average,
:math:`m \leftarrow \beta m + (1 - \beta) g`, keeps every step's rounding error, damped by
only :math:`1 - \beta` a step; rounding to the nearest value of a code whose steps change
with the magnitude is biased, and the bias adds up over :math:`1/(1 - \beta)` steps (Lion's
:math:`\beta_2 = 0.99`: a momentum stored 5% small, its 8-bit loss 1.1-1.2% above float32's;
unbiased, its gap closes; see the guide). The draw is deterministic, :func:`dither`: a hash
of the value's float32 bits (but the last 12) and its position in the block, so runs and
resumed checkpoints are bit for bit the same.

**Round trip.** An element :math:`x` of a block of absmax :math:`a` comes back within a step
of its decade (signed) or half a step (unsigned): :math:`|\hat x - x| \le 0.9 \cdot 10^{-e}
a / n_e` (:math:`0.45 \cdot 10^{-e} a / n_e`); that is at most :math:`0.0141\,a` (signed) and
:math:`0.0036\,a` (unsigned) anywhere, and at most 14.1% (3.6%) of :math:`|x|` for
:math:`|x| \ge a/10`. Elements below :math:`10^{-6} a` become 0 or :math:`10^{-6} a`
(signed) or the smallest code (unsigned). The scale is exact, and the absmax itself comes
back exactly, so the bounds hold at any magnitude a float32 holds.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def _decades(bits: int) -> int:
    """The decades of the code: one per value bit (7 for 8 bits)."""
    return bits - 1


def _decade(condition_of_k, decades, top):
    r"""For each element, :math:`10^{e}`, :math:`10^{-e}` and :math:`1/n_e` of its decade :math:`e`,
    the largest ``k`` in ``1 .. decades - 1`` with ``condition_of_k(k)`` (true for all smaller
    ``k``), 0 if none; :math:`n_e = 2^{\text{top} - e}`. Selects of constants only, no lookups
    and no divisions, so that XLA fuses them into (and repeats them in) every loop that reads them.
    """
    power, inverse, step = 1.0, 1.0, 2.0**-top
    for k in range(1, decades):
        on = condition_of_k(k)
        power = jnp.where(on, np.float32(10.0**k), power)
        inverse = jnp.where(on, np.float32(10.0**-k), inverse)
        step = jnp.where(on, np.float32(2.0 ** (k - top)), step)
    return power, inverse, step


def _values(magnitude_code, bits: int, signed: bool):
    r"""The value of each magnitude code :math:`a` (signed: :math:`|c| \in [0, 2^{b-1})`;
    unsigned: :math:`c + 1`): decade :math:`e` from the highest set bit of :math:`a`,
    :math:`j = a - n_e + 1`, :math:`q_{e,j}`; 0 for code 0."""
    decades = _decades(bits)
    a = magnitude_code.astype(jnp.int32) + (0 if signed else 1)
    top = decades - 1 if signed else decades  # the bit of a that decade 0 has set
    _, inverse, step = _decade(lambda k: a < (1 << (top + 1 - k)), decades, top)
    j = a.astype(jnp.float32) + 1.0
    value = (0.1 + 0.9 * (j * step - 1.0)) * inverse  # j * step - 1 = (a - n_e + 1) / n_e
    return jnp.where(a > (0 if signed else 1), value, 0.0)


def dither(y, position):
    r"""A number in [0, 1) from each ``y`` and its ``position`` in its block (uint32): an integer hash
    (multiply, xor-shift, twice) of ``y``'s float32 bits but the last 12 (so that a ``y`` a few
    roundings off, as another compilation of the same update gives it, mostly draws the same),
    the same on every machine and in the CPU kernels."""
    bits = jax.lax.bitcast_convert_type(y.astype(jnp.float32), jnp.uint32) >> 12
    h = bits ^ (position * jnp.uint32(0x9E3779B9))
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 13)
    return (h >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def _magnitude_code(y, bits: int, signed: bool, position=None):
    r"""The magnitude code of each ``y`` in [0, 1] (see :func:`_values`): the nearest value (unsigned),
    or (signed) one of the two values around it, the upper with probability the fraction of the way
    to it (stochastic rounding, drawn by :func:`dither` from ``y`` and its ``position``).

    The decade :math:`e` with :math:`y \in (10^{-e-1}, 10^{-e}]` is counted with compares;
    its values with the next decade's top one, :math:`10^{-e-1} + k\, 0.9 \cdot 10^{-e}/n_e`
    (:math:`k = 0 .. n_e`), are evenly spaced, so the nearest is a rounding (half to even),
    and :math:`a = n_e - 1 + k` (unsigned: :math:`n_e - 2 + k`) numbers them across decades.
    The signed code's lowest decade starts from 0 (its one value :math:`10^{-6}` and 0).
    Stochastic: :math:`k = \lfloor v + u \rfloor` for the position :math:`v` in steps and the
    dither :math:`u`, so that :math:`E[\hat y] = y`; ``y = 1`` (the absmax) stays exact.

    Two ladders of selects of constants (:math:`10^e`, :math:`n_e`), no division, and the
    rounding as :math:`(v + 2^{23}) - 2^{23}` (exact for :math:`0 \le v < 2^{22}`; cheaper
    than XLA:CPU's round): the ``maximum`` keeps XLA from folding the two constants away and
    LLVM from fusing the product before it into a multiply-add (which would round once, not
    twice, and move ties).
    """
    decades = _decades(bits)
    top = decades - 1 if signed else decades
    power, n, lowest = 1.0, np.float32(2.0**top), None
    for k in range(1, decades):
        lowest = y <= np.float32(10.0**-k)
        power = jnp.where(lowest, np.float32(10.0**k), power)
        n = jnp.where(lowest, np.float32(2.0 ** (top - k)), n)
    z = y * power
    v = (z - 0.1) * (n * np.float32(1 / 0.9))
    if signed:  # the lowest decade: 0 and 10^-(decades-1)
        v = jnp.where(lowest, z * n, v)
    if signed:
        k = jnp.where(y >= 1.0, n, jnp.minimum(jnp.floor(jnp.maximum(v, 0.0) + dither(y, position)), n))
        return (n - 1.0 + k).astype(jnp.int32)
    shift = jnp.maximum(n, np.float32(2.0**23))
    k = jnp.minimum((jnp.maximum(v, 0.0) + shift) - shift, n)
    return (n - 2.0 + k).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def table(bits: int, signed: bool) -> np.ndarray:
    """The ``2**bits`` values of the code, float32, in code order: entry ``i`` is the value of
    the ``uint8`` code ``i`` or of the ``int8`` code ``i - 2**bits`` for ``i >= 2**(bits-1)``;
    the NaN entry is the code of a non-finite element."""
    codes = np.arange(2**bits)
    if signed:
        codes = np.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes)
        values = np.sign(codes) * np.asarray(_values(jnp.abs(jnp.asarray(codes)), bits, True))
        return np.where(codes == -(2 ** (bits - 1)), np.nan, values).astype(np.float32)
    values = np.asarray(_values(jnp.asarray(codes), bits, False))
    return np.where(codes == 2**bits - 1, np.nan, values).astype(np.float32)


class Layout(NamedTuple):
    """How an array is cut into blocks.

    The array is seen as ``lead + (columns,)``: its leading ``len(lead)`` axes kept, the
    others flattened; blocks of ``block`` consecutive elements run along ``columns`` and do
    not cross an index of ``lead``. The leading axes are as many as leave ``columns`` a
    multiple of the block size (a (1024, 1024) matrix in blocks of 256: ``lead=(1024,)``, 4
    blocks a row), so the scales, shaped ``lead + (blocks,)``, follow the array's leading axes
    (and its sharding, see :func:`state_shardings`). When no split fits, the array is one
    row whose last block is padded with ``pad`` zeros (an array smaller than a block is one
    block of its size).
    """

    lead: tuple
    columns: int
    blocks: int
    block: int
    pad: int


def layout(shape, block_size: int) -> Layout:
    """The :class:`Layout` of an array of ``shape`` in blocks of ``block_size`` (a power of two)."""
    shape = tuple(shape)
    for k in range(len(shape) - 1, -1, -1):
        columns = math.prod(shape[k:])
        if columns % block_size == 0 and columns > 0:
            return Layout(shape[:k], columns, columns // block_size, block_size, 0)
    size = math.prod(shape)
    block = min(block_size, max(size, 1))
    blocks = -(-size // block)
    return Layout((), size, blocks, block, blocks * block - size)


def layout_of(shape, scales_shape) -> Layout:
    r"""The :class:`Layout` that gave codes of ``shape`` scales of ``scales_shape``.

    The block size is a power of two, so it is the one power of two :math:`B` with
    :math:`\lceil \text{columns} / B \rceil` blocks (:math:`\text{columns}/\text{blocks} \le B
    < \text{columns}/(\text{blocks} - 1)`), or the columns for one block.
    """
    lead, blocks = tuple(scales_shape[:-1]), scales_shape[-1]
    columns = math.prod(tuple(shape)[len(lead):])
    block = columns if blocks == 1 else 1 << (-(-columns // blocks) - 1).bit_length()
    return Layout(lead, columns, blocks, block, blocks * block - columns)


def _to_blocks(x, lay: Layout):
    """``x`` as ``lead + (blocks, block)`` (padded with zeros where the layout says)."""
    x = x.reshape(lay.lead + (lay.columns,))
    if lay.pad:
        x = jnp.pad(x, [(0, 0)] * len(lay.lead) + [(0, lay.pad)])
    return x.reshape(lay.lead + (lay.blocks, lay.block))


def _from_blocks(x, lay: Layout, shape):
    x = x.reshape(lay.lead + (lay.blocks * lay.block,))
    if lay.pad:
        x = x[..., :lay.columns]
    return x.reshape(shape)


class QuantizedBuffer(NamedTuple):
    """A state buffer kept as codes and block scales (see ``optimizers.wrappers.quantized.codes``)."""

    codes: jax.Array  # the buffer's shape; int8: the signed code, uint8: the unsigned one
    scales: jax.Array  # float32 absmax of each block, shape lead + (blocks,) (see Layout)


def encode(xb, signed: bool, bits: int = 8):
    """The codes (``int8`` signed, ``uint8`` unsigned) and absmax of blocks ``xb`` (the last axis)."""
    xb = xb.astype(jnp.float32)
    finite = jnp.isfinite(xb)
    magnitude = jnp.where(finite, jnp.abs(xb) if signed else jnp.maximum(xb, 0.0), 0.0)
    absmax = jnp.max(magnitude, axis=-1)
    inverse = jnp.where(absmax > 0, 1 / jnp.where(absmax > 0, absmax, 1.0), 0.0)
    y = jnp.minimum(magnitude * inverse[..., None], 1.0)
    a = _magnitude_code(y, bits, signed, jax.lax.broadcasted_iota(jnp.uint32, y.shape, y.ndim - 1))
    if signed:
        codes = jnp.where(finite, jnp.where(xb < 0, -a, a), -(2 ** (bits - 1))).astype(jnp.int8)
    else:  # a positive element keeps a positive code
        codes = jnp.where(finite, jnp.where(y > 0, jnp.maximum(a, 1), a), 2**bits - 1).astype(jnp.uint8)
    return codes, absmax


@functools.lru_cache(maxsize=None)
def _decoding(bits: int, signed: bool) -> np.ndarray:
    """:func:`table` as XLA:CPU computes :func:`_values` (which contracts its multiply-adds), indexed by
    the code's byte: the values the codes have always decoded to."""
    codes = np.arange(2**bits)
    if signed:
        codes = np.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes)
    with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
        values = np.asarray(jax.jit(_values, static_argnums=(1, 2))(np.abs(codes).astype(np.int32), bits, signed))
    values = np.sign(codes) * values if signed else values
    nan = codes == (-(2 ** (bits - 1)) if signed else 2**bits - 1)
    return np.where(nan, np.nan, values).astype(np.float32)


def decode(codes, scales, bits: int = 8, lookup: bool = False):
    """The float32 values of ``codes`` (blocks along the last axis) of block scales ``scales``.

    ``lookup``: a gather from the 256 values (cheaper per element, but XLA keeps its result as
    an array for all its readers: for chunks of :func:`optimizers.wrappers.quantized.blockwise.run_blockwise`);
    otherwise selects of constants, which XLA fuses into (and repeats in) each reader, so a
    whole leaf's decoded values never exist as an array. Both give the same bits.
    """
    signed = codes.dtype == jnp.int8
    if lookup:
        index = codes.astype(jnp.int32) & (2**bits - 1) if signed else codes.astype(jnp.int32)
        return jnp.asarray(_decoding(bits, signed))[index] * scales[..., None]
    c = codes.astype(jnp.int32)
    if signed:
        v = jnp.where(c < 0, -1.0, 1.0) * _values(jnp.abs(c), bits, True)
        v = jnp.where(c == -(2 ** (bits - 1)), jnp.nan, v)
    else:
        v = jnp.where(c == 2**bits - 1, jnp.nan, _values(c, bits, False))
    return v * scales[..., None]


def quantize(x, signed: bool, block_size: int, bits: int = 8) -> QuantizedBuffer:
    """The codes (of ``x``'s shape, ``int8`` signed, ``uint8`` unsigned) and float32 block scales of ``x``.

    Unsigned: negative elements (which a non-negative buffer does not have) are stored as 0.
    """
    shape, lay = x.shape, layout(x.shape, block_size)
    codes, absmax = encode(_to_blocks(x, lay), signed, bits)
    return QuantizedBuffer(_from_blocks(codes, lay, shape), absmax)


def dequantize(buffer: QuantizedBuffer, bits: int = 8):
    """The float32 array :func:`quantize` stored as ``buffer``."""
    codes, scales = buffer
    lay = layout_of(codes.shape, scales.shape)
    return _from_blocks(decode(_to_blocks(codes, lay), scales, bits), lay, codes.shape)


def is_quantized(node) -> bool:
    return isinstance(node, QuantizedBuffer)


def dequantized(tree):
    """``tree`` with every :class:`QuantizedBuffer` replaced by its float32 array."""
    return jax.tree.map(lambda x: dequantize(x) if is_quantized(x) else x, tree, is_leaf=is_quantized)
