"""The app server's settings from its environment, in plain Python (no Streamlit).

Room mode (FACTO_ROOM=1 and its FACTO_ROOM_* limits), how many runs train at once
(FACTO_MAX_RUNS) and where they train (FACTO_JOBS). A host's typo must not pass silently
(FACTO_ROOM=y must not leave the room open, FACTO_ROOM_MAX_EPOCHS=three must not become 10
without a word): every reading gives its value and, when the variable holds something it cannot
take, a plain line naming it; the default (or the safe side) is used. `ui` keeps one `Room` per
server and shows `env_problems()` on the pages.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from facto.config import SETTINGS, RunConfig, count
from facto.engine.estimate import RunWork
from facto.memory.budget import square_shape

# name -> default
ENV_INTS = {"FACTO_MAX_RUNS": 1, "FACTO_ROOM_MAX_EPOCHS": 10, "FACTO_ROOM_MAX_BATCH": 256,
            "FACTO_ROOM_MAX_TRAIN": 20_000, "FACTO_ROOM_MAX_PARAMS": 3_000_000, "FACTO_ROOM_RUNS_PER_VISITOR": 1,
            "FACTO_ROOM_MAX_INPUT": 3 * 128 * 128, "FACTO_ROOM_MAX_WARMUP": 1_000, "FACTO_ROOM_MAX_SWEEP": 12}
ENV_FLAGS = {"FACTO_ROOM": True, "FACTO_ROOM_DOWNLOAD": False}  # name -> value when unreadable (the safe side)
_YES, _NO = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
JOBS_MODES = ("process", "thread")
_ASCII_INT = re.compile(r"\s*\+?([0-9]+)\s*")

# What a page computes in the server process (Fit my GPU's planner, the Layers and How it works
# measurements) is bounded, so that one visitor's input cannot take the server's memory: one plan of
# the hungriest model per input value (the registry's resnet18, 64 channels at full resolution) at
# the largest input grows the process by about 1 GB in a room (3x128x128) and 2.3 GB outside one
# (3x224x224; tv:resnet50 there: 1.2 GB).
SERVER_MAX_INPUT = 3 * 224 * 224  # values per image (C x H x W) the planner takes outside a room
PLAN_MAX_PARAMS = 30_000_000  # parameters of a model the planner builds (tv:resnet50 has 25.6 M)
SERVER_MAX_BATCH = 1024  # images per batch the Layers and How it works pages measure outside a room


@dataclass(frozen=True)
class Room:
    """Limits when the app is served to a room (FACTO_ROOM=1): set by whoever starts the server."""

    enabled: bool = False
    max_epochs: int = ENV_INTS["FACTO_ROOM_MAX_EPOCHS"]
    max_batch: int = ENV_INTS["FACTO_ROOM_MAX_BATCH"]
    max_train: int = ENV_INTS["FACTO_ROOM_MAX_TRAIN"]
    max_params: int = ENV_INTS["FACTO_ROOM_MAX_PARAMS"]
    runs_per_visitor: int = ENV_INTS["FACTO_ROOM_RUNS_PER_VISITOR"]
    max_input: int = ENV_INTS["FACTO_ROOM_MAX_INPUT"]  # values per image (C x H x W) Fit my GPU plans
    max_warmup: int = ENV_INTS["FACTO_ROOM_MAX_WARMUP"]  # warm-up steps before Facto's own training
    max_sweep: int = ENV_INTS["FACTO_ROOM_MAX_SWEEP"]  # settings one sweep trains (its baseline not counted)
    data_dir: str | None = None
    download: bool = False

    def describe(self) -> str:
        return (f"Room mode: at most {self.max_epochs} epochs, {self.max_warmup:,} warm-up steps, batches of {self.max_batch}, "
                f"{self.max_train:,} training images, models up to {self.max_params / 1e6:.1f} M parameters, "
                f"{count(self.runs_per_visitor, 'run')} per visitor at a time, sweeps of up to "
                f"{count(self.max_sweep, 'setting')}, Fit my GPU plans images of up to "
                f"{self.max_input:,} values (e.g. {square_shape(self.max_input)}); data folder and downloads are set "
                "by the host; you can delete only the runs you started.")


@dataclass(frozen=True)
class PageLimits:
    """Bounds on what a page computes in the server process, checked before the work."""

    max_input: int  # values per image (C x H x W) the planner takes
    max_params: int  # parameters of a model the planner builds
    max_batch: int  # images per batch the Layers and How it works pages measure


def page_limits(r: Room) -> PageLimits:
    """The server's bounds on page computations; in a room, the room's input and batch limits (tighter by default)."""
    if r.enabled:
        return PageLimits(r.max_input, PLAN_MAX_PARAMS, r.max_batch)
    return PageLimits(SERVER_MAX_INPUT, PLAN_MAX_PARAMS, SERVER_MAX_BATCH)


def ascii_int(text: str) -> int | None:
    """The integer written in plain ASCII digits (surrounding spaces and a leading + allowed), else None.
    str.isdigit is not enough: it holds for '²' (which int() refuses) and for other scripts' digits."""
    match = _ASCII_INT.fullmatch(text)
    return int(match.group(1)) if match else None


