"""Where a run's weights start, and loading a state dict into a model that differs at its ends.

`RunConfig.init` names the start: `random` (drawn from the seed), `run:ID` (the baseline a stored
run trained and kept), a state-dict file, or `pretrained` (torchvision's published weights).
`load_state` puts a state dict into a model tensor by tensor: every tensor must fit, except the
first conv and the classifier, which adapt to the dataset (a first conv of another input width is
summed over its input channels, anything else there stays fresh). What was loaded, adapted and
left fresh is an `InitReport`; a tensor that does not fit is an `InitError` naming it.
"""
from __future__ import annotations

import os
import pickle
import re
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..config import INIT_PRETRAINED, INIT_RANDOM, RunConfig

__all__ = ["InitError", "InitReport", "initial_state", "load_state", "read_state_file", "pretrained_file"]

NESTED_KEYS = ("state_dict", "model_state_dict", "model")  # where checkpoints often keep the state dict
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel and torch.compile wrappers


class InitError(ValueError):
    """A run's starting weights cannot be used; the message is one line naming what and why."""


@dataclass
class InitReport:
    """What a run started from and which of its model's tensors came from there."""

    source: str  # 'random', 'run 12 (baseline)', 'file /path/x.pt', 'torchvision resnet18 IMAGENET1K_V1'
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # the first conv summed over its input channels
    new: list[str] = field(default_factory=list)  # kept as drawn from the seed: they did not fit
    skipped: list[str] = field(default_factory=list)  # in the source, not in the model (pretrained only)

    def line(self) -> str:
        """'started from run 12 (baseline): 62 tensors loaded, 2 new (fc.weight, fc.bias)'."""
        if not self.loaded and not self.adapted:
            return f"started from {self.source}"
        parts = [f"{len(self.loaded)} tensors loaded"]
        for word, names in (("adapted", self.adapted), ("new", self.new), ("skipped", self.skipped)):
            if names:
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                parts.append(f"{len(names)} {word} ({shown})")
        return f"started from {self.source}: " + ", ".join(parts)


# ----------------------------------------------------------------------------- reading a source

def read_state_file(path: str | Path, what: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file (also inside {'state_dict': ...} or {'model': ...}, with a
    'module.' prefix removed); InitError naming the file if it is missing, unreadable or holds none."""
    path = Path(os.path.expanduser(str(path)))
    what = what or f"file {path}"
    if not path.is_file():
        raise InitError(f"{what} does not exist" if not path.exists() else f"{what} is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as exc:
        reason = _first_sentence(exc)
        raise InitError(f"{what} cannot be read as a PyTorch state dict (truncated or not one: {reason})") from None
    for key in NESTED_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not loaded:
        raise InitError(f"{what} holds no state dict (a mapping of tensor names to tensors)")
    state = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise InitError(f"{what}: entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in PREFIXES:
            if str(key).startswith(prefix):
                key = str(key)[len(prefix):]
        state[str(key)] = value
    return state


def _first_sentence(exc: object, limit: int = 160) -> str:
    """The first sentence of an error's first line (torch's reading errors go on with advice)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.split(r"(?<=\.)\s", line)[0][:limit]


def pretrained_file(model: str) -> tuple[Path, str, str]:
    """(where torchvision keeps the file, its download address, the weights' name) of `model`'s
    published ImageNet weights; InitError when torchvision publishes none for it."""
    import torchvision

    name = model[3:] if model.startswith("tv:") else model
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        from .models import list_models

        own = [m for m in list_models() if m not in torchvision.models.list_models(module=torchvision.models)]
        raise InitError(f"init='pretrained' is not allowed for model={model!r}: torchvision publishes no weights "
                        f"for it ({', '.join(own)} are facto's own); use run:ID or a file") from None
    url = weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url, f"{name} {weights.name}"


