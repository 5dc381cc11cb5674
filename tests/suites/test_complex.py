r"""Complex params: each optimizer either runs on complex64 leaves as on the equivalent real pair, or refuses them.

A complex leaf :math:`z = x + iy` is the real pair :math:`(x, y)`. The references below are
float64 NumPy transcriptions on pairs, held as arrays with a trailing axis of 2 (a real leaf
has a trailing axis of 1): a second moment is of :math:`|g|^2 = g_x^2 + g_y^2`, shared by both
parts; a norm or an RMS is over all real numbers, a mean over the complex entries. Rules that
are per real coordinate and linear (SGD, momentum, Nesterov) are checked directly: the complex
run equals the real optimizer run on the real and imaginary parts as separate leaves. Rules
built on signs or order refuse complex params at ``init``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close
from registry import CHAIN_NAMES, NAMES, make

import optimizers

STEPS = 13  # past RAdam's rectification (step 5), two lookahead syncs and two SWA samples (10, 12)
_RNG = np.random.default_rng(0)


def _complex(shape):
    return _RNG.normal(size=shape) + 1j * _RNG.normal(size=shape)


PARAMS = {"z": _complex((4, 3)), "c": _complex(()), "r": _RNG.normal(size=(5,))}
GRADS = [{"z": _complex((4, 3)), "c": _complex(()), "r": _RNG.normal(size=(5,))} for _ in range(STEPS)]


def _device(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.complex64 if np.iscomplexobj(x) else np.float32), tree)


def _pair(x):
    """A leaf as its real pair: trailing axis (x, y) for a complex leaf, (x,) for a real one."""
    return np.stack([x.real, x.imag], -1) if np.iscomplexobj(x) else np.asarray(x, np.float64)[..., None]


def _abs2(g):
    """:math:`|g|^2` of each entry, shared by both parts of a pair."""
    return np.sum(g**2, axis=-1, keepdims=True)


def _norm(x):
    return np.sqrt(np.sum(x**2))


def _rms(x):
    """The root mean square over the (complex) entries of a leaf."""
    return np.sqrt(np.sum(x**2) / x[..., 0].size)


# --- float64 references on pairs: each yields the leaf's params after every step ---------------

def _adam(theta, grads, lr=0.01, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    m, v = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * _abs2(g)
        theta = theta - lr * (m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps) + weight_decay * theta)
        yield theta


def _amsgrad(theta, grads, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    m, v, vmax = np.zeros_like(theta), np.zeros_like(theta[..., :1]), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * _abs2(g)
        vmax = np.maximum(vmax, v / (1 - b2**t))
        theta = theta - lr * m / (1 - b1**t) / (np.sqrt(vmax) + eps)
        yield theta


def _adamax(theta, grads, lr=0.01, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    m, v = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, np.maximum(b2 * v, np.sqrt(_abs2(g)) + eps)
        theta = theta - lr * (m / ((1 - b1**t) * v) + weight_decay * theta)
        yield theta


def _adabelief(theta, grads, lr=0.01, b1=0.9, b2=0.999, eps=1e-16):
    m, s = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * _abs2(g - m) + eps
        theta = theta - lr * m / (1 - b1**t) / (np.sqrt(s / (1 - b2**t)) + eps)
        yield theta


def _yogi(theta, grads, lr=0.01, b1=0.9, b2=0.999, eps=1e-3, v0=1e-6):
    m, v = np.zeros_like(theta), np.full_like(theta[..., :1], v0)
    for g in grads:
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * np.sign(v - _abs2(g)) * _abs2(g)
        theta = theta - lr * m / (np.sqrt(v) + eps)
        yield theta


def _adopt(theta, grads, lr=0.01, b1=0.9, b2=0.9999, eps=1e-6):
    m, v = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        if t > 1:
            c = t**0.25
            m = b1 * m + (1 - b1) * np.clip(g / np.maximum(np.sqrt(v), eps), -c, c)
            theta = theta - lr * m
        v = _abs2(g) if t == 1 else b2 * v + (1 - b2) * _abs2(g)
        yield theta


def _ademamix(theta, grads, lr=0.01, b1=0.9, b2=0.999, b3=0.99, alpha=2.0, eps=1e-8):
    m1, m2, v = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m1, m2, v = b1 * m1 + (1 - b1) * g, b3 * m2 + (1 - b3) * g, b2 * v + (1 - b2) * _abs2(g)
        theta = theta - lr * (m1 / (1 - b1**t) + alpha * m2) / (np.sqrt(v / (1 - b2**t)) + eps)
        yield theta


def _simplified_ademamix(theta, grads, lr=0.002, b1=0.9, b2=0.99, alpha=1.0, eps=1e-8):
    m, v = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + g, b2 * v + (1 - b2) * _abs2(g)
        theta = theta - lr * (alpha * g + m) / (np.sqrt(v / (1 - b2**t)) + eps)
        yield theta


def _madgrad(theta, grads, lr=0.01, momentum=0.9, eps=1e-6):
    x0, s, nu = theta, np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for k, g in enumerate(grads):
        lam = (lr + eps) * np.sqrt(k + 1)
        s, nu = s + lam * g, nu + lam * _abs2(g)
        theta = momentum * theta + (1 - momentum) * (x0 - s / (np.cbrt(nu) + eps))
        yield theta


def _acprop(theta, grads, lr=0.003, b1=0.9, b2=0.999, eps=1e-3, eps_root=1e-16):
    m, s = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        theta = theta - lr * g / ((1.0 if t == 1 else np.sqrt(s / (1 - b2 ** (t - 1)))) + eps)
        s = b2 * s + (1 - b2) * _abs2(g - m) + eps_root
        m = b1 * m + (1 - b1) * g
        yield theta


def _adan(theta, grads, lr=0.02, b1=0.98, b2=0.92, b3=0.99, eps=1e-8):
    m, v, n, prev = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta[..., :1]), grads[0]
    for k, g in enumerate(grads, 1):
        diff = g - prev
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * _abs2(g + b2 * diff)
        prev = g
        theta = theta - lr * (m / (1 - b1**k) + b2 * v / (1 - b2**k)) / (np.sqrt(n / (1 - b3**k)) + eps)
        yield theta


def _nadam(theta, grads, lr=0.003, b1=0.9, b2=0.999, eps=1e-8, psi=0.004, weight_decay=0.0):
    m, v, prod = np.zeros_like(theta), np.zeros_like(theta[..., :1]), 1.0
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * _abs2(g)
        mu, mu_next = b1 * (1 - 0.5 * 0.96 ** (t * psi)), b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        prod *= mu
        direction = (1 - mu) * g / (1 - prod) + mu_next * m / (1 - prod * mu_next)
        theta = theta - lr * (direction / (np.sqrt(v / (1 - b2**t)) + eps) + weight_decay * theta)
        yield theta


def _radam(theta, grads, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    m, v = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * _abs2(g)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        m_hat = m / (1 - b1**t)
        if rho > 4:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            m_hat = r * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        theta = theta - lr * m_hat
        yield theta


def _adax(theta, grads, lr=0.01, b1=0.9, b2=1e-4, eps=1e-8):
    m, v_hat = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v_hat = v_hat + b2 / ((1 + b2) ** t - 1) * (_abs2(g) - v_hat)
        theta = theta - lr * m / (np.sqrt(v_hat) + eps)
        yield theta


def _adagrad(theta, grads, lr=0.3, eps=1e-10):
    v = np.zeros_like(theta[..., :1])
    for g in grads:
        v = v + _abs2(g)
        theta = theta - lr * g / (np.sqrt(v) + eps)
        yield theta


def _rmsprop(theta, grads, lr=1e-3, rho=0.99, eps=1e-8):
    v = np.zeros_like(theta[..., :1])
    for g in grads:
        v = rho * v + (1 - rho) * _abs2(g)
        theta = theta - lr * g / (np.sqrt(v) + eps)
        yield theta


def _adadelta(theta, grads, rho=0.9, eps=1e-6):
    v, x = np.zeros_like(theta[..., :1]), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads):
        v = rho * v + (1 - rho) * _abs2(g)
        d = np.sqrt((x + eps) / (v + eps)) * g
        x = rho * x + (1 - rho) * _abs2(d)
        theta = theta - 0.9997**t * d  # conformance's learning rate 0.9997^t
        yield theta


def _sm3(theta, grads, lr=0.3):
    """SM3-I: one accumulator per row and per column of a matrix, per entry of a vector, one for a scalar."""
    covers = [np.zeros(n) for n in theta.shape[:-1]] or [np.zeros(())]
    for g in grads:
        g2 = _abs2(g)[..., 0]
        if g2.ndim == 2:
            covers = [covers[0] + g2.max(axis=1), covers[1] + g2.max(axis=0)]
            nu = np.minimum(covers[0][:, None], covers[1][None, :])
        else:
            covers = [covers[0] + g2]
            nu = covers[0]
        nu = nu[..., None]
        theta = theta - lr * np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu, 1.0)), 0.0)
        yield theta


def _adafactor(theta, grads, lr=0.1, b1=0.9, decay_rate=0.8, eps=1e-30, min_scale=1e-3, factored=False):
    """Relative step min(lr, 1/sqrt t), update clipping at RMS 1, parameter scale, momentum b1."""
    m = np.zeros_like(theta)
    v = row = col = 0.0
    for t, g in enumerate(grads, 1):
        beta = 1 - t**-decay_rate
        g2 = _abs2(g)[..., 0] + eps
        if factored:  # rows and columns of the matrix of |g|^2 + eps
            row, col = beta * row + (1 - beta) * g2.mean(axis=1), beta * col + (1 - beta) * g2.mean(axis=0)
            v_hat = np.outer(row, col) / row.mean()
        else:
            v = v_hat = beta * v + (1 - beta) * g2
        u = g / np.sqrt(v_hat)[..., None]
        u = u / max(1.0, _rms(u))
        m = b1 * m + (1 - b1) * max(min_scale, _rms(theta)) * u
        theta = theta - min(lr, 1 / np.sqrt(t)) * m
        yield theta


def _amos(theta, grads, xi=0.1, eta=1.0, beta=0.999, c_coef=0.25, d_coef=0.25, eps=2.0**-125):
    v, b = np.zeros_like(theta[..., :1]), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        g2 = _abs2(g)
        v = beta * v + (1 - beta) * g2
        r = (1 - beta**t) / np.maximum(v, eps)
        c = 1 / np.sqrt(1 + c_coef * np.sqrt(xi) * b)
        d = 1 / (1 + d_coef * np.sqrt(xi * eta) * b)
        gamma = c * xi**2 * r * g2
        theta = theta - xi * d * (eta * np.sqrt(r) * g + gamma / (2 * xi) * theta)
        b = b + gamma * (1 + b)
        yield theta


def _lamb(theta, grads, b1=0.9, b2=0.999, eps=1e-8, min_param_norm=0.1):
    m, v = np.zeros_like(theta), np.zeros_like(theta[..., :1])
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * _abs2(g)
        r = m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps)
        phi, r_norm = max(_norm(theta), min_param_norm), _norm(r)
        ratio = phi / r_norm if r_norm > 0 else 1.0
        theta = theta - 0.01 * 0.9997 ** (t - 1) * ratio * r
        yield theta


def _lars(theta, grads, eta=1e-3, eps=1e-8, momentum=0.9):
    m = np.zeros_like(theta)
    for t, g in enumerate(grads):
        w_norm, g_norm = _norm(theta), _norm(g)
        ratio = eta * w_norm / (g_norm + eps) if w_norm > 0 and g_norm > 0 else 1.0
        m = momentum * m - 50.0 * 0.999**t * ratio * g
        theta = theta + m
        yield theta


def _novograd(theta, grads, b1=0.9, b2=0.25, eps=1e-8):
    m, v = np.zeros_like(theta), 0.0
    for t, g in enumerate(grads):
        v = _norm(g) ** 2 if t == 0 else b2 * v + (1 - b2) * _norm(g) ** 2
        m = b1 * m + g / (np.sqrt(v) + (eps if t else 0.0))
        theta = theta - 0.01 * 0.9997**t * m
        yield theta


def _ema_of_adam(theta, grads, decay=0.9):
    """The weights' moving average, the first update copying the weights (no bias correction)."""
    average = None
    for w in _adam(theta, grads):
        average = w if average is None else decay * average + (1 - decay) * w
    yield average


