"""Every schedule with a PyTorch counterpart against torch.optim.lr_scheduler, step by step."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as L

import schedules

STEPS = 1200


def _torch_values(make_scheduler, steps=STEPS, lr=1.0, momentum=0.0, key="lr"):
    """The value of ``key`` (lr or momentum) in force at each step of a PyTorch scheduler."""
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=lr, momentum=momentum)
    sched = make_scheduler(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            out.append(opt.param_groups[0][key])
            opt.step()
            sched.step()
    return np.array(out)


def _ours(schedule, steps=STEPS):
    values = jax.jit(jax.vmap(schedule))(jnp.arange(steps))
    eager = np.array([float(schedule(t)) for t in range(0, steps, 97)])
    np.testing.assert_allclose(values[::97], eager, rtol=1e-6)  # jit and vmap equal eager evaluation
    return np.asarray(values, np.float64)


def _check(ours, want):
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-12)


def test_factor_is_exponential_lr():
    _check(_ours(schedules.factor(0.5, 0.995)), _torch_values(lambda o: L.ExponentialLR(o, 0.995), lr=0.5))


def test_factor_floor():
    got = _ours(schedules.factor(0.5, 0.99, min_value=0.01))
    want, eta = [], 0.5
    for _ in range(STEPS):
        want.append(eta)
        eta = max(0.01, eta * 0.99)
    _check(got, np.array(want))


def test_multi_factor_is_multistep_and_step_lr():
    _check(_ours(schedules.multi_factor(0.3, 0.5, milestones=[100, 350, 351, 900])),
           _torch_values(lambda o: L.MultiStepLR(o, [100, 350, 351, 900], 0.5), lr=0.3))
    _check(_ours(schedules.multi_factor(0.3, 0.7, step_size=150)),
           _torch_values(lambda o: L.StepLR(o, 150, 0.7), lr=0.3))


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_polynomial_is_polynomial_lr(power):
    _check(_ours(schedules.polynomial(0.1, 0.0, power, 1000)),
           _torch_values(lambda o: L.PolynomialLR(o, total_iters=1000, power=power), lr=0.1))


def test_cosine_is_cosine_annealing_lr_up_to_t_max():
    got = _ours(schedules.cosine(0.1, 1000, end_value=1e-4))
    want = _torch_values(lambda o: L.CosineAnnealingLR(o, T_max=1000, eta_min=1e-4), lr=0.1)
    _check(got[:1001], want[:1001])
    assert np.all(got[1000:] == np.float32(1e-4))  # held, where PyTorch turns back up


@pytest.mark.parametrize("mode", ["linear", "cos"])
def test_warmup_then_cosine_is_sequential_lr(mode):
    got = _ours(schedules.warmup(schedules.cosine(0.1, 900, 1e-4), 100, start_value=0.01, mode=mode))
    if mode == "linear":
        want = _torch_values(lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=100),
                                                          L.CosineAnnealingLR(o, T_max=900, eta_min=1e-4)], [100]),
                             lr=0.1)
    else:
        ramp = [0.01 + (0.1 - 0.01) * (1 - np.cos(np.pi * t / 100)) / 2 for t in range(100)]
        rest = [1e-4 + (0.1 - 1e-4) * (1 + np.cos(np.pi * min(t, 900) / 900)) / 2 for t in range(STEPS - 100)]
        want = np.array(ramp + rest)
    _check(got[:1000], want[:1000])


def test_join_is_sequential_lr():
    got = _ours(schedules.join([schedules.factor(0.2, 0.99), schedules.multi_factor(0.1, 0.5, step_size=100),
                                schedules.constant(0.1)], [300, 800]))
    # SequentialLR restarts each scheduler at its milestone from the optimizer's initial lr,
    # so equal initial values make the two comparable.
    want = _torch_values(lambda o: L.SequentialLR(o, [L.ExponentialLR(o, 0.99), L.StepLR(o, 100, 0.5),
                                                      L.ConstantLR(o, factor=0.5, total_iters=10**9)],
                                                  [300, 800]), lr=0.2)
    want[300:800] = want[300:800] / 2  # StepLR from 0.2 in torch is our 0.1 start
    _check(got, want)


@pytest.mark.parametrize("t_mult", [1, 2])
def test_sgdr_is_cosine_annealing_warm_restarts(t_mult):
    _check(_ours(schedules.sgdr(0.1, 50, min_value=1e-3, cycle_mult=t_mult)),
           _torch_values(lambda o: L.CosineAnnealingWarmRestarts(o, T_0=50, T_mult=t_mult, eta_min=1e-3), lr=0.1))


def test_sgdr_peak_decay():
    got = _ours(schedules.sgdr(1.0, 100, cycle_mult=1, peak_decay=0.5), 400)
    want = [0.5 ** (t // 100) * (1 + np.cos(np.pi * (t % 100) / 100)) / 2 for t in range(400)]
    _check(got, np.array(want))


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
@pytest.mark.parametrize("down", [None, 70])
def test_cyclical_is_cyclic_lr(mode, down):
    make = lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=0.06, step_size_up=100, step_size_down=down,  # noqa: E731
                                mode=mode, gamma=0.999, cycle_momentum=True, base_momentum=0.8, max_momentum=0.9)
    lr = schedules.cyclical(0.01, 0.06, 100, mode, gamma=0.999, step_size_down=down)
    momentum = schedules.cyclical(0.9, 0.8, 100, mode, gamma=0.999, step_size_down=down)  # the inverse cycle
    _check(_ours(lr), _torch_values(make, momentum=0.9))
    _check(_ours(momentum), _torch_values(make, momentum=0.9, key="momentum"))


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_is_one_cycle_lr(anneal, three_phase):
    make = lambda o: L.OneCycleLR(o, max_lr=0.4, total_steps=STEPS, pct_start=0.25, anneal_strategy=anneal,  # noqa: E731
                                  div_factor=20.0, final_div_factor=1e3, three_phase=three_phase,
                                  base_momentum=0.85, max_momentum=0.95)
    lr = schedules.one_cycle(STEPS, 0.4, 0.25, 20.0, 1e3, anneal, three_phase)
    momentum = schedules.one_cycle(STEPS, 0.85, 0.25, anneal=anneal, three_phase=three_phase,
                                   initial_value=0.95, final_value=0.95)
    _check(_ours(lr), _torch_values(make, momentum=0.9))
    _check(_ours(momentum), _torch_values(make, momentum=0.9, key="momentum"))


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("n", [0, 1, 30])
def test_swa_lr_is_swalr(anneal, n):
    _check(_ours(schedules.swa_lr(0.2, 0.05, n, anneal), 200),
           _torch_values(lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=0.05, anneal_epochs=n,
                                                               anneal_strategy=anneal), 200, lr=0.2))
