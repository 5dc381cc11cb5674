r"""How a rule asks for an accelerated form of its chain, and the in-place step :func:`update_and_apply`.

A rule's alias builds its chain (the definition, what runs everywhere) and hands it, for
``fused=True``, to :func:`accelerated` with what a kernel needs (the hyperparameters as
given, numbers or schedules, and the options). Only then is the fused CPU backend
(``optimizers.fused``) imported: it keeps the description of each kernel (the state fields it
reads and writes by name, its scalars by name) keyed by the alias's name, and returns the
chain run by that kernel. A rule imports nothing else of it; an optimizer without a kernel
never calls :func:`accelerated`.

A transform that can write the params in place carries that step with it: it is a
:class:`SteppedGradientTransformation` (an ``optax.GradientTransformation``: ``init`` and ``update``,
with two attributes), and :func:`update_and_apply` runs its ``step``. A combinator that builds
a new transform around it (``optax.chain``, ``optax.inject_hyperparams``, ``optax.masked``,
``optax.MultiSteps``, :func:`apply_if_finite`, :func:`lookahead`, ...) keeps its ``update``
(the kernel still writes the updates in one pass) but not the step: :func:`update_and_apply`
on the outer transform runs ``update`` then ``optax.apply_updates``, and warns once per
transform that it found a step it could not use. :func:`with_quantized_state` is the one
wrapper that uses its inner transform's ``coded`` kernel (the kernel on 8-bit state).
"""

from __future__ import annotations

import contextvars
import warnings
import weakref
from typing import Callable, Optional

import numpy as np
import optax

from optimizers.contract.checks import floats_only, with_passed_through


def _stepped(base: type) -> type:
    class Stepped(base):
        """``base`` with ``step(grads, state, params) -> (new_params, new_state)``, the in-place step
        that :func:`update_and_apply` runs, and ``coded``, the kernel :func:`with_quantized_state`
        runs on 8-bit state (or ``None``)."""

        step: Optional[Callable] = None
        coded: Optional[object] = None

        def __new__(cls, init, update, step=None, coded=None):
            self = super().__new__(cls, init, update)
            self.step, self.coded = step, coded
            return self

    Stepped.__name__ = Stepped.__qualname__ = "Stepped" + base.__name__
    return Stepped


SteppedGradientTransformation = _stepped(optax.GradientTransformation)
SteppedGradientTransformationExtraArgs = _stepped(optax.GradientTransformationExtraArgs)


def with_step(tx: optax.GradientTransformation, step: Callable, coded=None) -> optax.GradientTransformation:
    """``tx`` carrying its in-place ``step`` (and ``coded``, its kernel on 8-bit state)."""
    if isinstance(tx, optax.GradientTransformationExtraArgs):
        return SteppedGradientTransformationExtraArgs(tx.init, tx.update, step, coded)
    return SteppedGradientTransformation(tx.init, tx.update, step, coded)


def check_flat_state(owner: str, fused: bool, flat_state: bool) -> None:
    """Raises ``ValueError`` for a ``fused`` or ``flat_state`` that is not a bool (``fused="no"`` is
    truthy), and for ``flat_state`` without ``fused``."""
    for name, value in (("fused", fused), ("flat_state", flat_state)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    if flat_state and not fused:
        raise ValueError(f"{owner}: flat_state=True needs fused=True (it is the fused kernel's layout)")


def accelerated(name: str, chain: optax.GradientTransformation, *, fused: bool, flat_state: bool = False,
                unsupported: Optional[str] = None, **needs) -> optax.GradientTransformation:
    """``chain``, or with ``fused=True`` ``chain`` run by the fused CPU backend's kernel for ``name``.

    ``needs``: what the kernel needs, as the alias got it (hyperparameters as numbers or
    schedules, masks, options, and the rule's own helpers where the kernel takes a value the
    chain computes); the backend's description of ``name`` says which. ``flat_state``: the
    per-parameter state as one flat array per buffer (the kernel's layout; needs ``fused``).
    ``unsupported``: why the kernel cannot run this instance (an option it does not have):
    ``fused=True`` then returns ``chain``, with a warning.

    Nothing is compiled here: the backend compiles its library at the first trace of a fused
    update on the CPU.
    """
    check_flat_state(name, fused, flat_state)
    if not fused:
        return chain
    if unsupported:
        warnings.warn(f"{name}: fused=True runs the unfused chain: {unsupported}", UserWarning, stacklevel=3)
        return chain
    from optimizers.fused import backend  # only now: the rules import no backend

    return backend.fuse(name, chain, flat_state, **needs)


_OUTER = contextvars.ContextVar("optimizers_update_and_apply_outer", default=None)
_WARNED = weakref.WeakSet()  # the outer transforms' updates already warned about


def step_not_used(owner: str) -> None:
    """Called by a transform with a step (a fused one) whose ``update`` runs: inside
    :func:`update_and_apply` of a transform that wraps it, warns (once per outer transform) that
    its in-place step is not used."""
    outer = _OUTER.get()
    if outer is None:
        return
    try:
        if outer in _WARNED:
            return
        _WARNED.add(outer)
    except TypeError:  # an update that takes no weak reference: warned each time
        pass
    warnings.warn(f"update_and_apply: the transform wraps a fused {owner} whose in-place step it cannot reach "
                  f"(optax.chain, inject_hyperparams and the wrappers keep its update, not its step); it runs "
                  f"update, then optax.apply_updates. Pass the fused transform itself to update_and_apply for "
                  f"the in-place step (see docs/guides/fused_kernels.md)", UserWarning, stacklevel=4)


def update_and_apply(tx: optax.GradientTransformation, grads, state, params):
    r"""One optimizer step: ``(new_params, new_state)``.

    For a transform made with ``fused=True`` (:func:`adam`, :func:`adamw`, :func:`amsgrad`,
    :func:`adamax`, :func:`adax`, :func:`nadam`, :func:`radam`, :func:`sgd`, :func:`lion`,
    :func:`adagrad`, :func:`amos`, :func:`adadelta`, :func:`rmsprop`, :func:`rprop`,
    :func:`funnelled_sgdm`, :func:`novograd`, :func:`sm3`, :func:`lamb`, :func:`lars`,
    :func:`adafactor`) on the CPU, its kernel, which writes the params in place (donate them,
    and the state, to ``jax.jit``); the same for :func:`with_quantized_state`'s step. For any
    other transform, ``tx.update`` then ``optax.apply_updates`` (to the float leaves: integer
    params are kept), so a train step written with it works with every optimizer. A transform
    that wraps a fused one (``optax.chain``, ``inject_hyperparams``, a wrapper) does not have its
    step: then it warns once per transform (see the module's docstring).
    """
    step = getattr(tx, "step", None)
    if step is not None:
        return step(grads, state, params)
    token = _OUTER.set(getattr(tx, "update", None))
    try:
        updates, state = tx.update(grads, state, params)
    finally:
        _OUTER.reset(token)
    new = optax.apply_updates(floats_only(params), floats_only(updates))
    return with_passed_through(params, new), state
