"""The GPU benchmark's parts run (small, on whatever device is here) and report only what they measured."""
from __future__ import annotations

import torch

from facto.engine import gpu_bench as gpubench


def test_step_table_measures_every_variant_and_marks_cuda_only_cells():
    rows = gpubench.step_table((("simple_cnn", (1, 32, 32), 8),), rounds=1, log=lambda msg: None)
    assert [r.variant for r in rows] == [v.name for v in gpubench.VARIANTS]
    assert rows[0].vs_dense == 1.0 and all(r.step_ms > 0 for r in rows)
    facto_row = next(r for r in rows if r.variant == "Facto + recompute 4-bit")
    assert facto_row.stored_mb < 0.2 * rows[0].stored_mb
    if not torch.cuda.is_available():
        assert all(r.launches is None and r.peak_above_resident_mb is None for r in rows)
        assert "n/a" in gpubench.markdown(rows)


def test_max_batch_needs_cuda_and_says_so():
    if torch.cuda.is_available():
        return
    rows = gpubench.max_batch_table(4.0, log=lambda msg: None)
    assert rows and all(r.max_batch is None and r.note == "needs CUDA" for r in rows)
