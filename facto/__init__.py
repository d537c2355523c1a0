"""Facto: memory-efficient CNN training (Facto-CNN, ACML 2023) you can see and play with.

The public API, re-exported; nothing is defined here. Importing it costs little beyond
torch itself: TensorLy, torchvision, SciPy, scikit-learn and Plotly load only when used.

The parts, each a subpackage: `method` (factorized layers, recompute, model surgery),
`compress` (the storage format of saved maps and its kernels), `memory` (the meter, the
audit, the step peak, the planner), `engine` (the training step and loop, data, models,
jobs, sweeps, benchmarks), `store` (the run history), `plots` (figures), `cli` (the
`facto` command); `config` holds every setting once.
"""
from .cli.program import is_program as _is_program
from .cli.program import quiet_start_up as _quiet_start_up

__version__ = "0.8.0"

with _quiet_start_up():  # the facto program: Ctrl-C while torch and the rest load ends with one line
    from .memory.process import return_big_buffers
    from .memory.process import return_memory_wanted as _return_memory_wanted

    if _is_program() and _return_memory_wanted():  # FACTO_RETURN_MEMORY=1: see facto.memory.process
        return_big_buffers()
    import torch as _torch  # noqa: F401

    from . import compress
    from .config import PRESETS, SETTINGS, RankPolicy, RunConfig, parse_rank, preset
    from .engine.build import Variant, seeded
    from .engine.data import DataNotFoundError, dataset_info, list_datasets, load_data
    from .engine.events import EvalEvent, FailureEvent, ModelsEvent, StartEvent, StepEvent, SummaryEvent
    from .engine.jobs import Job, JobRegistry
    from .engine.models import create_model, list_models, register_model
    from .engine.recorder import record
    from .engine.step import train_step
    from .engine.starting import InitError, InitReport, load_state, read_state_file
    from .engine.sweep import sweep
    from .engine.train import compare, run
    from .memory.meter import ActivationMeter, hold, measure_activations, saved_activations
    from .method.dense import to_dense
    from .method.factorize import LayerReport, describe, factorize, format_report, with_relu_masks
    from .method.layers import FactoConv2d, FactoLinear, IndexMaxPool2d, MaskReLU
    from .method.recompute import FactoConvBN, fuse_recompute
    from .store import RunStore

__all__ = [
    "PRESETS", "SETTINGS", "ActivationMeter", "DataNotFoundError", "EvalEvent", "FactoConv2d", "FactoConvBN",
    "FactoLinear", "FailureEvent", "IndexMaxPool2d", "InitError", "InitReport", "Job", "JobRegistry", "LayerReport",
    "MaskReLU", "ModelsEvent",
    "RankPolicy", "RunConfig", "RunStore", "StartEvent", "StepEvent", "SummaryEvent", "Variant", "__version__",
    "compare", "compress", "create_model", "dataset_info", "describe", "factorize", "format_report",
    "fuse_recompute", "hold", "list_datasets", "list_models", "load_data", "load_state", "measure_activations",
    "parse_rank", "read_state_file",
    "preset", "record", "register_model", "return_big_buffers", "run", "saved_activations", "seeded", "sweep", "to_dense",
    "train_step", "with_relu_masks",
]
