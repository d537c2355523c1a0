"""benchmarks/step_peak_parts.py: the buffers it finds alive at a step's peak add up to the rise that
facto.memory.step_peak measures for the same step from the profiler's own running count."""
from __future__ import annotations

import pytest
import torch

from facto.config import RunConfig
from facto.engine.build import dense_model
from facto.memory.step_peak import measure_step_peak_cpu

from ..scripts import load_benchmark


@pytest.mark.parametrize("name", ["dense", "facto"])
def test_buffers_at_the_peak_make_the_measured_rise(name):
    bench = load_benchmark("step_peak_parts")
    variant = bench.VARIANTS[name]
    dense = dense_model(RunConfig(model="simple_cnn", seed=0), 10, 1, torch.device("cpu"))
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    model = variant.build(dense)
    events = bench.trace_events(model, variant, x, y)
    rise, held, buffers = bench.peak_buffers(events)
    measured = measure_step_peak_cpu(model, x, y, variant.bits)
    assert held == sum(size for size, _, _ in buffers) >= rise  # the rise is made of buffers it names
    assert abs(rise - max(measured.forward_rise, measured.backward_rise)) <= 0.05 * rise
    forward, backward = bench.phase_peaks(events)  # each phase agrees with facto.memory.step_peak's own split
    assert max(forward, backward) == rise
    assert abs(forward - measured.forward_rise) <= 0.05 * rise and abs(backward - measured.backward_rise) <= 0.05 * rise
    labels = [bench.allocated_by(events, ts, tid) for _, ts, tid in buffers]
    assert all(" / aten::" in label for label in labels)  # each buffer is traced to the operator that made it
