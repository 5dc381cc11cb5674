"""The character transformer of ``char_lm.py`` with its blocks under ``nn.scan``, trained with LAMB.

Scanning over layers (``flax.linen.scan``) compiles one block instead of ``depth`` of them:
every param of the blocks becomes one leaf with a leading layer axis, a ``(depth, d_in,
d_out)`` kernel. LAMB's trust ratio is per layer; on the stacked leaf it is one ratio for all
the layers, another optimizer. ``layer_axes`` gives it back its layers, and
``optimizers.layer_axes_from_flax`` reads them from the partition name that ``nn.scan``
puts on the stacked params (``metadata_params={nn.PARTITION_NAME: "layers"}``).

Three runs from the same initial weights on the same batches, ``optax.chain(
optax.clip_by_global_norm(1.0), optimizers.lamb(...))`` (the clipping is global and stays so):

(a) the unrolled model, ``char_lm.CharTransformer`` (each block its own params): the reference;
(b) the scanned model with ``layer_axes``: equal to (a), to float32 rounding;
(c) the scanned model without it: one trust ratio over all blocks, a different run.

It prints (and writes to ``--out``) the losses and the largest difference of (b) and (c) from
(a), and exits with an error if (b) is not (a) or (c) is.

    python examples/scanned_transformer.py           # about a minute on 2 cores
    python examples/scanned_transformer.py --smoke   # a few steps of a tiny model, for the tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from char_lm import (Block, CharTransformer, batch_stream, decay_mask, embedded, load_corpus, logits,  # noqa: E402
                     loss_fn)


def _named(tree):
    """Every param boxed with unnamed axes (``nn.Partitioned``), so that ``nn.scan`` names the layer axis."""
    box = lambda x: x if isinstance(x, nn.Partitioned) else nn.Partitioned(x, (None,) * x.ndim)  # noqa: E731
    return jax.tree.map(box, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


class ScannedLayer(nn.Module):
    """``char_lm.Block``, its params annotated, in the (carry, output) form ``nn.scan`` takes."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x, mask):
        block = nn.map_variables(Block, "params", trans_out_fn=_named, init=True, mutable=True)
        return block(self.width, self.heads, name="block")(x, mask), None


class ScannedTransformer(nn.Module):
    """``char_lm.CharTransformer`` with its ``depth`` blocks as one ``nn.scan`` (same names elsewhere)."""

    vocab_size: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    context: int = 64

    @nn.compact
    def __call__(self, tokens):
        x, mask = embedded(self, tokens)
        blocks = nn.scan(ScannedLayer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                         length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = blocks(self.width, self.heads, name="blocks")(x, mask)
        return logits(self, x)


def unrolled(params, depth):
    """The scanned model's params as ``CharTransformer``'s: block ``i`` is slice ``i`` of the stack."""
    out = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(depth):
        out[f"Block_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"]["block"])
    return out


def stacked(params, depth):
    """The inverse of :func:`unrolled`."""
    out = {k: v for k, v in params.items() if not k.startswith("Block_")}
    out["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"Block_{i}"] for i in range(depth)])}
    return out


def lamb(lr, mask, layer_axes=None):
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optimizers.lamb(lr, weight_decay=0.01, mask=mask, layer_axes=layer_axes))


def train(model, tx, params, batches):
    """The losses of one step per batch, and the final params."""
    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for x, y in batches:
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    return losses, params


def _is_key_bias(path) -> bool:
    return "['key']['bias']" in jax.tree_util.keystr(path)


def max_difference(params, reference):
    """The largest entry of ``|params - reference|`` relative to the reference leaf's largest entry.

    The attention's key bias is left out: the softmax is blind to it (it adds the same
    :math:`q \cdot b` to every score), so its exact gradient is 0 and the computed one is
    rounding noise, which Adam's normalisation turns into steps of the learning rate's size in
    any two runs that round differently, without changing the model's outputs.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
               for (path, a), b in zip(leaves, jax.tree.leaves(reference), strict=True) if not _is_key_bias(path))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", default="out/scanned_transformer")
    parser.add_argument("--smoke", action="store_true", help="a few steps of a tiny model (for the tests)")
    args = parser.parse_args(argv)
    width, depth, heads, context, steps, batch_size = 64, 4, 4, 64, args.steps, args.batch_size
    if args.smoke:
        width, depth, heads, context, steps, batch_size = 16, 2, 2, 16, 3, 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_ids, _, vocab = load_corpus()
    scanned = ScannedTransformer(len(vocab), width, depth, heads, context)
    plain = CharTransformer(len(vocab), width, depth, heads, context)
    boxed = scanned.init(jax.random.key(0), jnp.zeros((1, context), jnp.int32))["params"]
    layer_axes = optimizers.layer_axes_from_flax(boxed)  # 1 on every param of the blocks, 0 elsewhere
    params = nn.unbox(boxed)
    per_layer_mask = jax.tree.map(lambda p, k: p.ndim - k >= 2, params, layer_axes)  # char_lm's rule, per layer
    stream = batch_stream(train_ids, batch_size, context, seed=0)
    batches = [next(stream) for _ in range(steps)]

    runs = {
        "(a) unrolled blocks": train(plain, lamb(args.lr, decay_mask), unrolled(params, depth), batches),
        "(b) nn.scan, layer_axes": train(scanned, lamb(args.lr, per_layer_mask, layer_axes), params, batches),
        "(c) nn.scan, no layer_axes": train(scanned, lamb(args.lr, per_layer_mask), params, batches),
    }
    reference = runs["(a) unrolled blocks"][1]
    lines = [f"{depth} blocks of width {width}, {steps} LAMB steps of batch {batch_size}, context {context}.", "",
             "| run | first loss | last loss | max. param difference from (a) |", "| --- | --- | --- | --- |"]
    differences = {}
    for name, (losses, final) in runs.items():
        if name.startswith("(a)"):
            differences[name] = 0.0
        else:
            differences[name] = max_difference(final, stacked(reference, depth))
        lines.append(f"| {name} | {losses[0]:.4f} | {losses[-1]:.4f} | {differences[name]:.2e} |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    print(table)
    same, other = differences["(b) nn.scan, layer_axes"], differences["(c) nn.scan, no layer_axes"]
    if not (same < 1e-4 and other > 100 * max(same, 1e-7)):
        sys.exit(f"layer_axes did not give the unrolled run: (b) {same:.2e}, (c) {other:.2e}")
    print(f"\n(b) is (a) to {same:.1e}; (c) differs by {other:.1e}. Wrote {out}/results.md")


if __name__ == "__main__":
    main()
