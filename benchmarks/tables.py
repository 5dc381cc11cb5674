"""What the benchmark measures: the aliases and their hyperparameters, their optax and torch
counterparts, the bytes each must move, and the rows' variants (``adam fused``)."""

from __future__ import annotations

import inspect
import math


LR = 1e-3


def _optimizers():
    import optimizers
    return optimizers


def aliases() -> list[str]:
    """Every optimizer alias: the optimizers the rules declare (the README's table), those whose
    ``update`` takes only the gradients (``lbfgs``'s and ``sophia``'s need the objective)."""
    _optimizers()
    from optimizers.contract.registry import declared_optimizers

    return sorted(n for n, d in declared_optimizers().items() if d.update)


def _parameters(fn):
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


# Our hyperparameters, where an alias needs more than the learning rate or where its
# defaults differ from the counterparts' (the counterparts below use the same values).
KWARGS = {
    "adadelta": dict(learning_rate=1.0),
    "adafactor": dict(learning_rate=LR, relative_step=False),  # optax's adafactor has no relative step
    "adamw": dict(learning_rate=LR, weight_decay=0.01),
    "amos": dict(learning_rate=LR, eta=0.5),
    "lamb": dict(learning_rate=LR, weight_decay=0.01),
    "lars": dict(learning_rate=LR, weight_decay=0.0, trust_coefficient=0.001, momentum=0.9),
    "lion": dict(learning_rate=LR, b1=0.9, b2=0.99, weight_decay=1.0),
    "muon": dict(learning_rate=LR, form="optax"),  # optax.contrib.muon's variant, step for step
    "sgd": dict(learning_rate=LR, momentum=0.9),
    "sm3": dict(learning_rate=LR, momentum=0.9),  # optax's default momentum
}


def kwargs(name: str) -> dict:
    return KWARGS.get(name, dict(learning_rate=LR))


# optax's version of each algorithm, with the same hyperparameters (given the optax module).
OPTAX = {
    "adadelta": lambda optax: optax.adadelta(1.0, rho=0.9, eps=1e-6),
    "adafactor": lambda optax: optax.adafactor(LR),
    "adagrad": lambda optax: optax.adagrad(LR, initial_accumulator_value=0.0, eps=1e-10),  # eps inside the root
    "adam": lambda optax: optax.adam(LR),
    "adamax": lambda optax: optax.adamax(LR),
    "adamw": lambda optax: optax.adamw(LR, weight_decay=0.01),
    "amsgrad": lambda optax: optax.amsgrad(LR),
    "schedule_free_adamw": lambda optax: optax.contrib.schedule_free_adamw(LR),  # = ours without a warm-up
    "schedule_free_sgd": lambda optax: optax.contrib.schedule_free_sgd(LR),
    "lamb": lambda optax: optax.lamb(LR, eps=1e-8, weight_decay=0.01),
    "lars": lambda optax: optax.lars(LR, weight_decay=0.0, trust_coefficient=0.001, momentum=0.9),
    "lion": lambda optax: optax.lion(LR, b1=0.9, b2=0.99, weight_decay=1.0),
    "muon": lambda optax: optax.contrib.muon(LR),
    "nadam": lambda optax: optax.nadam(LR),  # constant b1 (no momentum schedule)
    "novograd": lambda optax: optax.novograd(LR, b1=0.9, b2=0.25, eps=1e-8),
    "radam": lambda optax: optax.radam(LR),
    "rmsprop": lambda optax: optax.rmsprop(LR, decay=0.99, eps=1e-8, eps_in_sqrt=False),
    "rprop": lambda optax: optax.rprop(LR),  # optax's form (see optimizers.scale_by_rprop)
    "scale_by_learning_rate": lambda optax: optax.scale_by_learning_rate(LR),
    "sgd": lambda optax: optax.sgd(LR, momentum=0.9),
    "sm3": lambda optax: optax.sm3(LR, momentum=0.9),
}


# torch.optim class name and keyword arguments; fused=True is tried for every one and
# reported where PyTorch's CPU build accepts it.
TORCH = {
    "adadelta": ("Adadelta", dict(lr=1.0, rho=0.9, eps=1e-6)),
    "adafactor": ("Adafactor", dict(lr=LR)),  # relative step and factoring differ (see optimizers.adafactor)
    "adagrad": ("Adagrad", dict(lr=LR, eps=1e-10)),
    "adam": ("Adam", dict(lr=LR)),
    "adamax": ("Adamax", dict(lr=LR)),
    "adamw": ("AdamW", dict(lr=LR, weight_decay=0.01)),
    "amsgrad": ("Adam", dict(lr=LR, amsgrad=True)),  # PyTorch's max over the raw v
    "nadam": ("NAdam", dict(lr=LR)),
    "radam": ("RAdam", dict(lr=LR)),
    "rmsprop": ("RMSprop", dict(lr=LR, alpha=0.99, eps=1e-8)),
    "rprop": ("Rprop", dict(lr=LR, etas=(0.5, 1.2), step_sizes=(LR * 1e-4, LR * 5e3))),
    "scale_by_learning_rate": ("SGD", dict(lr=LR)),
    "sgd": ("SGD", dict(lr=LR, momentum=0.9)),
}


