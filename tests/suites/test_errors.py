"""Every public constructor rejects out-of-range hyperparameters with a ValueError naming them.

A constructor is every function in ``optimizers.__all__`` that returns a transformation;
every one of its parameters that takes a number or a string must have bad values in
``BAD``, so a new constructor or parameter is enrolled automatically.
"""

import inspect

import pytest
from registry import ALIASES, KWARGS

import optimizers

NAN = float("nan")
UNIT = [-0.1, 1.0, NAN]  # allowed: [0, 1)
BAD = {
    "learning_rate": [-0.1, NAN],
    "b1": UNIT, "b2": UNIT, "b3": UNIT, "alpha": [-0.1, NAN], "decay": UNIT, "momentum": UNIT, "rho": UNIT,
    "eps": [-1e-8, 0.0, NAN],
    "weight_decay": [-1e-4, NAN],
    "initial_accumulator_value": [-0.1, NAN],
    "initial_scale": [-0.1, NAN],
    "momentum_decay": [-0.004, NAN],
    "threshold": [3.9, NAN],
    "max_over": ["bias"],
    "factor": [0.0, 1.0, NAN],
    "patience": [-1, NAN],
    "threshold_mode": ["relative"],
    "cooldown": [-1],
    "min_scale": [-0.1, 1.5, NAN],
    "mode": ["minimum"],
    "accumulation_size": [0],
    "sync_period": [0, NAN],
    "slow_step_size": [-0.1, 1.1, NAN],
    "start_step": [-1, NAN],
    "every": [0, NAN],
    "trust_coefficient": [0.0, -0.1, NAN],
    "min_param_norm": [-0.1, float("inf"), NAN],
    "max_param_norm": [0.0, -1.0, NAN],
    "eta_plus": [1.0, 0.5, NAN],
    "eta_minus": [0.0, 1.0, NAN],
    "max_scale": [0.5, NAN],
    "form": ["bogus"], "normalize": ["bogus"],
    "xi": [-0.1, NAN],
    "eta": [-0.1, NAN],
    "beta": UNIT,
    "c_coef": [-0.25, NAN],
    "d_coef": [-0.25, NAN],
    "granularity": ["bogus"],
    "gamma_p": [-1e-3, NAN],
    "gamma_s": [-1e-3, NAN],
    "decay_rate": [-0.1, 1.5, NAN],
    "clipping_threshold": [0.5, NAN],
    "min_dim_size_to_factor": [0, NAN],
    "eps_root": [-1e-8, NAN],
    "variant": ["III"],
    "dtype": ["int32", "complex64", "bogus"],
    "max_consecutive_skips": [0, -1, 1.5, NAN],
    # optax's keywords
    "max_consecutive_errors": [0, -1, 1.5, NAN],
    "shampoo_beta": UNIT, "precondition_frequency": [0, -1, 1.5, NAN], "max_precond_dim": [0, -1, 1.5, NAN],
    "decay_offset": [-1, NAN], "step_offset": [-1, NAN],
    "weight_decay_rate": [-1e-4, NAN],
    "min_norm": [-0.1, NAN],
    "rtol": [-1e-4, NAN], "atol": [-1e-4, NAN],
    "min_step_size": [-0.1, 0.0, NAN], "max_step_size": [-0.1, 0.0, NAN],
    "epsilon": [-1e-8, 0.0, NAN],
    "smooth_beta": [0.0, -1.0, NAN],
    # muon
    "ns_coeffs": ["bogus"], "ns_steps": [0, 1.5, NAN], "preconditioning": ["bogus"],
    "consistent_rms": [0.0, -0.1, NAN], "adjust_lr": ["bogus"],
    "normalization": ["bogus"], "beta2": UNIT,
    "adam_b1": UNIT, "adam_b2": UNIT, "adam_eps": [-1e-8, 0.0, NAN], "adam_eps_root": [-1e-8, NAN],
    "adam_weight_decay": [-1e-4, NAN], "adam_learning_rate": [-0.1, NAN],
    # prodigy (optax's names, then prodigyopt's); a tuple's repr is no regex, so betas' bad values are not pairs
    "betas": [0.9, NAN], "beta3": UNIT, "estim_lr0": [0.0, -1e-6, NAN], "estim_lr_coef": [0.0, -1.0, NAN],
    "d0": [0.0, -1e-6, NAN], "growth_rate": [0.5, NAN],
    "init_step": ["bogus", NAN],  # dog's (tag, value): a tuple's repr is no regex either
    "init_estim_sq_dist": [0.0, -1e-4, NAN],  # dowg's
    "log_every": [-1, 1.5, NAN],  # dadapt_adagrad
    # schedule-free
    "weight_lr_power": [-1.0, NAN], "r": [-0.5, NAN], "warmup_steps": [-1, 1.5, NAN],
    # asgd (torch.optim.ASGD's names)
    "lambd": [-1e-4, NAN], "t0": [-1.0, NAN],
    # lbfgs and its line searches (optax's names)
    "memory_size": [0, NAN], "max_linesearch_steps": [0, -1, NAN], "max_backtracking_steps": [-1, NAN],
    "tol": [-1e-3, NAN], "increase_factor": [0.5, NAN],
    "decrease_factor": [0.0, 1.0, NAN], "slope_rtol": [0.0, 1.0, NAN], "curv_rtol": [0.0, NAN],
    "approx_dec_rtol": [-1e-6, NAN], "stepsize_precision": [-1e-5, NAN], "initial_guess_strategy": ["bogus"],
    # fromage, noisy_sgd, the optimistic rules, polyak_sgd
    "gamma": [-0.1, NAN], "optimism": [-0.1, NAN], "seed": [-1.5],
    "f_min": [NAN], "max_learning_rate": [0.0, -0.1, NAN], "scaling": [0.0, -0.1, NAN],
    # sophia
    "batch_axis_name": [1],  # sam's
    "clip_threshold": [0.0, -1.0, NAN], "update_interval": [0, 1.5, NAN], "print_win_rate_every_n_steps": [-1, NAN],
    # with_quantized_state
    "bits": [4, 3, NAN], "block_size": [0, 100, NAN], "min_size": [0, -1],
    # shampoo
    "start_preconditioning_step": [-1, 1.5, NAN], "max_preconditioner_dim": [0, -1, 1.5, NAN],
    "grafting": ["bogus"], "graft_b2": UNIT, "graft_eps": [-1e-8, NAN],
}
# Where one constructor gives a name another range than BAD's.
OVERRIDES = {
    ("soap", "eps"): [-1e-8, NAN],  # 0 is allowed by the authors' SOAP
    ("scale_by_soap", "eps"): [-1e-8, NAN],
    ("reduce_on_plateau", "eps"): [-1e-8, NAN],  # the smallest applied change of the scale: 0 is fine
    ("reduce_on_plateau", "threshold"): [-1e-4, NAN],
    ("weight_ema", "decay"): [-0.1, 1.1, NAN],  # 1 (a frozen average) is allowed
    ("adafactor", "min_scale"): [-1e-3, 0.0, NAN],  # Adafactor's eps2: any positive number
    ("scale_by_param_block_rms", "min_scale"): [-1e-3, 0.0, NAN],
    ("clip_by_block_rms", "threshold"): [0.5, NAN],  # optax's name for clipping_threshold
    ("scale_by_sm3", "eps"): [-1e-8, NAN],  # optax's name for eps_root: 0 is fine
    ("scale_by_sm3", "b2"): [-0.1, 1.1, NAN],  # 1: the sum
    ("scale_by_trust_ratio", "eps"): [-1e-8, NAN],  # optax's default 0 is fine
    ("scale_by_lars", "eps"): [-1e-8, NAN],
    ("lars", "eps"): [-1e-8, NAN],
    ("muon", "eps"): [-1e-8, NAN],  # 0 is torch.optim.Muon's clamp at 0 (a zero matrix stays zero)
    ("scale_by_muon", "eps"): [-1e-8, NAN],
    ("normuon", "eps"): [-1e-8, NAN],
    ("dog", "eps"): [-1e-8, NAN],  # under the root with G_t: the paper's 0 is fine
    ("scale_by_dog", "eps"): [-1e-8, NAN],
    ("schedule_free_adamw", "eps"): [-1e-8, NAN],  # 0 is allowed by schedulefree.AdamWScheduleFree
    ("scale_by_schedule_free_adam", "eps"): [-1e-8, NAN],
    ("scale_by_optimistic_gradient", "beta"): [-0.1, NAN],  # any weight >= 0 of the direction's change
    ("optimistic_gradient_descent", "beta"): [-0.1, NAN],
    ("optimistic_adam_v2", "beta"): [-0.1, NAN],
    ("sam", "rho"): [-0.1, NAN],  # the adversarial radius: any rho >= 0
    ("scale_by_polyak", "eps"): [-1e-8, NAN],  # optax's default 0: a zero gradient takes no step
    ("polyak_sgd", "eps"): [-1e-8, NAN],
    ("shampoo", "b2"): [0.0, 1.1, NAN],  # 1: the paper's sum of the statistics
    ("scale_by_shampoo", "b2"): [0.0, 1.1, NAN],
    ("shampoo", "block_size"): [0, -1, 1.5, NAN],  # any block length > 0 (BAD's 100 is with_quantized_state's)
    ("scale_by_shampoo", "block_size"): [0, -1, 1.5, NAN],
}
CONSTRUCTORS = sorted(n for n in optimizers.__all__
                      if "GradientTransformation" in str(inspect.signature(getattr(optimizers, n)).return_annotation))


