"""Facto: memory-efficient CNN training (Facto-CNN, ACML 2023) you can see and play with.

The public API, re-exported; nothing is defined here. Importing it costs little beyond
torch itself: TensorLy, torchvision, SciPy, scikit-learn and Plotly load only when used.
"""
from .program import quiet_start_up as _quiet_start_up

with _quiet_start_up():  # the facto program: Ctrl-C while torch and the rest load ends with one line
    import torch as _torch  # noqa: F401

    from . import compress
    from .activations import ActivationMeter, hold, measure_activations, saved_activations
    from .build import seeded
    from .config import PRESETS, SETTINGS, RunConfig, preset
    from .data import DataNotFoundError, dataset_info, list_datasets, load_data
    from .decompose import RankPolicy, parse_rank
    from .dense import to_dense
    from .events import EvalEvent, FailureEvent, StartEvent, StepEvent, SummaryEvent
    from .factorize import LayerReport, describe, factorize, format_report, with_relu_masks
    from .fuse import FactoConvBN, IndexMaxPool2d, fuse_recompute
    from .jobs import Job, JobRegistry
    from .layers import FactoConv2d, FactoLinear, MaskReLU
    from .models import create_model, list_models, register_model
    from .recorder import record
    from .store import RunStore
    from .sweep import sweep
    from .train import compare, run

__all__ = [
    "PRESETS", "SETTINGS", "ActivationMeter", "DataNotFoundError", "EvalEvent", "FactoConv2d", "FactoConvBN",
    "FactoLinear", "FailureEvent", "IndexMaxPool2d", "Job", "JobRegistry", "LayerReport", "MaskReLU",
    "RankPolicy", "RunConfig", "RunStore", "StartEvent", "StepEvent", "SummaryEvent", "compare", "compress",
    "create_model", "dataset_info", "describe", "factorize", "format_report", "fuse_recompute", "hold",
    "list_datasets", "list_models", "load_data", "measure_activations", "parse_rank", "preset", "record",
    "register_model", "run", "saved_activations", "seeded", "sweep", "to_dense", "with_relu_masks",
]
