r"""The chain's state as the kernels read it: links found by their fields, scalars by name.

A fused transform's state is its chain's: a tuple with one state per link. A kernel finds the
links it reads by what they hold, never by their position in the chain: :func:`find` gives the
first link with the named fields (``"mu", "nu"``: the moments of Adam's direction; ``"trace"``:
a momentum) or whose hyperparameters are exactly the named ones (``"learning_rate"``: the
learning-rate link; ``"weight_decay"``: :func:`add_decayed_weights`). Its scalars are named too:
each kernel lists them in the order of its C++ source (``scalars=("b1", "ob1", ...)``, the
names of the C++ variables, then ``nlr``, :math:`-\gamma_t`) and computes them as a dict;
:func:`hyper` checks the names and stacks them in that order.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from optimizers.contract.hyperparams import current_hyperparams
from optimizers.contract.masks import leaf_masks


def _has(link, fields, hyper) -> bool:
    names = getattr(link, "_fields", ())
    if not all(f in names for f in fields):
        return False
    return hyper is None or ("hyperparams" in names and set(link.hyperparams) == set(hyper))


def find(state, *fields: str, hyper: Optional[tuple] = None) -> Optional[int]:
    """The index in the chain's ``state`` of the first link with ``fields``, whose hyperparameters
    (with ``hyper``) are exactly those names; ``None`` if there is none."""
    return next((i for i, link in enumerate(state) if _has(link, fields, hyper)), None)


def learning_rate_link(state) -> int:
    """The learning-rate link, the last one whose only hyperparameter is the learning rate."""
    return max(i for i, link in enumerate(state) if _has(link, (), ("learning_rate",)))


def buffers_of(state, fields) -> list:
    """The per-parameter buffers named ``fields``, in every link that holds one (for the dtype checks)."""
    return [getattr(link, f) for link in state for f in fields if f in getattr(link, "_fields", ())]


def hyper(names: tuple, values: dict):
    """The kernel's scalars: ``values`` in the C++ order ``names``, as one float32 vector."""
    if set(values) != set(names):
        raise AssertionError(f"kernel scalars: got {sorted(values)}, the kernel takes {names}")
    return jnp.stack([values[name] for name in names]).astype(jnp.float32)


def advance(link, **values):
    """(hyperparameters of this update, the link's state after it) for a link holding ``values``."""
    hp = current_hyperparams(values, link.hyperparams, link.count)
    return hp, link._replace(count=optax.safe_increment(link.count), hyperparams=hp)


def tick(link):
    """A link without hyperparameters after this update (or optax's identity, as it is)."""
    return advance(link)[1] if hasattr(link, "hyperparams") else link


def leaf_decays(decay_link, lam, mask, params):
    """The weight decay of each float leaf: :math:`\\lambda` where the mask is on, else 0."""
    if decay_link is None:
        return [lam] * len(jax.tree.leaves(params))
    return [lam if on else jnp.zeros_like(lam) for on in jax.tree.leaves(leaf_masks(mask, params))]


def leaf_flags(mask, params):
    """1.0 for each leaf the mask selects, else 0.0 (a kernel's per-leaf switch)."""
    return [jnp.float32(on) for on in jax.tree.leaves(leaf_masks(mask, params))]
