"""What a planner's user types: a memory budget ('8GB', '8 GiB', '4g') and an input shape ('3x224x224')."""
from __future__ import annotations

import math
import re
from typing import Sequence

GiB, MiB, GB, MB = 2**30, 2**20, 10**9, 10**6

_UNITS = {"b": 1,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
BUDGET_HELP = ("a number and a unit: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB or k/m/g/t "
               "(powers of 1024), e.g. 8GB, '8 GiB', 500MB, 4g")
BUDGET_EXAMPLES = "8GB, 512MiB or 1.5GiB"


def parse_budget(value: str | int | float, name: str = "budget") -> int:
    """Bytes from '8GB' (10^9), '8 GiB' (2^30), '500MB', '4g' (2^30, as docker and `free -g`), '2048B';
    a Python int or float is a number of bytes. Text without a unit ('8') is refused, not read as bytes."""
    bad = ValueError(f"{name}={value!r} is not allowed: use {BUDGET_HELP}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        number, unit = float(value), "b"
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if match is None or (match.group(2) and match.group(2).lower() not in _UNITS):
            raise bad
        number, unit = float(match.group(1)), match.group(2).lower()
        if not unit:
            raise ValueError(f"{name}={value!r} has no unit: write it like {BUDGET_EXAMPLES}")
    else:
        raise bad
    if not math.isfinite(number):
        raise bad
    what = name.lstrip("-")  # '--budget' names the flag, the budget is what it sets
    if number <= 0:
        raise ValueError(f"{name}={value!r} is not allowed: the {what} must be above zero, e.g. 8GB")
    size = int(number * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{name}={value!r} is not allowed: the {what} must be at least 1 byte, e.g. 8GB")
    return size


def parse_input_shape(value: str | Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) from '3x224x224' (also '3,224,224', '3 x 224 x 224') or a sequence of three ints."""
    bad = ValueError(f"input={value!r} is not allowed: use C x H x W, three integers >= 1, e.g. 3x224x224")
    if isinstance(value, str):
        parts = [p for p in re.split(r"[x×X,\s]+", value.strip().strip("()[]")) if p]
        if len(parts) != 3 or not all(re.fullmatch(r"[0-9]+", p) for p in parts):  # not isdigit: '²' is a digit
            raise bad
        shape = tuple(int(p) for p in parts)
    elif isinstance(value, Sequence) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        shape = tuple(value)
    else:
        raise bad
    if min(shape) < 1:
        raise bad
    return shape  # type: ignore[return-value]



class LimitError(ValueError):
    """A computation asked for more than its caller allows (input size, parameters, batch)."""


def square_shape(values: int, channels: int = 3) -> str:
    """The largest square image of `channels` channels within `values`, as 'CxSxS' (3x128x128)."""
    side = max(1, math.isqrt(values // channels))
    return f"{channels}x{side}x{side}"


def check_input_size(shape: tuple[int, int, int], max_values: int | None) -> None:
    """LimitError naming the shape and the limit when C x H x W is above `max_values` (None: no limit)."""
    values = math.prod(shape)
    if max_values is not None and values > max_values:
        raise LimitError(f"input={'x'.join(map(str, shape))} has {values:,} values per image (C x H x W), above "
                         f"the limit of {max_values:,} here (e.g. {square_shape(max_values, shape[0])})")


def check_batch(batch: int, max_batch: int | None) -> None:
    """LimitError naming the batch and the limit when it is above `max_batch` (None: no limit)."""
    if max_batch is not None and batch > max_batch:
        raise LimitError(f"batch_size={batch:,} is above the limit of {max_batch:,} images per batch here")
