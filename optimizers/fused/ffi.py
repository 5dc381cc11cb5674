r"""The fused kernels' C++ library: compiled once per machine, registered with XLA, and called through its FFI.

:func:`load_kernels` compiles ``kernels/*.cc`` (one source per algorithm family, with
``common.h`` and ``quantized.h``) as one translation unit with the machine's C++ compiler
(``$CXX``, else ``g++``) into ``$OPTIMIZERS_CACHE`` (default ``~/.cache/optimizers``), keyed by
the sources and headers, the compiler flags, jaxlib's version and the CPU, and registers its
targets ``optimizers_NAME`` (and ``optimizers_NAME_q8``, on 8-bit codes) with XLA:CPU. The
backend calls it at the first trace of a fused update on the CPU, never when an optimizer is
built; a build says so on stderr (and to the ``optimizers`` logger), with the time it took:
about 50 s on 2 shared cores. Without a compiler it raises ``RuntimeError`` there.

:func:`_call` runs a kernel over the leaves of a tree: up to ``_LEAVES_PER_CALL`` leaves in one
call, each input read once and each output written once, the state operands aliased to their
results (updated in place under donation); leaves whose buffers are 8-bit codes go to the
``_q8`` form.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from optimizers.fused.coded import call_coded
from optimizers.wrappers.quantized.codes import is_quantized

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
_LOG = logging.getLogger("optimizers")


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
    """Compiles (once per machine and version, saying so) and registers the CPU kernels with XLA.

    Raises:
        RuntimeError: no C++ compiler (``$CXX``, else ``g++``), or the build failed.
    """
    code = [f"{path.name}\n{path.read_text()}" for path in _files("*.cc", "*.h")]
    key = hashlib.sha256("\n".join([*code, *_FLAGS, jaxlib.__version__, platform.machine(),
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("OPTIMIZERS_CACHE", Path.home() / ".cache" / "optimizers"))
    library = cache / f"fused_kernels_{key}.so"
    if not library.exists():
        _say(f"optimizers: compiling the fused CPU kernels into {library} (once per machine and version, "
             f"about 50 s on 2 cores) ...")
        start = time.perf_counter()
        _build(library)
        _say(f"optimizers: compiled the fused CPU kernels in {time.perf_counter() - start:.0f} s")
    lib = ctypes.cdll.LoadLibrary(str(library))
    for name in [*_KERNELS, *(f"{name}_q8" for name in _CODED)]:
        jax.ffi.register_ffi_target(f"optimizers_{name}", jax.ffi.pycapsule(getattr(lib, f"optimizers_{name}")),
                                    platform="cpu")


def _say(message: str) -> None:
    """A line on stderr (a build blocks the first trace for a while) and the ``optimizers`` logger's INFO."""
    print(message, file=sys.stderr, flush=True)
    _LOG.info(message)


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
