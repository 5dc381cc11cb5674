import itertools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import optimizers
import schedules

DIGITS = load_digits()
X = (DIGITS.data / 16).astype(np.float32)


class _Mlp(nn.Module):
    nan_layer: bool = False

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(64)(x))
        if self.nan_layer:  # a planted bug: log of a value that can be negative
            h = jnp.log(h - 0.5)
        return nn.Dense(10)(h)


def _run(labels, nan_layer=False, traces=None, **kw):
    model = _Mlp(nan_layer)
    params = model.init(jax.random.key(0), X[:1])["params"]

    def loss(p, batch):
        if traces is not None:
            traces.append(1)
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    rng = np.random.default_rng(0)
    batches = ((X[i], labels[i]) for i in (rng.choice(len(X), 64, replace=False) for _ in itertools.count()))
    before = jax.tree.map(np.array, params)
    result = schedules.lr_finder(loss, params, batches, optimizers.adam, min_lr=1e-6, max_lr=10.0,
                                 num_steps=150, progress=False, **kw)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)  # the caller's params are untouched
    return result


def test_three_regions_and_a_suggestion_in_the_descent(tmp_path):
    traces = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy model gives no warning
        r = _run(DIGITS.target, traces=traces)
    assert len(traces) == 1  # one compilation for every learning rate
    s = r.smoothed_losses
    start, lowest = s[0], int(np.argmin(s))
    assert np.all(np.abs(s[:30] - start) < 0.05 * start)  # flat: learning rates too small to learn
    assert s[lowest] < 0.7 * start  # falling
    assert s[-1] > 1.5 * s[lowest]  # exploding past the best learning rate
    np.testing.assert_allclose(r.learning_rates, [float(schedules.lr_range(1e-6, 10.0, 150)(t))
                                                  for t in range(r.stopped_at)], rtol=1e-6)
    for suggestion in (r.steepest, r.min_over_10):
        k = int(np.argmin(np.abs(r.learning_rates - suggestion)))
        assert k < lowest and s[k] < 0.97 * start, "the suggestion lies in the descending region"
    assert r.plot(tmp_path / "lr.png").stat().st_size > 10_000


def test_smoothing_is_a_bias_corrected_moving_average():
    r = _run(DIGITS.target, smoothing=0.9)
    avg, want = 0.0, []
    for t, loss in enumerate(r.losses):
        avg = 0.9 * avg + 0.1 * loss
        want.append(avg / (1 - 0.9 ** (t + 1)))
    np.testing.assert_allclose(r.smoothed_losses, want, rtol=1e-12)


def test_stops_when_the_loss_diverges():
    r = _run(DIGITS.target, diverge_factor=1.2, smoothing=0.5)
    assert r.stopped_at < 150 and r.smoothed_losses[-1] > 1.2 * np.min(r.smoothed_losses[:-1])


def test_warns_on_shuffled_labels():
    with pytest.warns(RuntimeWarning, match="never falls"):
        _run(np.random.default_rng(1).permutation(DIGITS.target))


def test_says_when_the_batches_run_out():
    """Batches that end before num_steps are named as such, not mistaken for a loss that never falls."""
    model = _Mlp()
    params = model.init(jax.random.key(0), X[:1])["params"]

    def loss(p, batch):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, batch[0]), batch[1]).mean()

    batches = [(X[i:i + 64], DIGITS.target[i:i + 64]) for i in range(0, 640, 64)]  # 10 batches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = schedules.lr_finder(loss, params, batches, optimizers.adam, min_lr=1e-6, max_lr=10.0,
                                num_steps=150, progress=False)
    messages = [str(w.message) for w in caught]
    assert r.stopped_at == 10
    assert any("batches ran out after 10 of num_steps=150" in m for m in messages), messages
    assert not any("never falls" in m for m in messages), messages


def test_warns_on_a_nan_layer():
    with pytest.warns(RuntimeWarning, match="not finite from the first step"):
        r = _run(DIGITS.target, nan_layer=True)
    assert r.stopped_at == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="smoothing"):
        schedules.lr_finder(None, {}, [], optimizers.adam, smoothing=1.0)
    with pytest.raises(ValueError, match="diverge_factor"):
        schedules.lr_finder(None, {}, [], optimizers.adam, diverge_factor=1.0)
    with pytest.raises(ValueError, match="empty"):
        schedules.lr_finder(lambda p, b: 0.0, {"w": jnp.ones(2)}, [], optimizers.adam, progress=False)
    with pytest.raises(ValueError, match="max_value"):
        schedules.lr_finder(None, {}, itertools.repeat(None), optimizers.adam, min_lr=1.0, max_lr=0.1)


def _tiny_run(optimizer):
    """The LR range test of ``optimizer`` on a quadratic (cheap: 20 steps)."""
    loss = lambda p, batch: jnp.sum((p["w"] - 1.0) ** 2)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return schedules.lr_finder(loss, {"w": jnp.zeros(3)}, itertools.repeat(None), optimizer, min_lr=1e-4,
                                   max_lr=1.0, num_steps=20, progress=False)


def test_any_name_for_the_learning_rate():
    by_name = _tiny_run(lambda learning_rate: optimizers.sgd(learning_rate, momentum=0.9))
    for factory in (lambda lr: optimizers.sgd(lr, momentum=0.9), lambda *a: optimizers.sgd(*a, momentum=0.9),
                    lambda *, learning_rate: optimizers.sgd(learning_rate, momentum=0.9)):
        r = _tiny_run(factory)
        np.testing.assert_array_equal(r.losses, by_name.losses)
        np.testing.assert_array_equal(r.learning_rates, by_name.learning_rates)
    w, m, want = np.zeros(3), np.zeros(3), []  # heavy ball in float64 at the ramp's learning rates
    for lr in by_name.learning_rates:
        want.append(np.sum((w - 1) ** 2))
        m = 2 * (w - 1) + 0.9 * m
        w = w - lr * m
    np.testing.assert_allclose(by_name.losses, want, rtol=1e-5)


def test_a_factory_without_the_learning_rate_first_is_refused():
    with pytest.raises(ValueError, match="first positional argument or as learning_rate"):
        _tiny_run(lambda *, lr: optimizers.sgd(lr))
    with pytest.raises(ValueError, match="first positional argument or as learning_rate"):
        _tiny_run(lambda: optimizers.sgd(0.1))
