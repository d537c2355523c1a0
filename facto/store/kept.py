"""Trained models kept with the run history: one state-dict file per run and variant.

The files live in a `models` folder beside the history's database (`models/run-12-baseline.pt`,
`models/run-12-facto.pt`). Each is a plain state dict of the run's original architecture (the
Facto model as `facto.to_dense` gives it), so `model.load_state_dict(torch.load(path))` reads it
back into a freshly created model. A history in memory keeps no files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .files import FilePathError, write_output_file

MODEL_VARIANTS = ("baseline", "facto")
FOLDER = "models"


@dataclass(frozen=True)
class KeptModel:
    """One kept model file and its size in bytes."""

    variant: str
    path: Path
    bytes: int


def models_folder(db_path: str | Path) -> Path | None:
    """The folder of kept models beside the database at `db_path` (None for ':memory:')."""
    if str(db_path) == ":memory:":
        return None
    return Path(db_path).expanduser().parent / FOLDER


def model_path(db_path: str | Path, run_id: int, variant: str) -> Path | None:
    """Where run `run_id`'s `variant` model is kept (None for a history in memory)."""
    if variant not in MODEL_VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed: use one of {', '.join(MODEL_VARIANTS)}")
    folder = models_folder(db_path)
    return None if folder is None else folder / f"run-{int(run_id)}-{variant}.pt"


def keep(db_path: str | Path, run_id: int, states: Mapping[str, Mapping]) -> dict[str, KeptModel]:
    """Write each variant's state dict (CPU tensors) for run `run_id`; the files written.

    Written through a temporary file and renamed, so a failed write leaves no partial file.
    Raises FilePathError (a ValueError) when the folder cannot be written.
    """
    import torch

    folder = models_folder(db_path)
    if folder is None:
        return {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FilePathError(f"cannot keep the trained models in {folder}: {exc.strerror or exc}") from None
    for variant, state in states.items():
        path = model_path(db_path, run_id, variant)
        write_output_file(path, lambda fh, state=state: torch.save(dict(state), fh), "the kept model", binary=True)
    return kept(db_path, run_id)


def kept(db_path: str | Path, run_id: int) -> dict[str, KeptModel]:
    """The kept model files of run `run_id`, by variant (empty: none kept)."""
    found = {}
    for variant in MODEL_VARIANTS:
        path = model_path(db_path, run_id, variant)
        try:
            if path is not None and path.is_file():
                found[variant] = KeptModel(variant, path, path.stat().st_size)
        except OSError:
            continue
    return found


def why_none_kept(run) -> str:
    """Why `run` (a stored run: status, config, summary) has no kept model file, in words."""
    if not run.config.get("keep_models", True):
        return "keep_models was off for it (Keep trained models, in the app)"
    if run.status == "running":
        return "it is still running: its models are kept when it ends"
    if run.status == "interrupted":
        if any(((run.summary or {}).get("steps") or {}).values()):  # it trained, then stopped
            return ("it was stopped after it trained, but its models could not be kept then (the models "
                    "folder could not be written, or its process was killed)")
        return ("it was stopped before its first training step (or its process was killed), so no model "
                "was kept")
    if run.status == "failed":
        return "it failed, so it ended with no trained model"
    return "no model file of it is in the history's models folder"


def delete(db_path: str | Path, run_id: int) -> int:
    """Delete run `run_id`'s kept model files; the bytes freed."""
    freed = 0
    for model in kept(db_path, run_id).values():
        try:
            os.unlink(model.path)
            freed += model.bytes
        except FileNotFoundError:
            continue
    return freed