def _swa_of_adam(theta, grads, start=10, every=2):
    taken = [w for k, w in enumerate(_adam(theta, grads)) if k >= start and (k - start) % every == 0]
    yield np.mean(taken, axis=0)


def _lookahead_adam(theta, grads, period=5, alpha=0.5):
    """Adam's steps do not depend on the params: the same steps, from the slow weights after each sync."""
    adam = [theta, *_adam(theta, grads)]
    slow = theta
    for k in range(len(grads)):
        fast = theta + adam[k + 1] - adam[k]
        if k % period == period - 1:
            slow = slow + alpha * (fast - slow)
            fast = slow
        theta = fast
        yield theta


def _fromage(theta, grads):
    """Per leaf: theta <- (theta - lr_t |theta|/|g| g) / sqrt(1 + lr_t^2), norms over all real numbers."""
    for t, g in enumerate(grads):
        lr = 0.3 / np.sqrt(1.0 + t)
        theta = (theta - lr * _norm(theta) / _norm(g) * g) / np.sqrt(1 + lr**2)
        yield theta


def _optimistic_adam(theta, grads, lr=0.01, alpha=1.0, beta=1.0, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's r_t (of |g|^2), then theta -= lr ((alpha + beta) r_t - beta r_{t-1}), r_0 = r_1."""
    m, v, prev = np.zeros_like(theta), np.zeros_like(theta[..., :1]), None
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * _abs2(g)
        r = m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps)
        prev = r if prev is None else prev
        theta = theta - lr * ((alpha + beta) * r - beta * prev)
        prev = r
        yield theta


