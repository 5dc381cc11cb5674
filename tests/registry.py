"""The optimizers every shared suite runs, one table for all of them.

An optimizer is every alias a rule file declares with ``@declare_optimizer`` (its keyword
arguments for these problems included: chosen so that it reaches the minimum of both test
problems of ``test_optax_contract.py``); the wrappers, each around an alias that passes every
test on its own; and the fused CPU kernels of every alias that has them. Suites loop over
``NAMES`` and never branch on a name.
"""

import functools
import inspect

import optax

import optimizers
from optimizers.contract.registry import declared_optimizers

DECLARED = declared_optimizers()
KWARGS = {name: d.test_kwargs for name, d in DECLARED.items()}
ALIASES = sorted(DECLARED)
# Not in the shared suites, which call ``update(grads, state, params)``: their update needs more; their
# own test files cover jit, a checkpoint round trip, inject_hyperparams and bad input.
UNDECLARED = {"lbfgs": "its update needs value, grad and value_fn (a line search): tests/rules/quasi_newton/test_lbfgs.py",
              "sophia": "update(..., obj_fn=f), the objective for its Hessian estimate: tests/rules/adaptive/test_sophia.py"}
# The wrappers, each around an alias that passes every test on its own: name -> (alias, wrap).
WRAPPED = {
    "weight_ema(adam)": ("adam", lambda tx: optax.chain(tx, optimizers.weight_ema(0.9))),
    "lookahead(adam)": ("adam", lambda tx: optimizers.lookahead(optimizer=tx, sync_period=5, slow_step_size=0.5)),
    "lookahead(sgd)": ("sgd", lambda tx: optimizers.lookahead(optimizer=tx, sync_period=3, slow_step_size=0.8)),
    "swa(adam)": ("adam", lambda tx: optax.chain(tx, optimizers.swa(start_step=10, every=2))),
}
# The one-pass CPU kernels of every alias that has them: the same update, so the same properties.
FUSED = {f"fused({n})": n for n in ALIASES if "fused" in inspect.signature(getattr(optimizers, n)).parameters}
NAMES = ALIASES + sorted([*WRAPPED, *FUSED])
# The names whose runs in low precision (bfloat16, float16) and on complex params are their chain's:
# a fused transform runs its chain there (and warns), so the suites of those dtypes skip the fused names.
CHAIN_NAMES = ALIASES + sorted(WRAPPED)


def factory(name):
    """``(build, kwargs, wrap)``: ``name``'s optimizer is ``wrap(build(**kwargs))``, where
    ``build`` is the alias (with ``fused=True`` bound for a fused name) and ``kwargs`` its ``KWARGS``."""
    if name in FUSED:
        return functools.partial(getattr(optimizers, FUSED[name]), fused=True), KWARGS[FUSED[name]], _unwrapped
    alias, wrap = WRAPPED.get(name, (name, _unwrapped))
    return getattr(optimizers, alias), KWARGS[alias], wrap


def _unwrapped(tx):
    return tx


def make(name, **overrides):
    """``name``'s optimizer; ``overrides`` replace its alias' ``KWARGS``."""
    build, kwargs, wrap = factory(name)
    return wrap(build(**{**kwargs, **overrides}))


def scheduled_names(name):
    """The hyperparameters of ``name`` that take a schedule."""
    sig = inspect.signature(getattr(optimizers, name))
    return [k for k, p in sig.parameters.items() if "ScalarOrSchedule" in str(p.annotation)]


def other_value(v):
    """A different value in the same range: 0 -> 0.1, (0, 1) -> sqrt, >= 1 -> half."""
    if callable(v):
        return lambda t: 0.5 * v(t)
    return 0.1 if v == 0 else v**0.5 if v < 1 else v / 2
