"""The key of one tensor's stochastic-rounding noise, drawn on the host without a device sync: what
every kernel module seeds its noise with."""
from __future__ import annotations

import torch

_SEED_BITS = 62


def mix64(v: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit value from any int."""
    v = (v + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return v ^ (v >> 31)


def kernel_seed(seed: int | None, generator: torch.Generator | None = None) -> int:
    """The key of one tensor's rounding noise (the Triton kernels' Philox key; the Numba kernels
    mix it into theirs), on the host and without a device sync.

    An explicit `seed` is used as is. Else a CPU `generator` (or torch's default CPU
    generator) draws one, so torch.manual_seed makes runs repeat; a CUDA `generator`
    is never drawn from (that would sync): its host-side seed and offset are mixed
    and its offset advanced. Keys always lie in [2**62, 2**63), so Triton sees one
    int64 argument type and never recompiles for a new seed.
    """
    if seed is None and generator is not None and generator.device.type != "cpu":
        seed = _device_generator_seed(generator)
    if seed is None:
        cpu = generator if generator is not None and generator.device.type == "cpu" else None
        seed = int(torch.randint(0, 2**_SEED_BITS, (), generator=cpu, device="cpu"))
    return (seed & (2**_SEED_BITS - 1)) | 2**_SEED_BITS


def _device_generator_seed(generator: torch.Generator) -> int | None:
    """A key from a CUDA generator's host-side seed and Philox offset (advanced by 4), or None."""
    try:
        offset = generator.get_offset()
        generator.set_offset(offset + 4)
    except (RuntimeError, AttributeError):  # a generator without a Philox offset
        return None
    return mix64(mix64(generator.initial_seed()) ^ offset)
