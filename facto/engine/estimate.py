"""What a comparison will do before it starts: the images, steps and tests of its settings
(`run_work`, from the dataset's known sizes, no data read) and about how long it takes
(`estimate_seconds`, from one dense training step timed on this machine).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..config import RunConfig

# A comparison's step trains the baseline and Facto on one batch: about this many dense steps
# (Facto + recompute 4-bit steps at 1.3-1.6x dense on the CPU, docs/benchmarks.md).
STEPS_PER_COMPARISON_STEP = 2.6
# A test batch is a forward pass: about a third of a training step.
TEST_BATCH_SHARE = 1 / 3


@dataclass(frozen=True)
class RunWork:
    """What a run would do: the images it trains on and tests on (None: the dataset's size is not
    known here), its training steps (per epoch and in all), its tests and its dense warm-up steps."""

    train_images: int | None
    test_images: int | None
    steps_per_epoch: int
    steps: int
    tests: int
    warmup_steps: int = 0


def _images(limit: int | None, size: int | None) -> int | None:
    """Images a subset setting gives: the limit, the dataset's size when smaller, None when unknown."""
    if limit and size:
        return min(limit, size)
    return limit or size


def run_work(config: RunConfig) -> RunWork:
    """The work of `config`'s comparison, from its dataset's known sizes (no data is read)."""
    from .data import dataset_info
    from .train import RunTooLongError, Schedule, planned_steps

    info = dataset_info(config.dataset)
    train, test = _images(config.max_train, info.train_size), _images(config.max_test, info.test_size)
    if train is None:
        return RunWork(None, test, 0, 0, 0, config.warm_start_steps)
    per_epoch = math.ceil(train / config.batch_size)
    steps = planned_steps(config, per_epoch)
    try:
        tests = Schedule(steps, per_epoch, config.eval_every, config.cycle_every).evals_planned()
    except RunTooLongError:
        tests = config.epochs
    return RunWork(train, test, per_epoch, steps, tests, config.warm_start_steps)


def dense_step_seconds(config: RunConfig, device_name: str = "cpu", repeats: int = 2) -> float:
    """Seconds of one dense training step of `config`'s model at its batch size on `device_name`
    (the fastest of `repeats` timed steps after one untimed step)."""
    import torch

    from .build import dense_model
    from .data import dataset_info
    from .devices import resolve_device
    from .step import train_step

    info = dataset_info(config.dataset)
    device = resolve_device(device_name)
    model = dense_model(config, info.num_classes, info.in_channels, device)
    x = torch.randn(config.batch_size, info.in_channels, info.image_size, info.image_size, device=device)
    y = torch.randint(0, info.num_classes, (config.batch_size,), device=device)
    best = math.inf
    for i in range(repeats + 1):
        began = time.perf_counter()
        train_step(model, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - began)
    return best


def estimate_seconds(work: RunWork, dense_step_s: float, batch_size: int) -> float:
    """About how long a comparison doing `work` takes when one dense step takes `dense_step_s`:
    the dense warm-up, both variants' steps, and their tests (a forward pass over the test images each)."""
    test_batches = math.ceil((work.test_images or 0) / batch_size)
    per_test = 2 * test_batches * dense_step_s * TEST_BATCH_SHARE
    steps = work.warmup_steps + work.steps * STEPS_PER_COMPARISON_STEP
    return steps * dense_step_s + work.tests * per_test
