r"""8-bit optimizer state: every per-parameter buffer kept as block-wise quantized codes.

:func:`with_quantized_state` stores the moments of any optimizer in about a quarter of their
float32 bytes, as 8-bit codes of the dynamic code plus one float32 scale per block
(``optimizers.wrappers.quantized.codes``). Which buffers are non-negative (and get the unsigned
code, one more bit of resolution) is declared per state type and field with
:func:`register_nonnegative`; every other buffer gets the signed code, which is right for
either sign.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.backend import with_step
from optimizers.contract.checks import transformation, with_passed_through
from optimizers.contract.hyperparams import check_count
from optimizers.contract.masks import MaskOrFn, leaf_masks
from optimizers.contract.registry import nonnegative_fields, reduces_across_elements, register_nonnegative
from optimizers.wrappers.quantized.blockwise import per_param_fields, replace_at, run_blockwise
from optimizers.wrappers.quantized.codes import dequantize, is_quantized, layout_of, quantize
from optimizers.wrappers.quantized.leafwise import run_leafwise

BITS = (8,)
_NONNEGATIVE = nonnegative_fields()  # the rules' declarations (optimizers.contract.registry), and optax's below


for _type, _fields in [  # optax's own states, which no rule here declares
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
            # the barrier: XLA would fold the quantization of init's zeros as a constant, slowly
            return quantize(jax.lax.optimization_barrier(g), signed, block_size, bits)
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
    check_count("with_quantized_state", "min_size", min_size)


def with_quantized_state(optimizer: optax.GradientTransformation, bits: int = 8, block_size: int = 256,
                         min_size: int = 4096, mask: MaskOrFn = None) -> optax.GradientTransformationExtraArgs:
    r"""``optimizer`` with its per-parameter state kept as 8-bit block-wise quantized codes.

    Every per-parameter floating buffer of ``optimizer``'s state (moments, accumulators,
    EMA/SWA averages, Lookahead's slow weights: any ``NamedTuple`` field holding one array per
    param, at any depth of chains and wrappers) of at least ``min_size`` elements is kept
    between steps as a :class:`QuantizedBuffer`: one 8-bit code per element and one float32
    scale, the block's absmax, per ``block_size`` consecutive elements (Dettmers et al.,
    block-wise quantization). ``update`` dequantizes, runs ``optimizer``'s own update in
    float32, and quantizes the new state:

    .. math::
        s_{t-1} = Q^{-1}(c_{t-1}, a_{t-1}), \quad (u_t, s_t) = \mathrm{update}(g_t, s_{t-1}),
        \quad a_t = \max_{\text{block}} |s_t|, \quad c_t = Q(s_t / a_t)

    with the dynamic code :math:`Q` (``optimizers.wrappers.quantized.codes``): the signed one
    (``int8``) by default, the unsigned one (``uint8``, twice the resolution) for the fields
    declared non-negative (:func:`register_nonnegative`: second moments, accumulated
    squares, AMSGrad's max, Adadelta's accumulators, SM3's covers, Rprop's step sizes, for
    this package's and optax's states). The sign is the rule's, never guessed from values.
    The unsigned code rounds to the nearest value, the signed one stochastically (unbiased, so a
    slow average such as Lion's momentum is not stored shrunk; a deterministic dither, so runs
    repeat bit for bit).
    A NaN or Inf comes back as NaN, at its own element. Scalars (counts, hyperparameters),
    leaves under ``min_size``, and leaves that ``mask`` excludes keep the state ``optimizer``
    gives them (float32 for float32 params). Deterministic: the same steps give the same
    bits, so a checkpoint resumes bit for bit.

    Memory: AdamW keeps :math:`2 + 8/B` bytes per parameter instead of 8 (2.03 for
    :math:`B = 256`), SGD with momentum and Lion :math:`1 + 4/B`. **Block by block.** XLA:CPU
    writes the input of a reduction (the absmax) out in full, for every leaf at once; so when
    ``optimizer``'s update is elementwise (checked on its trace: Adam, AdamW, SGD, Lion,
    RMSProp, ...), the leaves of 64 blocks and more run through it in a scan of 16 steps,
    each step a chunk of every such leaf, and the float32 state exists for one chunk at a
    time. ``tx.update`` must still return float32 updates of whole leaves;
    :func:`update_and_apply` writes the new params chunk by chunk instead. Temporaries of a
    donated step on a 1024 x 1024 leaf, bytes per parameter: AdamW 3.03 with
    :func:`update_and_apply` (the new codes, 2, and a chunk's float32 values), 10.05 when the
    update runs whole (float32 state: 0). **Leaf by leaf.** When the update is not
    elementwise but no leaf's outputs read another leaf's inputs (found by a dataflow pass
    over its jaxpr: LAMB's and LARS's trust ratios, NovoGrad, Adafactor, SM3, with or
    without ``layer_axes``), it runs one leaf (or a group of small ones) at a time, each
    group after the last one's new codes exist, so the peak is the largest leaf's float32
    temporaries: LAMB on the benchmarks' transformer tree 2.18 bytes per parameter (12.99
    whole). A rule that reads across leaves (``clip_by_global_norm``, Funnelled SGDM,
    :func:`apply_if_finite` inside) runs whole on the dequantized state, as does a tree of
    one large leaf (LAMB on one 1024 x 1024 leaf: 14.05). On the CPU this 8-bit step is
    1.1-5.5x slower than float32's (``benchmarks/quantized.py``); see **Fused** below.

    **Fused.** With ``optimizer`` made with ``fused=True`` (:func:`adam`, :func:`adamw`,
    :func:`amsgrad`, :func:`adamax`, :func:`nadam`, :func:`radam`, :func:`adax`, :func:`lion`,
    :func:`sgd` with momentum, :func:`rprop`, :func:`adagrad`, :func:`adadelta`, :func:`rmsprop`),
    on the CPU, ``update`` and :func:`update_and_apply` run its kernel on the codes
    (``kernels/quantized.h``): one pass that decodes each block of the state into a small
    float32 array, runs the float32 kernel's own update at each element, and encodes the block
    again (absmax, then the codes, the float32 operations of ``_quantized_codes.quantize`` as XLA:CPU compiles
    them), in place: codes, scales and (``update_and_apply``) params, no float32 copy of the
    state, 16 bytes per parameter moved by an AdamW step instead of 28. The leaves that keep
    float32 state go through the float32 kernel in the same step. The results are the unfused
    path's (``with_quantized_state(adamw(...))``) to float32 roundings: the same codes but at
    rounding ties (off by one, up to 0.2% of the signed codes, whose stochastic rounding draws anew when XLA's
    contracted multiply-adds move a value's last bits). Elsewhere the generic path above
    runs, with ``optimizer``'s own update (its float32 kernel on the dequantized state, where
    that applies): a GPU, float64 or bfloat16 leaves, ``bits`` other than 8, an optimizer the
    kernels do not cover (LAMB, LARS, Adafactor, SM3, NovoGrad, Amos, Funnelled SGDM: their
    reductions), a fused optimizer inside ``optax.chain`` or ``inject_hyperparams`` (the
    wrapper only sees the outer transform), ``flat_state=True``. Speed (``benchmarks/quantized.py``,
    11.8M parameters, a shared 2-core CPU): the 8-bit fused AdamW step 3.5x faster than the
    unfused 8-bit one, with no float32 temporaries, but 4.1x the float32 fused step (SGD with
    momentum 2.6x, Lion 3.2x): the encoding's arithmetic (the dynamic code's decade selects and
    rounding) makes it compute bound, where the float32 step is memory bound.

    It composes like any transform: ``optax.chain``, :func:`apply_if_finite` (either side),
    ``optax.inject_hyperparams``, :func:`get_hyperparams` / :func:`set_hyperparams` (the
    state keeps ``optimizer``'s fields), checkpoints (the codes and scales are arrays),
    :func:`state_shardings` (codes like their params, scales along the leading axes they
    share, see :func:`state_shardings`), ``jax.pmap``. :func:`dequantized` reads a state
    back in float32 (e.g. before :func:`averaged_params`).

    Args:
        optimizer: the optimizer whose state is quantized; it must have per-parameter state.
        bits: bits per code: 8 (4-bit codes did not hold float32's accuracy, see the guide).
        block_size: elements per scale, a power of two (256: see the guide's measurements).
        min_size: leaves with fewer elements keep their state as it is.
        mask: a pytree of booleans with the params' structure (or a prefix), or a function
            ``params -> mask``: ``False`` leaves keep their state (embeddings, as the paper
            keeps them in 32 bits).

    Raises:
        ValueError: ``bits`` not supported, ``block_size`` not a power of two >= 1,
            ``min_size`` < 1; at ``init``: ``optimizer`` has no per-parameter state.

    References:
        Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
        Quantization", ICLR 2022, Sections 2.1-2.2.
    """
    _check(bits, block_size, min_size)
    return _wrap(optimizer, bits, block_size, min_size, mask)


def _wrap(optimizer, bits, block_size, min_size, mask):
    """:func:`with_quantized_state` without the checks (any ``bits`` of the codes, for measurements)."""

    def init_fn(params):
        state, found = _quantize_state(optimizer.init(params), params, mask, min_size, block_size, bits)
        if not found and any(p.size for p in jax.tree.leaves(params)):
            raise ValueError("with_quantized_state: optimizer has no per-parameter state to quantize (its state "
                             "holds no floating buffer per param, as sgd without momentum); use it unwrapped")
        return state

    def update_fn(updates, state, params=None, **extra_args):
        return run(updates, state, params, False, **extra_args)

    def step_fn(grads, state, params=None):
        if params is None:
            raise ValueError("with_quantized_state: update_and_apply needs params, got params=None")
        return run(grads, state, params, True)

    def run(updates, state, params, apply, **extra_args):
        coded = getattr(optimizer, "coded", None)  # a fused transform's kernel on 8-bit codes
        if coded is None or extra_args or bits != 8:
            return generic(updates, state, params, apply, **extra_args)
        return coded(updates, state, params, apply, lambda g, s, p: generic(g, s, p, apply))

    def generic(updates, state, params, apply, **extra_args):
        update = functools.partial(optax.with_extra_args_support(optimizer).update, **extra_args)
        requantize = functools.partial(_requantize, bits=bits)
        done = None
        if not reduces_across_elements(state):  # a declared reduction (LAMB, Adafactor, ...) skips the trace check
            done = run_blockwise(update, updates, state, params, bits, _NONNEGATIVE, requantize, apply)
        if done is None:
            done = run_leafwise(update, updates, state, params, bits, _NONNEGATIVE, requantize, apply)
        if done is not None:
            return done
        inner = jax.tree.map(lambda x: dequantize(x, bits) if is_quantized(x) else x, state, is_leaf=is_quantized)
        out, new = update(updates, inner, params)
        return optax.apply_updates(params, out) if apply else out, _requantize(state, new, bits)

    tx = transformation("with_quantized_state", init_fn, update_fn, extra_args=True)
    stepper = transformation("with_quantized_state", init_fn, step_fn)

    def step(grads, state, params):  # what update_and_apply(tx, ...) runs
        new_params, state = stepper.update(grads, state, params)
        return with_passed_through(params, new_params), state

    return with_step(tx, step)

