"""benchmarks/step_peak_parts.py: the buffers it finds alive at a step's peak add up to the rise that
facto.memory.step_peak measures for the same step from the profiler's own running count."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from facto.config import RunConfig
from facto.engine.build import dense_model
from facto.memory.step_peak import measure_step_peak_cpu

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("step_peak_parts", ROOT / "benchmarks" / "step_peak_parts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["dense", "facto"])
def test_buffers_at_the_peak_make_the_measured_rise(name):
    bench = load_benchmark()
    variant = bench.VARIANTS[name]
    dense = dense_model(RunConfig(model="simple_cnn", seed=0), 10, 1, torch.device("cpu"))
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    model = variant.build(dense)
    events = bench.trace_events(model, variant, x, y)
    rise, held, buffers = bench.peak_buffers(events)
    measured = measure_step_peak_cpu(model, x, y, variant.bits)
    assert held == rise == sum(size for size, _, _ in buffers)  # every byte of the rise is a buffer it names
    assert abs(rise - max(measured.forward_rise, measured.backward_rise)) <= 0.05 * rise
    labels = [bench.allocated_by(events, ts, tid) for _, ts, tid in buffers]
    assert all(" / aten::" in label for label in labels)  # each buffer is traced to the operator that made it