# name: (reference, checked on the final averaged weights instead of the params, complex buffers per complex leaf)
PAIR = {
    "acprop": (_acprop, False, 1),
    "adabelief": (_adabelief, False, 1),
    "adadelta": (_adadelta, False, 0),
    "adafactor": (_adafactor, False, 1),
    "adagrad": (_adagrad, False, 0),
    "adam": (_adam, False, 1),
    "adamax": (_adamax, False, 1),
    "adamaxw": (lambda th, gs: _adamax(th, gs, weight_decay=1e-4), False, 1),
    "adamw": (lambda th, gs: _adam(th, gs, weight_decay=1e-4), False, 1),
    "adan": (_adan, False, 3),
    "ademamix": (_ademamix, False, 2),
    "adopt": (_adopt, False, 1),
    "adax": (_adax, False, 1),
    "amos": (_amos, False, 0),
    "amsgrad": (_amsgrad, False, 1),
    "fromage": (_fromage, False, 0),
    "lamb": (_lamb, False, 1),
    "lars": (_lars, False, 1),
    "madgrad": (_madgrad, False, 2),
    "nadam": (_nadam, False, 1),
    "nadamw": (lambda th, gs: _nadam(th, gs, weight_decay=1e-4), False, 1),
    "novograd": (_novograd, False, 1),
    "optimistic_adam": (_optimistic_adam, False, 2),
    "optimistic_adam_v2": (_optimistic_adam, False, 2),
    "radam": (_radam, False, 1),
    "rmsprop": (_rmsprop, False, 0),
    "simplified_ademamix": (_simplified_ademamix, False, 1),
    "sm3": (_sm3, False, 0),
    "yogi": (_yogi, False, 1),
    "weight_ema(adam)": (_ema_of_adam, True, 2),
    "lookahead(adam)": (_lookahead_adam, False, 2),
    "swa(adam)": (_swa_of_adam, True, 2),
}
# Linear in each real coordinate: complex = the real optimizer on (real part, imaginary part).
SPLIT = {n: {} for n in ["asgd", "lookahead(sgd)", "optimistic_gradient_descent", "scale_by_learning_rate", "scale_by_relative_step", "schedule_free_sgd",
                         "sgd"]}