def _read_int(name: str) -> tuple[int, str | None]:
    """(value, problem or None) of an integer setting (>= 1; its default when unset or wrong)."""
    default, raw = ENV_INTS[name], os.environ.get(name, "").strip()
    if not raw:
        return default, None
    value = ascii_int(raw)
    if value is not None and value >= 1:
        return value, None
    return default, f"{name}={raw!r} is not allowed: use an integer >= 1. Using {default}."


def _read_flag(name: str) -> tuple[bool, str | None]:
    """(value, problem or None) of a yes/no setting (an unreadable value counts as the safe side)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _YES or raw in _NO:
        return raw in _YES, None
    safe = ENV_FLAGS[name]
    return safe, f"{name}={raw!r} is not allowed: use 1 (on) or 0 (off). Taken as {'on' if safe else 'off'}."


def _env_int(name: str) -> int:
    return _read_int(name)[0]


def _env_flag(name: str) -> bool:
    return _read_flag(name)[0]


def _read_jobs_mode() -> tuple[str, str | None]:
    """(value, problem or None) of FACTO_JOBS (process when unset or unreadable)."""
    mode = os.environ.get("FACTO_JOBS", "").strip().lower()
    if not mode or mode in JOBS_MODES:
        return mode or JOBS_MODES[0], None
    return JOBS_MODES[0], f"FACTO_JOBS={mode!r} is not allowed: use process or thread. Using process."


def jobs_mode() -> str:
    """Where runs train: 'process' (a child process each, the default) or 'thread' (FACTO_JOBS=thread)."""
    return _read_jobs_mode()[0]


def max_runs() -> int:
    """How many runs of one server train at once (FACTO_MAX_RUNS, default 1); the others queue."""
    return _env_int("FACTO_MAX_RUNS")


def env_problems() -> list[str]:
    """What the server's environment got wrong, one plain line per variable."""
    readings = [_read_int(name) for name in ENV_INTS] + [_read_flag(name) for name in ENV_FLAGS]
    return [problem for _, problem in readings + [_read_jobs_mode()] if problem]


def room() -> Room:
    """Room settings read from the environment now (FACTO_ROOM=1 and optional FACTO_ROOM_* limits)."""
    if not _env_flag("FACTO_ROOM"):
        return Room()
    return Room(enabled=True, max_epochs=_env_int("FACTO_ROOM_MAX_EPOCHS"),
                max_batch=_env_int("FACTO_ROOM_MAX_BATCH"),
                max_train=_env_int("FACTO_ROOM_MAX_TRAIN"),
                max_params=_env_int("FACTO_ROOM_MAX_PARAMS"),
                runs_per_visitor=_env_int("FACTO_ROOM_RUNS_PER_VISITOR"),
                max_input=_env_int("FACTO_ROOM_MAX_INPUT"),
                max_warmup=_env_int("FACTO_ROOM_MAX_WARMUP"),
                max_sweep=_env_int("FACTO_ROOM_MAX_SWEEP"),
                data_dir=os.environ.get("FACTO_DATA_DIR") or RunConfig().data_dir,
                download=_env_flag("FACTO_ROOM_DOWNLOAD"))


# A room field -> the Room limit bounding it (the widgets offer no more; `room_problems` checks).
FIELD_LIMITS = {"epochs": "max_epochs", "batch_size": "max_batch", "warm_start_steps": "max_warmup",
                "max_train": "max_train", "max_test": "max_train"}


def field_limit(r: Room, name: str) -> int | None:
    """The largest value room `r` allows for RunConfig field `name` (None: not bounded here)."""
    return getattr(r, FIELD_LIMITS[name]) if r.enabled and name in FIELD_LIMITS else None


def room_problems(r: Room, config: RunConfig, params: int | None, work: RunWork) -> dict[str, str]:
    """What room `r`'s limits forbid in `config`, by the RunConfig field to change (empty when it may
    run, and always outside a room). `params`: the model's parameter count (None when unknown);
    `work`: what the run would do (`Train images` "all" counts as the dataset's size)."""
    if not r.enabled:
        return {}
    problems = {}
    for name in ("epochs", "warm_start_steps", "batch_size"):  # the fields bounded by a limit of their own
        value, limit = getattr(config, name), field_limit(r, name)
        if value > limit:
            problems[name] = f"{SETTINGS[name].label} {value:,} is above this room's limit of {limit:,}."
    if work.train_images is None:
        problems["max_train"] = (f"This dataset's size is not known here: set Train images "
                                 f"(at most {r.max_train:,}).")
    elif work.train_images > r.max_train:
        which = f"{work.train_images:,}" if config.max_train else f"All {work.train_images:,}"
        problems["max_train"] = (f"{which} training images is above this room's limit of {r.max_train:,}: "
                                 f"set Train images to {r.max_train:,} or fewer.")
    if config.max_test is not None and config.max_test > r.max_train:
        problems["max_test"] = f"Test images {config.max_test:,} is above this room's limit of {r.max_train:,}."
    tested, budget = work.tests * (work.test_images or 0), r.max_train * r.max_epochs
    if "max_test" not in problems and tested > budget:
        problems["eval_every"] = (f"{count(work.tests, 'test')} of {work.test_images:,} images ({tested:,} in all) "
                                  f"is more testing than this room allows ({budget:,} images): test less often "
                                  "or on fewer images.")
    if params is not None and params > r.max_params:
        problems["model"] = (f"{config.model} has {params / 1e6:.1f} M parameters, above this room's "
                             f"limit of {r.max_params / 1e6:.1f} M.")
    return problems
