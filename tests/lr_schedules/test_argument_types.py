"""Every schedule builder checks its arguments' types when it is called, naming the argument:
a string for a number, a schedule where a step count goes (``warmup(100, schedule)``, the
arguments swapped), a fraction of a step. Nothing is left to fail at the first update."""

import inspect

import pytest

import schedules

BUILDERS = sorted(n for n in schedules.__all__ if inspect.isfunction(getattr(schedules, n)) and n != "resolve")
# A valid call of each builder, to which one wrong argument is added.
VALID = {
    "constant": dict(value=0.1), "cosine": dict(init_value=0.1, decay_steps=10),
    "cyclical": dict(base_value=0.01, max_value=0.1, step_size=5), "factor": dict(init_value=0.1, factor=0.9),
    "join": dict(schedules=[0.1, 0.01], boundaries=[5]), "lr_range": dict(),
    "multi_factor": dict(init_value=0.1, factor=0.5, milestones=[5]), "one_cycle": dict(total_steps=20, peak_value=0.1),
    "polynomial": dict(init_value=0.1, end_value=0.0, power=2.0, decay_steps=10),
    "sgdr": dict(init_value=0.1, first_cycle_steps=10), "swa_lr": dict(init_value=0.1, swa_value=0.01),
    "warmup": dict(schedule=0.1, warmup_steps=5), "wsd": dict(peak_value=0.1, total_steps=100),
    "lr_finder": dict(loss_fn=lambda p, b: 0.0, params={}, batches=[], optimizer=lambda lr: None),
}
WRONG = {"float": ["0.1", [0.1], lambda t: t, True], "int": ["10", 10.5, lambda t: t, None, True],
         "ScalarOrSchedule": ["0.1", [0.1, 0.2]]}


def _cases():
    for name in BUILDERS:
        for param, p in inspect.signature(getattr(schedules, name)).parameters.items():
            for value in WRONG.get(str(p.annotation), []):
                yield name, param, value


@pytest.mark.parametrize("name,param,value", list(_cases()))
def test_a_wrong_type_is_a_value_error_naming_it(name, param, value):
    with pytest.raises(ValueError, match=rf"{name}: {param} must be"):
        getattr(schedules, name)(**{**VALID[name], param: value})


def test_every_builder_has_a_valid_call_and_cases():
    assert set(VALID) == set(BUILDERS)
    assert {name for name, _, _ in _cases()} >= set(BUILDERS) - {"join"}


def test_the_swapped_warmup_names_the_step_count():
    with pytest.raises(ValueError, match="warmup: warmup_steps must be a whole number of steps"):
        schedules.warmup(100, schedules.cosine(0.1, 100))


def test_whole_floats_and_scalar_arrays_are_accepted():
    import jax.numpy as jnp

    assert float(schedules.cosine(jnp.asarray(0.1), 1e3)(0)) == pytest.approx(0.1)