SPLIT["sgd (nesterov)"] = dict(nesterov=True)
# Per-coordinate signs, sign agreements, real gains; Muon: its matrices real, as torch's (complex
# vectors and scalars go to its AdamW); Prodigy, D-Adaptation: their estimates compare signed dot products of
# real params (the references' torch.dot of complex tensors is not the real pair's); DoG, DoWG: as optax's, real only;
# SOAP, Shampoo: real statistics and bases, as the authors' code and the paper.
REFUSED = ["dadapt_adagrad", "dadapt_adamw", "dadapt_sgd", "dog", "dowg", "funnelled_sgdm", "lion", "muon", "noisy_sgd",
           "normuon", "prodigy", "rprop", "schedule_free_adamw", "shampoo", "sign_sgd", "soap",
           "signum", "fused(funnelled_sgdm)", "fused(lion)", "fused(rprop)"]


def test_every_optimizer_is_decided():
    """Complex leaves run a fused transform's chain: the fused names are its alias's decision."""
    assert sorted(CHAIN_NAMES) == sorted([*PAIR, *[n for n in SPLIT if n in NAMES], *[n for n in REFUSED if n in CHAIN_NAMES]])


def _run(tx, params, grads):
    state, update = tx.init(params), jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def _compare(got, reference, params, grads):
    for key in PARAMS:
        want = list(reference(_pair(params[key]), [_pair(g[key]) for g in grads]))[-1]
        want = want[..., 0] + 1j * want[..., 1] if np.iscomplexobj(params[key]) else want[..., 0]
        assert_close(got[key].real, want.real)
        assert_close(got[key].imag, want.imag)