# Bytes each update must move per float32 parameter: read g and theta, write theta (12),
# read and write every per-parameter state buffer (8 each), plus the extra pass a per-leaf
# norm forces (the norm must be known before the first element of the leaf is written).
MIN_BYTES = {
    "scale_by_learning_rate": 12,  # g, theta
    "scale_by_relative_step": 12,
    "sgd": 20,  # + momentum
    "rmsprop": 20,  # + v
    "adagrad": 20,  # + sum of squares
    "lion": 20,  # + m
    "adam": 28, "adamw": 28, "adamax": 28, "nadam": 28, "radam": 28, "adax": 28,  # + m, v
    "adadelta": 28,  # + v, accumulated squared steps
    "rprop": 28,  # + step sizes, previous gradient
    "amos": 28,  # + v, b (element granularity)
    "amsgrad": 36,  # + m, v, max v
    "novograd": 24,  # pass 1 reads g for ||g||; pass 2: g, theta, m -> theta, m
    "lars": 28,  # pass 1 reads g, theta for the norms; pass 2: g, theta, m -> theta, m
    "lamb": 40,  # pass 1: g, theta, m, v -> m, v and both norms; pass 2: theta, m, v -> theta
    "funnelled_sgdm": 44,  # pass 1: u, g for the global u.g; pass 2: g, theta, p, m, u -> theta, p, m, u
}


# Sublinear state: the bytes depend on which leaves have per-element statistics (a vector's
# Adafactor moment, SM3's cover of a vector), so they are computed from the state bytes per
# parameter by SUBLINEAR[name](per-element state bytes).
SUBLINEAR = {
    # a factored matrix: g, theta for the row/column sums and RMS(theta); g again for the
    # clipped update's RMS; g, theta -> theta (24). A leaf with its full v (and with b1, its
    # momentum) also reads v in the first pass and the second, and writes it: + 2 x 4 bytes
    # per buffer.
    "adafactor": lambda per_element: 24 + 2 * per_element,
    # covers reduced in the same pass; g, theta and every per-element buffer (a vector's
    # accumulator, the momentum) read and written once
    "sm3": lambda per_element: 12 + 2 * per_element,
}


def min_bytes(name: str, state_bytes_per_param: float) -> float:
    """The bytes ``name`` must move per parameter: ``MIN_BYTES[name]``; for the sublinear-state
    algorithms from their per-element state (the statistics of factored leaves and covers left
    out); for an alias in neither, 12 + 2 x its state bytes per parameter."""
    if name in SUBLINEAR:
        return SUBLINEAR[name](4 * math.floor(state_bytes_per_param / 4 + 1e-9))
    return MIN_BYTES.get(name, 12 + 2 * round(state_bytes_per_param))


# Rows "alias variant" (stepped with optimizers.update_and_apply): the alias built with these.
VARIANTS = {"fused": dict(fused=True), "fused flat": dict(fused=True, flat_state=True)}
FUSED = ("adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "adax", "amos", "amsgrad", "funnelled_sgdm",
         "lamb", "lars", "lion", "nadam", "novograd", "radam", "rmsprop", "rprop", "sgd", "sm3")
FLAT = ("adam", "adamw", "sgd")  # with flat_state
# The aliases that have each variant's row (after the alias's own, in this order).
VARIANT_ROWS = {"fused": FUSED, "fused flat": FLAT}
SMOKE_ONLY = ("adam", "adam fused", "adam fused flat", "lamb")


def split_variant(name: str) -> tuple[str, str]:
    """``"adam fused flat"`` -> ``("adam", "fused flat")``; an alias -> ``(name, "")``."""
    base, _, variant = name.partition(" ")
    if variant and variant not in VARIANTS:
        raise ValueError(f"benchmark: unknown variant {variant!r} of {base!r} (known: {sorted(VARIANTS)})")
    return base, variant


def with_variants(names: list[str]) -> list[str]:
    """``names`` with the rows of each alias's variants after it (``adam``, ``adam fused``, ``adam fused flat``)."""
    return [row for n in names for row in [n] + [f"{n} {variant}" for variant, among in VARIANT_ROWS.items()
                                                  if n in among]]
