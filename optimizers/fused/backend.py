r"""The fused CPU backend (``fused=True``): each rule's update as one C++ loop per step.

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
one source per algorithm family; :mod:`optimizers.fused.ffi`): each input read once and each
output written once, the moments updated in place. The same formulas as the unfused chains,
in the same order of float32 operations; the state is the unfused chain's, so checkpoints,
:func:`get_hyperparams`, :func:`set_hyperparams` and schedules work alike.

**Shape.** A rule knows nothing of this package: its alias builds its chain and calls
:func:`optimizers.contract.backend.accelerated` (``fused=True``) with what a kernel needs. That
imports this module, which looks the alias's name up in :data:`KERNELS` (filled by
:mod:`optimizers.fused.directions` and :mod:`optimizers.fused.chains`, the descriptions of the
kernels: the state fields each reads and writes, by name, and its scalars, by name, in its C++
source's order) and returns the chain run by the kernel (:func:`fuse`). A new optimizer needs no
kernel and no edit here.

* ``tx.update`` + ``optax.apply_updates`` (what Flax's ``TrainState`` calls): one pass that
  writes the updates, then XLA's add (36 bytes per parameter for Adam).
* :func:`update_and_apply(tx, grads, state, params) <update_and_apply>`: one pass that writes
  the params in place, the whole step in 28 bytes per parameter for Adam, as
  ``torch.optim.Adam(fused=True)``. The step travels with the transform (``tx.step``, a
  :class:`~optimizers.contract.backend.SteppedGradientTransformation`): ``optax.chain``,
  ``inject_hyperparams`` and the wrappers around it keep its ``update`` (still one pass) but
  not its step, and :func:`update_and_apply` on them says so, once per transform.

``flat_state=True`` (with ``fused``, all but ``sm3`` and ``adafactor``) keeps each
per-parameter state buffer as one flat float32 array, the leaves one after another, instead of a
tree: the same numbers, but JAX creates one output buffer per moment instead of one per leaf
(about 1.6 us each on the CPU here, a millisecond a step on a 150-leaf tree); the state is no
longer the unfused chain's (no checkpoint interchange, no sharding like the params).

**Where the kernel runs.** On the CPU (``jax.default_backend() == "cpu"``), with float32
params, gradients and state, float32 hyperparameters (``jax_enable_x64`` off) and params given.
Anywhere else the unfused chain runs, with the same results, and a ``UserWarning`` naming the
optimizer and the reason, once per transform and reason: a GPU or TPU backend (whose XLA
already fuses the update into one kernel), bfloat16, float16, float64 or complex leaves,
``jax_enable_x64``, ``update`` without params; and at build time an option the kernel does not
have (``eps_root``, ``nesterov``, ``layer_axes``, ...). Under ``jax.vmap`` the kernel runs once
per batch element. Not differentiable (meta-gradients through the update need ``fused=False``),
and under ``jit`` with params sharded over several devices XLA gathers them to call it: use the
unfused form there.

**Compilation.** Building a fused optimizer compiles nothing. The first trace of a fused update
on the CPU compiles the C++ library (:func:`optimizers.fused.ffi.load_kernels`: once per machine
and version, about 50 s on 2 cores, announced on stderr with its measured time) and registers its
targets; a missing compiler raises ``RuntimeError`` there.

**8-bit state.** :func:`with_quantized_state` around a fused transform of ``adam``, ``adamw``,
``amsgrad``, ``adamax``, ``nadam``, ``radam``, ``adax``, ``lion``, ``sgd`` (momentum), ``rprop``,
``adagrad``, ``adadelta`` or ``rmsprop`` calls its kernel with the :class:`QuantizedBuffer`
state (the transform's ``coded`` attribute): the leaves whose buffers are codes go to the
kernel's ``_q8`` form (``kernels/quantized.h``: the same per-element update, block by block on
the codes, in place), the others to the float32 kernel. Where that does not apply (see
:func:`with_quantized_state`: not on the CPU, other dtypes, a fused transform inside a chain or
``inject_hyperparams``, ``flat_state``, the kernels with reductions) the wrapper's generic path
runs.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.backend import step_not_used, with_step
from optimizers.contract.checks import is_float, transformation, with_passed_through
from optimizers.fused.coded import codes_fit
from optimizers.fused.ffi import load_kernels
from optimizers.fused.flat_state import with_flat_state
from optimizers.fused.links import buffers_of


class Kernel(NamedTuple):
    """A kernel as a chain of one rule runs it.

    ``run(grads, state, params, step) -> (outputs, state)``: the chain's update (``step``:
    the new params instead of the updates) over the chain's state, found by name
    (:mod:`optimizers.fused.links`). ``reads``: the per-parameter state fields it reads and
    writes (their dtypes decide whether it runs); ``flat``: those kept as one flat array each
    with ``flat_state=True`` (default ``reads``), or ``None`` where it has no flat layout.
    ``coded``: it also runs on 8-bit codes (its target has a ``_q8`` form).
    """

    run: Callable
    reads: tuple
    flat: Optional[tuple] = ()
    coded: bool = False

    @property
    def flat_fields(self):
        return self.reads if self.flat == () else self.flat


KERNELS: dict[str, Callable[..., Kernel]] = {}  # alias name -> describe(flat, **needs) -> Kernel


def kernel(*names: str):
    """Registers ``describe(flat, **needs) -> Kernel`` as the kernel of the aliases ``names``."""

    def register(describe):
        for name in names:
            KERNELS[name] = describe
        return describe

    return register


def _why_not(grads, params, buffers) -> Optional[str]:
    """Why the kernel cannot run this update (``""``: nothing to update), or ``None`` if it can."""
    if not jax.tree.leaves(grads):
        return ""
    if params is None:
        return "update was called without params"
    if jax.config.jax_enable_x64:
        return "jax_enable_x64 is on (the kernels take float32 hyperparameters)"
    leaves = [x for tree in (grads, params, buffers) for x in jax.tree.leaves(tree) if is_float(x)]
    others = sorted({str(jnp.result_type(x)) for x in leaves} - {"float32"})
    if others:
        return f"the params, gradients or state hold {', '.join(others)} leaves (the kernels take float32)"
    backend = jax.default_backend()
    if backend != "cpu":
        return f"the backend is {backend!r} (the kernels are CPU code; XLA fuses the chain there)"
    return None


def fuse(name: str, chain: optax.GradientTransformation, flat_state: bool = False, **needs
         ) -> optax.GradientTransformation:
    """``chain`` run by the kernel that :data:`KERNELS` describes for ``name``, where it applies.

    The transform's ``update`` writes updates; its ``step`` (:func:`update_and_apply`) the params;
    its ``coded`` runs it on 8-bit state (:func:`with_quantized_state`). Where the kernel does not
    apply, ``chain`` runs, with a warning (once per transform and reason).
    """
    describe = KERNELS.get(name)
    if describe is None:
        warnings.warn(f"{name}: fused=True runs the unfused chain: there is no fused kernel for it", UserWarning,
                      stacklevel=3)
        return chain
    described = describe(flat=flat_state, **needs)
    if flat_state:
        if described.flat is None:
            raise ValueError(f"{name}: flat_state=True is not a layout of its kernel")
        chain = with_flat_state(name, chain, described.flat_fields)
    warned = set()

    def runs(grads, state, params) -> bool:
        reason = _why_not(grads, params, buffers_of(state, described.reads))
        if reason and reason not in warned:
            warned.add(reason)
            warnings.warn(f"{name}: fused=True runs the unfused chain: {reason}", UserWarning, stacklevel=5)
        if reason is None:
            load_kernels()  # the first fused trace on the CPU: XLA needs the targets before lowering
        return reason is None

    def on_cpu(kernel_fn, unfused, *args):  # the CPU branch; a lowering for another platform takes the chain
        return jax.lax.platform_dependent(*args, cpu=kernel_fn, default=unfused)

    def update_fn(grads, state, params=None):
        if not runs(grads, state, params):
            return chain.update(grads, state, params)
        step_not_used(name)
        return on_cpu(lambda g, s, p: described.run(g, s, p, False), chain.update, grads, state, params)

    def step_fn(grads, state, params):
        def unfused(g, s, p):
            updates, s = chain.update(g, s, p)
            return optax.apply_updates(p, updates), s

        if not runs(grads, state, params):
            return unfused(grads, state, params)
        return on_cpu(lambda g, s, p: described.run(g, s, p, True), unfused, grads, state, params)

    stepper = transformation(name, chain.init, step_fn)

    def step(grads, state, params):
        new_params, state = stepper.update(grads, state, params)
        return with_passed_through(params, new_params), state

    def coded(grads, state, params, apply: bool, otherwise: Callable):
        """The kernel on a state whose per-parameter buffers are (some of them) 8-bit codes, or
        ``otherwise(grads, state, params)`` where it does not apply (see :func:`codes_fit`)."""
        if not (runs(grads, state, params) and codes_fit(grads, buffers_of(state, described.reads))):
            return otherwise(grads, state, params)
        if not apply:
            step_not_used(name)
        return on_cpu(lambda g, s, p: described.run(g, s, p, apply), otherwise, grads, state, params)

    return with_step(transformation(name, chain.init, update_fn), step,
                     coded if described.coded and not flat_state else None)


from optimizers.fused import chains as _chains  # noqa: E402,F401  (they fill KERNELS)
from optimizers.fused import directions as _directions  # noqa: E402,F401