@pytest.mark.parametrize("name", sorted(PAIR))
def test_complex_run_is_the_real_pair_run(name):
    reference, averaged, complex_buffers = PAIR[name]
    new, state = _run(make(name), _device(PARAMS), _device(GRADS))
    assert all(new[k].dtype == _device(PARAMS)[k].dtype for k in PARAMS)
    _compare(optimizers.averaged_params(state) if averaged else new, reference, PARAMS, GRADS)
    # Second moments (of |g|^2) real float32, first moments and weights complex64, nothing wider.
    buffers = {jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    of_z = [x.dtype for path, x in buffers.items() if "['z']" in path]
    assert of_z.count(np.complex64) == complex_buffers and set(of_z) <= {np.dtype(np.complex64), np.dtype(np.float32)}
    assert all(x.dtype in (np.float32, np.int32) for path, x in buffers.items() if "['r']" in path)


def test_adafactor_factored_complex_matrix():
    """Rows and columns of |g|^2 (the (4, 3) leaf factored), as on the real pair."""
    new, state = _run(make("adafactor", min_dim_size_to_factor=2), _device(PARAMS), _device(GRADS))
    factored = lambda th, gs: _adafactor(th, gs, factored=th.ndim == 3)  # noqa: E731
    _compare(new, factored, PARAMS, GRADS)
    assert state[0].v_row["z"].shape == (4,) and state[0].v_row["z"].dtype == np.float32


def _split(tree):
    return {k: v for key, x in tree.items()
            for k, v in ({f"{key}.re": x.real, f"{key}.im": x.imag} if np.iscomplexobj(x) else {key: x}).items()}


@pytest.mark.parametrize("case", sorted(SPLIT))
def test_complex_run_is_the_split_real_run(case):
    name = case.split(" ")[0]
    complex_run, _ = _run(make(name, **SPLIT[case]), _device(PARAMS), _device(GRADS))
    real_run, _ = _run(make(name, **SPLIT[case]), _device(_split(PARAMS)), _device([_split(g) for g in GRADS]))
    for key, x in _split(jax.tree.map(np.asarray, complex_run)).items():
        np.testing.assert_allclose(x, real_run[key], rtol=1e-6, atol=1e-7)
    assert not np.allclose(complex_run["z"], _device(PARAMS)["z"])


@pytest.mark.parametrize("name", REFUSED)
def test_sign_based_rules_refuse_complex_params(name):
    algorithm = name.removeprefix("fused(").removesuffix(")")  # a fused alias refuses as its chain does
    with pytest.raises(TypeError, match=rf"{algorithm}: complex params are not supported"):
        make(name).init(_device(PARAMS))
    make(name).init(_device({"r": PARAMS["r"]}))  # real params are fine


def test_a_broken_optimizer_fails_the_real_pair_property(monkeypatch):
    """The suite can fail: Adam's second moment of ``g * g`` (complex) instead of ``|g|^2``."""
    def broken_direction():
        def init(params):
            return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params),
                                          optax.tree.zeros_like(params))

        def update(u, s, p=None):
            count = s.count + 1
            mu = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, s.mu, u)
            nu = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, s.nu, u)
            c1, c2 = 1 - 0.9**count, 1 - 0.999**count
            out = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + 1e-8), mu, nu)
            return out, optax.ScaleByAdamState(count, mu, nu)

        return optax.GradientTransformation(init, update)

    monkeypatch.setitem(globals(), "make", lambda name, **kw: optax.chain(broken_direction(), optax.scale(-0.01)))
    with pytest.raises(AssertionError):
        test_complex_run_is_the_real_pair_run("adam")
