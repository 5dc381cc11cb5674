"""How far optax.contrib's Prodigy and D-Adaptation Adam are from the references' defaults (docs/guides/learning_rate_free.md).

A noisy quadratic on two leaves (8 and 5 parameters), float64, 3 seeds, the same gradient noise for both
runs: the first step's size, optax's over ours, and after 30 steps ``||ours - optax|| / ||ours - x0||``.

    .venv/bin/python benchmarks/lr_free_vs_optax.py
"""

import jax
import numpy as np
import optax

import optimizers

STEPS = 30


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _run(tx, theta, a, b, noise):
    state, p, out = tx.init(theta), theta, []
    for k in range(STEPS):
        g = jax.tree.map(lambda x, ak, bk, n: ak @ x - bk + n[k], p, a, b, noise)
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        out.append(p)
    return out


def main():
    jax.config.update("jax_enable_x64", True)
    pairs = {
        "prodigy": (optimizers.prodigy, optax.contrib.prodigy),
        "dadapt_adamw": (optimizers.dadapt_adamw, optax.contrib.dadapt_adamw),
    }
    for seed in range(3):
        rng = np.random.default_rng(seed)
        shapes = {"w": 8, "v": 5}
        theta = {k: rng.normal(size=n) for k, n in shapes.items()}
        a = {k: (lambda m, n=n: m @ m.T / n + 0.1 * np.eye(n))(rng.normal(size=(n, n))) for k, n in shapes.items()}
        b = {k: rng.normal(size=n) for k, n in shapes.items()}
        noise = {k: 0.1 * rng.normal(size=(STEPS, n)) for k, n in shapes.items()}
        for name, (ours, theirs) in pairs.items():
            ref = _run(theirs(), theta, a, b, noise)
            for form, kwargs in [("default", {}), ("use_bias_correction=True", dict(use_bias_correction=True))]:
                got = _run(ours(**kwargs), theta, a, b, noise)
                first = np.linalg.norm(_flat(ref[0]) - _flat(theta)) / np.linalg.norm(_flat(got[0]) - _flat(theta))
                last = np.linalg.norm(_flat(got[-1]) - _flat(ref[-1])) / np.linalg.norm(_flat(got[-1]) - _flat(theta))
                print(f"seed {seed} {name:13s} {form:25s} first step optax/ours {first:.4f}   "
                      f"after {STEPS}: |ours-optax|/|ours-x0| {last:.3g}")


if __name__ == "__main__":
    main()
