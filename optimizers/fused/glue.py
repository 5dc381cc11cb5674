r"""Fused CPU kernels (``fused=True``) and :func:`update_and_apply`.

XLA:CPU writes every output buffer of an elementwise update in a loop of its own: Adam's
step reads the gradient and the moments again for each of :math:`m_t`, :math:`v_t` and the
update, 40 bytes per float32 parameter where one pass needs 28, and the step is memory bound
(``benchmarks/``). With ``fused=True``, ``adam``, ``adamw``, ``amsgrad``, ``adamax``, ``adax``,
``nadam``, ``radam``, ``sgd``, ``lion``, ``adagrad``, ``amos``, ``adadelta``, ``rmsprop`` and
``rprop`` run their update instead as one C++ loop per step, ``novograd`` and ``funnelled_sgdm``
as one after XLA's per-leaf sums of squares or global dot product, ``sm3`` as one (SM3-II, the
covers' maxima in the same pass) or two (SM3-I), ``lamb`` and ``lars`` as two (the per-leaf
norms, then the update), ``adafactor`` as three (the second moments and sums of squares, the
clipping sums of factored leaves, the update), called from XLA through its FFI (``kernels/``:
one source per algorithm family): up to 4 leaves of the tree in one call, each input read once
and each output written once, the moments updated in place, in chunks shared by XLA's intra-op
threads. The same formulas as the unfused chains, in the same order of float32 operations; the
state is the unfused chain's, so checkpoints, :func:`get_hyperparams`, :func:`set_hyperparams`
and schedules work alike.

* ``tx.update`` + ``optax.apply_updates`` (what Flax's ``TrainState`` calls): one pass that
  writes the updates, then XLA's add (36 bytes per parameter for Adam).
* :func:`update_and_apply(tx, grads, state, params) <update_and_apply>`: one pass that writes
  the params in place, the whole step in 28 bytes per parameter for Adam, as
  ``torch.optim.Adam(fused=True)``. For any other transform it is ``tx.update`` then
  ``optax.apply_updates``.

``flat_state=True`` (with ``fused``, all but ``sm3`` and ``adafactor``) keeps each
per-parameter state buffer as one flat float32 array, the leaves one after another, instead of a
tree: the same numbers, but JAX creates one output buffer per moment instead of one per leaf
(about 1.6 us each on the CPU here, a millisecond a step on a 150-leaf tree); the state is no
longer the unfused chain's (no checkpoint interchange, no sharding like the params).

The kernel runs where it applies: on the CPU, with float32 params, gradients and state,
float32 hyperparameters (``jax_enable_x64`` off) and params given. Anywhere else (a GPU,
whose XLA already fuses the update into one kernel; bfloat16 or complex leaves; float64) the
unfused chain runs, with the same results. Under ``jax.vmap`` the kernel runs once per batch
element. Not differentiable (meta-gradients through the update need ``fused=False``), and
under ``jit`` with params sharded over several devices XLA gathers them to call it: use the
unfused form there.

**8-bit state.** :func:`with_quantized_state` around a fused transform of ``adam``, ``adamw``,
``amsgrad``, ``adamax``, ``nadam``, ``radam``, ``adax``, ``lion``, ``sgd`` (momentum), ``rprop``,
``adagrad``, ``adadelta`` or ``rmsprop`` calls its kernel with the :class:`QuantizedBuffer`
state (the transform's :class:`CodedKernel`, registered by :func:`fused`): :func:`_call` sends the
leaves whose buffers are codes to the kernel's ``_q8`` form (``kernels/quantized.h``: the same
per-element update, block by block on the codes, in place), the others to the float32 kernel.
Where that does not apply (see :func:`with_quantized_state`: not on the CPU, other dtypes, a
fused transform inside a chain or ``inject_hyperparams``, ``flat_state``, the kernels with
reductions) the wrapper's generic path runs.

The library is compiled on first use with the machine's C++ compiler (``$CXX``, else ``g++``;
about 20 s) into ``$OPTIMIZERS_CACHE`` (default ``~/.cache/optimizers``), keyed by the sources
and headers, the compiler flags, jaxlib's version and the CPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import optax

from optimizers.contract.checks import floats_only, is_float, transformation, with_passed_through
from optimizers.fused.flat_state import with_flat_state
from optimizers.contract.hyperparams import current_hyperparams
from optimizers.fused.coded import CodedKernel, call_coded, codes_fit
from optimizers.wrappers.quantized.codes import is_quantized
from optimizers.rules.scaling import leaf_masks

_KERNEL_DIR = Path(__file__).with_name("kernels")  # one source per algorithm family, and common.h
# -fno-trapping-math: no code here reads the floating-point exception flags, and without it GCC
# keeps a select whose sides compute as a branch (quantized.h's encoding loop then does not vectorize)
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-std=c++17",
          "-shared", "-fPIC"]
_KERNELS = ("adam", "amsgrad", "adamax", "nadam", "radam", "adax", "lamb", "lars", "lion", "adagrad", "amos", "adadelta",
            "rmsprop", "rprop", "sgd", "funnelled_sgdm", "novograd", "sm3", "adafactor")
# The kernels that also run on 8-bit state (kernels/quantized.h: optimizers_NAME_q8).
_CODED = ("adam", "amsgrad", "adamax", "nadam", "radam", "adax", "lion", "rprop", "sgd", "adagrad", "adadelta",
          "rmsprop")
_STEPS = weakref.WeakKeyDictionary()  # tx.update -> the in-place step of a fused transform
_CODED_STEPS = weakref.WeakKeyDictionary()  # tx.update -> its CodedKernel, for with_quantized_state


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")


def _files(*patterns: str) -> list[Path]:
    return sorted(path for pattern in patterns for path in _KERNEL_DIR.glob(pattern))


def _run(cmd: list[str]) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"fused=True needs a C++ compiler to build its CPU kernels: {cmd[0]!r} "
                           f"was not found (set $CXX, or use fused=False)") from e
    if done.returncode != 0:
        raise RuntimeError(f"fused=True: building the CPU kernels failed:\n{' '.join(cmd)}\n{done.stderr}")


def _build(out: Path) -> None:
    """Compiles the sources into the one library ``out``, as one translation unit: XLA's FFI headers
    are parsed once (about 20 s of CPU here; compiled one by one, 55 s)."""
    compiler = os.environ.get("CXX", "g++")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        unity, partial = Path(tmp) / "kernels.cc", Path(tmp) / out.name
        unity.write_text("".join(f'#include "{source}"\n' for source in _files("*.cc")))
        _run([compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(unity), "-o", str(partial)])
        os.replace(partial, out)  # atomic: parallel builds (pytest workers) each leave a whole file


@functools.lru_cache(maxsize=None)
def load_kernels() -> None:
    """Compiles (once per machine and version) and registers the CPU kernels with XLA."""
    code = [f"{path.name}\n{path.read_text()}" for path in _files("*.cc", "*.h")]
    key = hashlib.sha256("\n".join([*code, *_FLAGS, jaxlib.__version__, platform.machine(),
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("OPTIMIZERS_CACHE", Path.home() / ".cache" / "optimizers"))
    library = cache / f"fused_kernels_{key}.so"
    if not library.exists():
        _build(library)
    lib = ctypes.cdll.LoadLibrary(str(library))
    for name in [*_KERNELS, *(f"{name}_q8" for name in _CODED)]:
        jax.ffi.register_ffi_target(f"optimizers_{name}", jax.ffi.pycapsule(getattr(lib, f"optimizers_{name}")),
                                    platform="cpu")


_LEAVES_PER_CALL = 4


def _ffi_call(target: str, hyper, info, params, grads, state, step: bool, **attrs):
    """One kernel call: (outputs, new state operands); see :func:`_ffi`."""
    n = len(grads)
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in [*grads, *state]]
    aliases = {2 + 2 * n + k: n + k for k in range(len(state))}
    if step:
        aliases.update({2 + i: i for i in range(n)})
    results = jax.ffi.ffi_call(target, shapes, input_output_aliases=aliases, vmap_method="sequential")(
        hyper, jnp.stack(info).astype(jnp.float32), *params, *grads, *state, step=step, **attrs)
    return list(results[:n]), list(results[n:])


def _ffi(target: str, hyper, info, params, grads, state, step: bool, flat=False, **attrs):
    """The kernel over leaves with elements: (outputs, new state).

    Operands of a call: hyper, info (``info``'s columns of one number per leaf, one after
    another), the params, the grads, then the state operands: ``state``'s columns of one tuple
    of operands per leaf, column after column, or (``flat``) the flat state arrays. Each state
    operand (and in step mode each param) is aliased to its result, so donated arrays are
    updated in place; the new state comes back in ``state``'s form.

    Leaves go in calls of at most ``_LEAVES_PER_CALL`` (``flat``: one call). XLA:CPU's layout
    assignment puts a copy (removed later) before every aliased operand, and its fusion pass
    checks each copy against every aliased operand and every operand of the call: cubic in the
    leaves of a call. SGD with momentum on 600 leaves compiled in 7.5 s as one call, 0.5 s in
    calls of 32. Small calls also step faster: each ends with a thread waiting for the other's
    last chunk, and XLA runs independent calls at the same time, which fills those waits. On a
    150-leaf tree calls of 4 leaves stepped 2-14% faster than calls of 32 (about as fast as one
    call of all leaves; made to run one after another, 8% slower), the same on 62 or 582 leaves;
    compile times alike.
    """
    if flat:
        return _ffi_call(target, hyper, [x for column in info for x in column], params, grads, state, step,
                         **attrs)
    outputs, new_state = [], [[] for _ in state]
    for lo in range(0, len(grads), _LEAVES_PER_CALL):
        part = slice(lo, lo + _LEAVES_PER_CALL)
        operands = [x for column in state for item in column[part] for x in item]
        out, new = _ffi_call(target, hyper, [x for column in info for x in column[part]], params[part],
                             grads[part], operands, step, **attrs)
        outputs += out
        new = iter(new)
        for column, new_column in zip(state, new_state):
            new_column += [tuple(next(new) for _ in item) for item in column[part]]
    return outputs, new_state


def _with_elements(grads):
    """The indices of the leaves with elements: empty leaves stay out of a kernel call (XLA makes
    them constants, which an alias would copy)."""
    return [i for i, g in enumerate(grads) if g.size]


def _merge(kept, computed, full):
    """``full`` with the leaves at ``kept`` replaced by ``computed``."""
    full = list(full)
    for i, x in zip(kept, computed):
        full[i] = x
    return full


def _outputs(kept, computed, params, grads, step):
    """All leaves' outputs: the kernel's, and for empty leaves their params (step) or zero updates."""
    return _merge(kept, computed, params if step else [jnp.zeros_like(g) for g in grads])


def _call(target: str, hyper, info, params, grads, buffers, step: bool, flat=False, **attrs):
    """The kernel over all leaves (see :func:`_ffi`): (outputs, new buffers), outputs the new params
    (``step``) or updates.

    ``info``: the kernel's per-leaf numbers, columns of one number per leaf, whatever they mean to
    it (a weight decay, a trust-ratio flag; Amos: its eta and d sqrt(xi eta)); ``None``: one
    column of zeros. ``buffers``: lists of per-leaf state buffers shaped like the grads, in the
    kernel's order, or (``flat``) one flat array each, the leaves one after another. A leaf whose
    buffers are :class:`QuantizedBuffer` (8-bit codes; :func:`with_quantized_state` hands them
    over) goes to the kernel's ``_q8`` form (``kernels/quantized.h``), the others to ``target``.
    """
    if info is None:
        info = [[jnp.zeros([], jnp.float32)] * len(grads)]
    kept = _with_elements(grads)
    if not kept:
        return _outputs(kept, [], params, grads, step), buffers
    if flat:
        out, state = _ffi(target, hyper, [[column[i] for i in kept] for column in info], [params[i] for i in kept],
                          [grads[i] for i in kept], list(buffers), step, flat=True, **attrs)
        return _outputs(kept, out, params, grads, step), list(state)
    coded = [i for i in kept if buffers and is_quantized(buffers[0][i])]
    outputs, buffers = _outputs([], [], params, grads, step), [list(buffer) for buffer in buffers]
    for group in ([i for i in kept if i not in coded], coded):
        if group:
            call = functools.partial(call_coded, _ffi) if group is coded else _call_plain
            out, new = call(target, hyper, info, params, grads, buffers, step, group, **attrs)
            outputs, buffers = _merge(group, out, outputs), [_merge(group, n, b) for n, b in zip(new, buffers)]
    return outputs, buffers


def _call_plain(target, hyper, info, params, grads, buffers, step, group, **attrs):
    """The float32 kernel over the leaves ``group``: their outputs and new buffers (see :func:`_call`)."""
    pick = lambda xs: [xs[i] for i in group]  # noqa: E731
    state = [[(b,) for b in pick(buffer)] for buffer in buffers]
    out, state = _ffi(target, hyper, [pick(column) for column in info], pick(params), pick(grads), state, step,
                      **attrs)
    return out, [[b for (b,) in column] for column in state]


def _state_buffers(buffer, flat: bool):
    """A state buffer as ``_call`` takes it: its leaves (arrays or :class:`QuantizedBuffer`), or (``flat``)
    the one flat array."""
    return buffer if flat else jax.tree.leaves(buffer, is_leaf=is_quantized)


def _state_tree(buffer, treedef, flat: bool):
    """A buffer from ``_call`` back in the state's form: the params' tree, or (``flat``) as it is."""
    return buffer if flat else treedef.unflatten(buffer)


def _advance(link, **values):
    """(hyperparameters of this update, the link's state after it) for a link holding ``values``."""
    hp = current_hyperparams(values, link.hyperparams, link.count)
    return hp, link._replace(count=optax.safe_increment(link.count), hyperparams=hp)


def _leaf_decays(decay_link, lam, mask, params):
    """The weight decay of each float leaf: :math:`\\lambda` where the mask is on, else 0."""
    if decay_link is None:
        return [lam] * len(jax.tree.leaves(params))
    return [lam if on else jnp.zeros_like(lam) for on in jax.tree.leaves(leaf_masks(mask, params))]


def _runs_fused(*trees) -> bool:
    """Whether the kernel applies: float32 leaves only, float32 hyperparameters."""
    leaves = [x for tree in trees for x in jax.tree.leaves(tree) if is_float(x)]
    return not jax.config.jax_enable_x64 and all(jnp.result_type(x) == jnp.float32 for x in leaves)


def _on_cpu(kernel, unfused, *args):
    return jax.lax.platform_dependent(*args, cpu=kernel, default=unfused)


def fused(owner: str, chain: optax.GradientTransformation, kernel, state_trees,
          flat_fields=(), coded: bool = False) -> optax.GradientTransformation:
    """``chain`` with its update run by ``kernel(grads, state, params, step) -> (outputs, state)`` where it applies.

    ``state_trees(state)`` are the state's per-parameter buffers (a list of trees of the params'
    structure: for the dtype check). The transform's ``update`` writes updates; its step
    (:func:`update_and_apply`) the params. ``flat_fields``: the ``(link, field)`` pairs kept as
    one flat array each (``flat_state=True``: fewer buffers for JAX to pass, the kernel's
    layout; the unfused chain, where it runs, gets them unflattened). ``coded``: ``kernel`` also
    takes 8-bit state (its target has a ``_q8`` form); it is registered as the transform's
    :class:`CodedKernel` (not with ``flat_fields``).
    """
    load_kernels()  # here, so that a missing compiler is reported where fused=True is asked for
    if flat_fields:
        chain = with_flat_state(owner, chain, flat_fields)

    def applies(grads, state, params):
        return params is not None and bool(jax.tree.leaves(grads)) and _runs_fused(grads, params, state_trees(state))

    def update_fn(grads, state, params=None):
        if not applies(grads, state, params):
            return chain.update(grads, state, params)
        return _on_cpu(lambda g, s, p: kernel(g, s, p, False), chain.update, grads, state, params)

    def step_fn(grads, state, params):
        def unfused(g, s, p):
            updates, s = chain.update(g, s, p)
            return optax.apply_updates(p, updates), s

        if not applies(grads, state, params):
            return unfused(grads, state, params)
        return _on_cpu(lambda g, s, p: kernel(g, s, p, True), unfused, grads, state, params)

    tx = transformation(owner, chain.init, update_fn)
    stepper = transformation(owner, chain.init, step_fn)

    def step(grads, state, params):
        new_params, state = stepper.update(grads, state, params)
        return with_passed_through(params, new_params), state

    _STEPS[tx.update] = step
    if coded and not flat_fields:
        _CODED_STEPS[tx.update] = CodedKernel(
            kernel, lambda g, s, p: applies(g, s, p) and codes_fit(g, state_trees(s)))
    return tx


def update_and_apply(tx: optax.GradientTransformation, grads, state, params):
    r"""One optimizer step: ``(new_params, new_state)``.

    For a transform made with ``fused=True`` (:func:`adam`, :func:`adamw`, :func:`amsgrad`,
    :func:`adamax`, :func:`adax`, :func:`nadam`, :func:`radam`, :func:`sgd`, :func:`lion`,
    :func:`adagrad`, :func:`amos`, :func:`adadelta`, :func:`rmsprop`, :func:`rprop`,
    :func:`funnelled_sgdm`, :func:`novograd`, :func:`sm3`, :func:`lamb`, :func:`lars`,
    :func:`adafactor`) on the CPU, its kernel, which writes the params in place (donate them,
    and the state, to ``jax.jit``). For any other transform, ``tx.update`` then
    ``optax.apply_updates`` (to the float leaves: integer params are kept), so a train step
    written with it works with every optimizer.
    """
    step = _STEPS.get(getattr(tx, "update", None))
    if step is not None:
        return step(grads, state, params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(floats_only(params), floats_only(updates))
    return with_passed_through(params, new), state


def direction_kernel(target: str, values: dict, scalars, fields: tuple, learning_rate, weight_decay=None,
                     mask=None, flat=False, link_update=None, **attrs):
    """The kernel of ``chain(direction, [add_decayed_weights], scale_by_learning_rate)``.

    ``values`` are the direction's hyperparameters (numbers or schedules, as it was built
    with); ``scalars(hp, link)`` the kernel's scalars from their values at this update and the
    direction's state before it (the kernel gets them, then :math:`-\\gamma_t`); ``fields`` the
    state's per-parameter buffers, in the kernel's order (``flat``: one flat array each);
    ``link_update(hp, link)`` the direction's other new fields (a dict); ``attrs`` the
    kernel's static attributes.
    """

    def kernel(grads, state, params, step):
        link, *decay_link, lr_link = state
        decay_link = decay_link[0] if decay_link else None
        hp, new_link = _advance(link, **values)
        lr, lr_new = _advance(lr_link, learning_rate=learning_rate)
        hyper = jnp.stack([*scalars(hp, link), -lr["learning_rate"]]).astype(jnp.float32)
        lam, new_decay = jnp.zeros([], jnp.float32), []
        if decay_link is not None:
            wd, decay_new = _advance(decay_link, weight_decay=weight_decay)
            lam, new_decay = wd["weight_decay"], [decay_new]
        g, treedef = jax.tree.flatten(grads)
        state_buffers = [_state_buffers(getattr(link, f), flat) for f in fields]
        out, buffers = _call(target, hyper, [_leaf_decays(decay_link, lam, mask, params)], jax.tree.leaves(params), g,
                             state_buffers, step, flat=flat, **attrs)
        new_link = new_link._replace(**{f: _state_tree(b, treedef, flat) for f, b in zip(fields, buffers)},
                                     **(link_update(hp, link) if link_update else {}))
        return treedef.unflatten(out), (new_link, *new_decay, lr_new)

    return kernel


def fused_direction(owner: str, chain, target: str, values: dict, scalars, fields: tuple, learning_rate,
                    weight_decay=None, mask=None, flat=False, link_update=None,
                    **attrs) -> optax.GradientTransformation:
    """``chain`` (direction, [add_decayed_weights], scale_by_learning_rate) run by the kernel ``target``
    (see :func:`direction_kernel`); ``flat``: its state buffers kept flat (``flat_state=True``)."""
    kernel = direction_kernel(target, values, scalars, fields, learning_rate, weight_decay, mask, flat, link_update,
                              **attrs)
    return fused(owner, chain, kernel, lambda state: [getattr(state[0], f) for f in fields],
                 [(0, f) for f in fields] if flat else (), coded=target.removeprefix("optimizers_") in _CODED)