def _checked_parameters(name):
    sig = inspect.signature(getattr(optimizers, name))
    return [k for k, p in sig.parameters.items()
            if any(t in str(p.annotation) for t in ("ScalarOrSchedule", "float", "int", "str"))]


def test_every_numeric_parameter_has_bad_values():
    assert CONSTRUCTORS, "no constructors found"
    missing = {(n, k) for n in CONSTRUCTORS for k in _checked_parameters(n) if k not in BAD}
    assert not missing


def _required(name):
    sig = inspect.signature(getattr(optimizers, name))
    return {k: 0.1 for k, p in sig.parameters.items() if p.default is inspect.Parameter.empty}


CASES = [(n, k, v) for n in CONSTRUCTORS for k in _checked_parameters(n) for v in OVERRIDES.get((n, k), BAD[k])]


@pytest.mark.parametrize("name,param,value", CASES)
def test_bad_value_raises(name, param, value):
    with pytest.raises(ValueError, match=rf"{param} must be .*got {value!r}"):
        getattr(optimizers, name)(**{**_required(name), param: value})


# optax's ``learning_rate=None`` means "no scaling" here too for these (Adafactor's relative step).
NONE_IS_A_LEARNING_RATE = ["adafactor", "scale_by_relative_step"]


@pytest.mark.parametrize("name", [n for n in ALIASES if n not in NONE_IS_A_LEARNING_RATE])
def test_none_learning_rate_is_refused_when_built(name):
    """``adam(None)`` fails when it is built, naming the argument, not at the first update."""
    with pytest.raises(ValueError, match="learning_rate must be a real number or a schedule"):
        getattr(optimizers, name)(**{**KWARGS[name], "learning_rate": None})


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_defaults_are_accepted(name):
    getattr(optimizers, name)(**_required(name))


