"""Data echoing: reuse each input batch several times when the input pipeline is the bottleneck."""

from __future__ import annotations

import random
from typing import Iterable, Iterator, TypeVar

from optimizers.contract.hyperparams import check_range

T = TypeVar("T")


def data_echoing(batches: Iterable[T], echo_factor: int = 2, shuffle_buffer: int = 0,
                 seed: int = 0) -> Iterator[T]:
    r"""Yields each upstream batch ``echo_factor`` times, optionally mixed through a shuffle buffer.

    When reading and preprocessing a batch (upstream) takes longer than a training step
    (downstream), repeating each batch :math:`e` times lets the accelerator train :math:`e`
    steps per upstream batch: up to :math:`e` times fewer upstream batches per training step.
    Without a buffer the repeats come back to back ("batch echoing"); with a buffer of
    :math:`B` batches each repeat enters the buffer and a random entry leaves it, so repeats
    are spread out (the paper finds this helps).

    Args:
        batches: the upstream iterable.
        echo_factor: :math:`e \ge 1`, times each batch is used.
        shuffle_buffer: :math:`B \ge 0` repeats held for shuffling (0: none).
        seed: seed of the shuffle.

    References:
        Choi et al., "Faster Neural Network Training with Data Echoing", 2019, Algorithm 1.
    """
    check_range("data_echoing", "echo_factor", echo_factor, 1)
    check_range("data_echoing", "shuffle_buffer", shuffle_buffer, 0)
    rng = random.Random(seed)
    buffer: list[T] = []
    for batch in batches:
        for _ in range(echo_factor):
            if shuffle_buffer == 0:
                yield batch
                continue
            buffer.append(batch)
            if len(buffer) > shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer
