"""The GPU benchmark's parts run (small, on whatever device is here) and report only what they measured."""
from __future__ import annotations

import pytest
import torch

from facto.engine import gpu_bench

CUDA = torch.cuda.is_available()


def test_step_table_measures_every_variant_and_marks_cuda_only_cells():
    rows = gpu_bench.step_table((("simple_cnn", (1, 32, 32), 8),), rounds=1, log=lambda msg: None)
    assert [r.variant for r in rows] == [v.name for v in gpu_bench.VARIANTS]
    assert rows[0].vs_dense == 1.0 and all(r.step_ms > 0 for r in rows)
    facto_row = next(r for r in rows if r.variant == "Facto + recompute 4-bit")
    assert facto_row.stored_mb < 0.2 * rows[0].stored_mb
    if CUDA:  # what only a GPU measures is there
        assert all(r.launches and r.launches > 0 and r.peak_above_resident_mb is not None for r in rows)
        assert all(r.forward_growth_mb is not None for r in rows)
    else:
        assert all(r.launches is None and r.peak_above_resident_mb is None for r in rows)
        assert "n/a" in gpu_bench.markdown(rows)


@pytest.mark.skipif(CUDA, reason="a GPU is here: test_max_batch_is_measured_on_a_gpu runs instead")
def test_max_batch_needs_cuda_and_says_so():
    rows = gpu_bench.max_batch_table(4.0, log=lambda msg: None)
    assert rows and all(r.max_batch is None and r.note == "needs CUDA" for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_max_batch_is_measured_on_a_gpu():
    rows = gpu_bench.max_batch_table(0.6, cases=(("resnet20", "1x32x32"),), variants=("dense", "balanced"),
                                     log=lambda msg: None)
    by_variant = {r.variant: r for r in rows}
    assert set(by_variant) == {"dense", "balanced"} and all(r.max_batch and r.max_batch > 0 for r in rows)
    assert by_variant["balanced"].max_batch >= by_variant["dense"].max_batch
    assert all(r.predicted is not None and r.prediction_error_pct is not None for r in rows)
