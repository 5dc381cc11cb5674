r"""8-bit optimizer state: every per-parameter buffer kept as block-wise quantized codes.

:func:`with_quantized_state` stores the moments of any optimizer in about a quarter of their
float32 bytes, as 8-bit codes of the dynamic code plus one float32 scale per block
(:mod:`optimizers._quantized_codes`). Which buffers are non-negative (and get the unsigned
code, one more bit of resolution) is declared per state type and field with
:func:`register_nonnegative`; every other buffer gets the signed code, which is right for
either sign.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from optimizers._adadelta import ScaleByAdadeltaState
from optimizers._adafactor import ScaleByFactoredRmsState
from optimizers._adagrad import ScaleByRssState
from optimizers._adam import ScaleByAdamaxState, ScaleByAdamState, ScaleByAmsgradState
from optimizers._adax import ScaleByAdaxState
from optimizers._amos import ScaleByAmosState
from optimizers._checks import transformation
from optimizers._nadam import ScaleByNadamState
from optimizers._novograd import ScaleByNovogradState
from optimizers._blockwise import per_param_fields, replace_at, run_blockwise
from optimizers._quantized_codes import QuantizedBuffer, dequantize, dequantized, is_quantized, layout_of, quantize
from optimizers._radam import ScaleByRadamState
from optimizers._rmsprop import ScaleByRmsState
from optimizers._rprop import ScaleByRpropState
from optimizers._scaling import MaskOrFn, leaf_masks
from optimizers._sm3 import ScaleBySm3State

BITS = (8,)
_NONNEGATIVE: dict[type, frozenset] = {}


def register_nonnegative(state_type: type, *fields: str) -> None:
    """Declares the fields of ``state_type`` (a ``NamedTuple`` state) that hold non-negative buffers.

    :func:`with_quantized_state` keeps them in the unsigned code (twice the resolution of the
    signed one); every undeclared buffer gets the signed code, which holds either sign. The
    sign is the update rule's, not the values': second moments, accumulated squares, maxima
    of them, SM3's covers, Rprop's step sizes. Declarations add up.

    Raises:
        ValueError: ``state_type`` is not a ``NamedTuple`` type, or ``fields`` names none of its fields.
    """
    known = getattr(state_type, "_fields", None)
    if not isinstance(state_type, type) or known is None:
        raise ValueError(f"register_nonnegative: state_type must be a NamedTuple type, got {state_type!r}")
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ValueError(f"register_nonnegative: fields {unknown} are not fields of {state_type.__name__} {known}")
    _NONNEGATIVE[state_type] = _NONNEGATIVE.get(state_type, frozenset()) | frozenset(fields)


for _type, _fields in [
    (ScaleByAdamState, ("nu",)), (ScaleByAmsgradState, ("nu", "nu_max")), (ScaleByAdamaxState, ("nu",)),
    (ScaleByAdaxState, ("nu",)), (ScaleByNadamState, ("nu",)), (ScaleByRadamState, ("nu",)),
    (ScaleByRssState, ("sum_of_squares",)), (ScaleByRmsState, ("nu",)), (ScaleByAdadeltaState, ("nu", "delta_nu")),
    (ScaleByFactoredRmsState, ("v_row", "v_col", "v")), (ScaleBySm3State, ("mu",)), (ScaleByAmosState, ("v", "b")),
    (ScaleByNovogradState, ("nu",)), (ScaleByRpropState, ("step_size",)),
    (optax.ScaleByAdamState, ("nu",)), (optax.ScaleByAmsgradState, ("nu", "nu_max")),
    (optax.ScaleByRssState, ("sum_of_squares",)), (optax.ScaleByRmsState, ("nu",)),
    (optax.ScaleByRStdDevState, ("nu",)), (optax.ScaleByBeliefState, ("nu",)),
]:
    register_nonnegative(_type, *_fields)


def _quantize_state(state, params, mask, min_size, block_size, bits):
    """``state`` with every per-parameter buffer that qualifies quantized, and whether it has any."""
    treedef = jax.tree.structure(params)
    on = jax.tree.leaves(leaf_masks(mask, params)) if mask is not None else [True] * treedef.num_leaves
    fields = per_param_fields(state, treedef, _NONNEGATIVE)

    def one(g, take, signed):
        if take and hasattr(g, "ndim") and g.ndim >= 1 and g.size >= min_size:
            return quantize(g, signed, block_size, bits)
        return g

    new = {path: treedef.unflatten([one(g, take, signed) for g, take in zip(groups, on)])
           for path, groups, signed in fields}
    return replace_at(state, new), bool(fields)


def _requantize(old, new, bits):
    """``new`` (the inner optimizer's new state) with each buffer that ``old`` holds quantized, quantized alike
    (a buffer left without elements by :func:`run_blockwise` keeps its old value, which it replaces)."""

    def one(q, x):
        if not is_quantized(q):
            return x
        if x.shape != q.codes.shape:
            return q
        return quantize(x, q.codes.dtype == jnp.int8, layout_of(q.codes.shape, q.scales.shape).block, bits)

    return jax.tree.map(one, old, new, is_leaf=is_quantized)


def _check(bits, block_size, min_size):
    if bits not in BITS:
        raise ValueError(f"with_quantized_state: bits must be one of {BITS}, got {bits!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1 \
            or block_size & (block_size - 1):
        raise ValueError(f"with_quantized_state: block_size must be a power of two >= 1, got {block_size!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"with_quantized_state: min_size must be an integer >= 1, got {min_size!r}")


def with_quantized_state(optimizer: optax.GradientTransformation, bits: int = 8, block_size: int = 256,
                         min_size: int = 4096, mask: MaskOrFn = None, *, _bits: int | None = None
                         ) -> optax.GradientTransformationExtraArgs:
    r"""``optimizer`` with its per-parameter state kept as 8-bit block-wise quantized codes.

    TODO docstring
    """
    _check(bits, block_size, min_size)
    bits = _bits or bits

    def init_fn(params):
        state, found = _quantize_state(optimizer.init(params), params, mask, min_size, block_size, bits)
        if not found and any(p.size for p in jax.tree.leaves(params)):
            raise ValueError("with_quantized_state: optimizer has no per-parameter state to quantize (its state "
                             "holds no floating buffer per param, as sgd without momentum); use it unwrapped")
        return state

    def update_fn(updates, state, params=None, **extra_args):
        update = functools.partial(optax.with_extra_args_support(optimizer).update, **extra_args)
        done = run_blockwise(update, updates, state, params, bits, _NONNEGATIVE,
                             functools.partial(_requantize, bits=bits))
        if done is not None:
            return done
        inner = jax.tree.map(lambda x: dequantize(x, bits) if is_quantized(x) else x, state, is_leaf=is_quantized)
        out, new = update(updates, inner, params)
        return out, _requantize(state, new, bits)

    return transformation("with_quantized_state", init_fn, update_fn, extra_args=True)


__all__ = ["QuantizedBuffer", "dequantized", "register_nonnegative", "with_quantized_state"]
