"""Passes over memory in a compiled step, read from its HLO text and memory analysis."""

from __future__ import annotations

import math
import re
from typing import NamedTuple


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8}


_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")


_PLUMBING = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant"}


def _shape_bytes(text: str) -> int:
    return sum(_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _SHAPE.findall(text))


class HloTraffic(NamedTuple):
    kernels: int  # entry-computation instructions that read or write an array of >= min_bytes
    bytes: int  # what those instructions read and write (operands + results of >= min_bytes)
    copies: int  # copy instructions among them (e.g. inserted by donation)
    temp: int  # bytes of fresh memory per step: temporaries and outputs not aliased to a donated input


def hlo_traffic(compiled, min_bytes: int = 1024) -> HloTraffic:
    """Passes over memory in a compiled step: its entry computation's kernels and their bytes.

    Every fusion (or other instruction) of the entry computation that reads or writes an
    array of at least ``min_bytes`` is one pass over those arrays; its traffic is the size of
    those operands and results. Scalar work (hyperparameters, counts) is left out. ``temp``
    is from XLA's memory analysis: on CPU it is allocated afresh at every step, and the page
    faults of fresh memory cost more than the bandwidth to fill it.
    """
    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):]
    sizes, kernels, moved, copies = {}, 0, 0, 0
    for line in entry.splitlines()[1:]:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        sizes[name] = out = _shape_bytes(shape)
        if op in _PLUMBING:
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        read = sum(sizes.get(o, 0) for o in operands if sizes.get(o, 0) >= min_bytes)
        written = out if out >= min_bytes else 0
        if read or written:
            kernels, moved, copies = kernels + 1, moved + read + written, copies + (op in ("copy", "copy-start"))
    memory = compiled.memory_analysis()
    temp = memory.temp_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes if memory else 0
    return HloTraffic(kernels, moved, copies, temp)