def _download(url: str, target: Path) -> None:
    """Fetch `url` to `target` (torch.hub's download, which checks the file's hash prefix)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(target), hash_prefix=target.stem.rsplit("-", 1)[-1], progress=False)


def _pretrained_state(model: str) -> tuple[dict[str, torch.Tensor], str]:
    path, url, name = pretrained_file(model)
    if not path.is_file():
        try:
            _download(url, path)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            reason = _first_sentence(getattr(exc, "reason", exc), 120)  # URLError: its reason
            raise InitError(f"init='pretrained': torchvision's {name} weights are not on this machine and could "
                            f"not be downloaded ({reason}); offline, copy {os.path.basename(url)} from {url} "
                            f"to {path}") from None
    return read_state_file(path, f"the pretrained weights file {path}"), f"torchvision {name}"


def _run_state(run_id: int, model: str, history: str | Path | None) -> tuple[dict[str, torch.Tensor], str]:
    from ..store.history import RunNotFoundError, RunStore, default_db_path

    db = Path(history) if history is not None else default_db_path()
    if str(db) != ":memory:" and not db.exists():
        raise InitError(f"init='run:{run_id}': there is no run history at {db}")
    with RunStore(db, read_only=str(db) != ":memory:") as store:
        try:
            run = store.get_run(run_id)
        except RunNotFoundError:
            raise InitError(f"init='run:{run_id}': run {run_id} does not exist in the history at {db}") from None
        trained = run.config.get("model")
        if trained != model:
            raise InitError(f"init='run:{run_id}': run {run_id} trained {trained}, not {model}")
        kept = store.kept_models(run_id)
    if "baseline" not in kept:
        from ..store.kept import why_none_kept

        why = why_none_kept(run)
        raise InitError(f"init='run:{run_id}': run {run_id} kept no baseline model: {why}")
    return read_state_file(kept["baseline"].path, f"run {run_id}'s model file"), f"run {run_id} (baseline)"


def initial_state(config: RunConfig, history: str | Path | None = None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(state dict, source in words) the config's `init` names; (None, 'random') for random.

    Args:
        history: the run history's database for `run:ID` (None: the default one).
    """
    init = config.init
    if init == INIT_RANDOM:
        return None, "random weights (seed %d)" % config.seed
    if init == INIT_PRETRAINED:
        return _pretrained_state(config.model)
    if config.init_run is not None:
        return _run_state(config.init_run, config.model, history)
    return read_state_file(init), f"file {init}"


# ----------------------------------------------------------------------------- loading into a model

def _ends(model: nn.Module) -> tuple[str | None, str | None]:
    """Module names of the first Conv2d and the last Linear (the classifier) in module order."""
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return first, last


def _adapt_input_width(weight: torch.Tensor, width: int) -> torch.Tensor:
    """A first conv's weight for `width` input channels: summed over them for one (a grey image seen as
    equal colour channels gives the same output), else repeated in turn and scaled to the same sum."""
    if width == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-width // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :width] * (weight.shape[1] / width)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, model_name: str = "the model",
               allow_extra: bool = False) -> InitReport:
    """Copy `state` into `model` in place; what was loaded, adapted and left new.

    Every tensor of the model must be in `state` with its shape, except those of the first conv and
    of the classifier: a first conv whose input width differs is loaded summed over its input
    channels (kernel and outputs must agree); any other misfit there keeps the model's own tensor.
    `allow_extra`: tensors of `state` the model lacks are skipped (published weights of a larger
    layout); otherwise they make the state another architecture's.
    Raises InitError naming the first tensor that does not fit; the model is then unchanged.
    """
    first, head = _ends(model)
    ends = {p for p in (first, head) if p is not None}
    own = model.state_dict()
    report = InitReport(source)
    updates: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        owner = key.rpartition(".")[0]
        value = state.get(key)
        at_end = owner in ends
        if value is None:
            if at_end or key.endswith("num_batches_tracked"):
                report.new.append(key)
                continue
            raise InitError(f"{source} does not fit {model_name}: it has no tensor {key!r} (shape {_shape(target)}); "
                            "it holds another architecture's weights")
        if value.shape == target.shape:
            updates[key] = value
            report.loaded.append(key)
        elif owner == first and key.endswith("weight") and value.dim() == 4 and \
                value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            updates[key] = _adapt_input_width(value, target.shape[1])
            report.adapted.append(key)
        elif at_end:
            report.new.append(key)
        else:
            raise InitError(f"{source} does not fit {model_name}: tensor {key!r} is {_shape(value)} there but "
                            f"{_shape(target)} in {model_name}")
    extra = [k for k in state if k not in own]
    if extra and not allow_extra:
        raise InitError(f"{source} does not fit {model_name}: it has a tensor {extra[0]!r} that {model_name} "
                        "does not have; it holds another architecture's weights")
    report.skipped = extra
    with torch.no_grad():
        for key, value in updates.items():
            own[key].copy_(value.to(own[key].dtype))
    return report


def check_init(config: RunConfig, num_classes: int, in_channels: int,
               history: str | Path | None = None) -> InitReport:
    """The report of loading the config's starting weights into a fresh model, or InitError: what a
    run checks before it starts (nothing is stored, no data is loaded)."""
    if config.init == INIT_RANDOM:  # nothing to read or to fit: no model is built
        return InitReport(initial_state(config, history)[1])
    return starting_model(config, num_classes, in_channels, history=history)[1]


def starting_model(config: RunConfig, num_classes: int, in_channels: int, device: torch.device | str = "cpu",
                   history: str | Path | None = None) -> tuple[nn.Module, InitReport]:
    """The dense model a run starts from: drawn from the seed, then loaded from the config's `init`."""
    from .build import dense_model

    model = dense_model(config, num_classes, in_channels)
    state, source = initial_state(config, history)
    report = InitReport(source) if state is None else load_state(
        model, state, source, config.model, allow_extra=config.init == INIT_PRETRAINED)
    return model.to(device), report