def test_a_broken_constructor_fails_the_range_property(monkeypatch):
    """The suite can fail: optax's own ``sgd`` accepts a negative learning rate."""
    import optax

    monkeypatch.setattr(optimizers, "sgd", optax.sgd)
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        test_bad_value_raises("sgd", "learning_rate", -0.1)


@pytest.mark.parametrize("name", sorted(n for n in CONSTRUCTORS
                                        if "fused" in inspect.signature(getattr(optimizers, n)).parameters))
@pytest.mark.parametrize("option", ["fused", "flat_state"])
def test_fused_options_must_be_bools(name, option):
    """``fused="no"`` is truthy: a non-bool is refused, naming the option."""
    if option not in inspect.signature(getattr(optimizers, name)).parameters:
        pytest.skip(f"{name} has no {option}")
    with pytest.raises(ValueError, match=rf"{option} must be True or False, got 'no'"):
        getattr(optimizers, name)(**{**_required(name), option: "no"})


@pytest.mark.parametrize("value", ["0.1", [1e-3, 2e-3], True, 1j])
@pytest.mark.parametrize("name", ["adam", "sgd", "lamb", "muon", "scale_by_adam"])
def test_wrong_types_are_refused_when_built(name, value):
    """A string, a list, a bool or a complex number is refused when the optimizer is built, naming
    the argument (``adam("0.1")`` used to be accepted)."""
    param = "learning_rate" if "learning_rate" in inspect.signature(getattr(optimizers, name)).parameters else "b1"
    with pytest.raises(ValueError, match=rf"{param} must be a real number or a schedule"):
        getattr(optimizers, name)(**{**_required(name), param: value})
