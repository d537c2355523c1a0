"""Building the models a run trains, from a RunConfig: one way, used by every caller.

compare/sweep, `python -m facto inspect`, the Layers page, the planner and the benchmark all
build through here, so a Facto model is made the same way everywhere. Methods:

- dense: the model as created (fp32 maps stored as is);
- compress: compression only (ActNN-style): ReLUs keep 1-bit masks, maps are compressed;
- facto: factorized with the config's rank/update/recompute (masks, compression);
- checkpoint: each stage under torch.utils.checkpoint (only its input kept).

A `Variant` names one of these methods with the settings it trains with.
"""
from __future__ import annotations

import copy
import functools
import inspect
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import CYCLE, RunConfig, cycle_order
from ..memory.meter import hold, measure_activations
from ..method.factorize import factorize, with_relu_masks
from .models import ModelInputError, check_model_name, create_model, list_models

METHODS = ("dense", "compress", "facto", "checkpoint")

# torch's global generator is shared by every thread, and modules' reset_parameters draw from
# it through torch.nn.init without a generator. `dense_model` therefore builds under a lock
# with torch.nn.init's random functions drawing from the run's own generator, and builds
# twice, keeping the weights only when both builds agree (a model that draws from the global
# generator by other means, while another thread reseeds it, is caught that way).
_GLOBAL_RNG = threading.RLock()
BUILD_TRIES = 3


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded, exclusively among facto callers,
    and restore the generator's previous state afterwards."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _with_generator(fn: Callable, generator: torch.Generator) -> Callable:
    """`fn` (a torch.nn.init function) drawing from `generator` unless given one."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        if bound.arguments.get("generator") is None:
            bound.arguments["generator"] = generator
        return fn(*bound.args, **bound.kwargs)

    return wrapped


@contextmanager
def init_from(generator: torch.Generator) -> Iterator[None]:
    """Inside the block, torch.nn.init's random functions draw from `generator` by default."""
    names = [n for n in dir(nn.init) if not n.startswith("_") and inspect.isfunction(getattr(nn.init, n))
             and "generator" in inspect.signature(getattr(nn.init, n)).parameters]
    originals = {n: getattr(nn.init, n) for n in names}
    with _GLOBAL_RNG:
        try:
            for name, fn in originals.items():
                setattr(nn.init, name, _with_generator(fn, generator))
            yield
        finally:
            for name, fn in originals.items():
                setattr(nn.init, name, fn)


def dense_model(config: RunConfig, num_classes: int, in_channels: int,
                device: torch.device | str = "cpu") -> nn.Module:
    """The run's dense model, initialised from the config's seed, whatever other threads do.

    torch.nn.init draws from a generator of the run's own; the model is built twice and kept
    only when both builds are identical.
    """
    previous = None
    for _ in range(BUILD_TRIES):
        with seeded(config.seed), init_from(torch.Generator().manual_seed(config.seed)):
            model = create_model(config.model, num_classes, in_channels)
        if previous is not None and same_state(previous, model):
            if config.model not in list_models():  # a torchvision model: may need larger images
                check_takes_images(model, config.model, in_channels, num_classes)
            return model.to(device)
        previous = model
    raise RuntimeError("the initial weights could not be drawn reproducibly: another thread keeps "
                       "reseeding or drawing from torch's global generator")


def fresh_model(name: str, num_classes: int, in_channels: int, seed: int = 0) -> nn.Module:
    """Model `name` with weights drawn from `seed` (torch's global generator left as it was); 'tv:NAME'
    (torchvision's own layout) allowed. The planner and the GPU benchmark build through here."""
    key = check_model_name(name, torchvision_layout=True)
    with seeded(seed):
        return create_model(key, num_classes, in_channels)


def check_takes_images(model: nn.Module, name: str, in_channels: int, num_classes: int) -> None:
    """ModelInputError unless a training forward of two of the runs' images gives one logits tensor."""
    from .data import IMAGE_SIZE

    shape = f"{in_channels}x{IMAGE_SIZE}x{IMAGE_SIZE}"
    hint = (f"Facto trains on {shape} images; plan it at its own size with "
            f"`facto plan --model tv:{name} --input 3x224x224`, or pick one of {', '.join(list_models())}")
    x = torch.randn(2, in_channels, IMAGE_SIZE, IMAGE_SIZE)
    try:
        with probing(model), torch.no_grad():
            out = model(x)
    except (RuntimeError, AssertionError, ValueError, IndexError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelInputError(f"model={name!r} cannot take {shape} images ({reason}). {hint}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelInputError(f"model={name!r} gives {got} for 2 images, not one score per class "
                              f"(2, {num_classes}): it is not a plain classifier. {hint}")


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """True when two models hold identical parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def facto_model(config: RunConfig, dense: nn.Module) -> nn.Module:
    """The Facto model a run of `config` trains, factorized from `dense` (a copy; `dense` is kept)."""
    return factorize(dense, rank=config.rank, update=config.facto_update, recompute=config.recompute)


def method_model(method: str, dense: nn.Module, config: RunConfig | None = None) -> nn.Module:
    """The model `method` trains, built from `dense` (which is not modified)."""
    if method == "dense":
        return copy.deepcopy(dense)
    if method == "compress":
        return with_relu_masks(dense)
    if method == "facto":
        return facto_model(config or RunConfig(), dense)
    if method == "checkpoint":
        return with_checkpointing(dense)
    raise ValueError(f"method={method!r} is not allowed: use one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class Variant:
    """One way to train a model: how it is built from the dense one (`method`, one of METHODS) and the
    settings it trains with (`config`: rank, update and recompute of a Facto model, the bits of its
    stored maps, the precision). A run's baseline and Facto, the benchmark's methods and the
    planner's variants are each a Variant; `label` is what tables call it (default: `name`)."""

    name: str
    method: str = "dense"
    config: RunConfig = RunConfig()
    label: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not allowed: use one of {', '.join(METHODS)}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def bits(self) -> int | None:
        """Bits of the stored maps: the config's for compression and Facto, none for the others."""
        return self.config.bits if self.uses_kernels else None

    @property
    def uses_kernels(self) -> bool:
        """Whether its model calls facto.compress's kernels: compression only and Facto, whose ReLUs keep
        1-bit masks whatever the bits of their other maps."""
        return self.method in ("compress", "facto")

    @property
    def precision(self) -> str:
        return self.config.precision

    @property
    def cycle(self) -> tuple[str, ...]:
        """The factors a Facto model trains in turn (update='cycle'), else ()."""
        return tuple(cycle_order()) if self.method == "facto" and self.config.update == CYCLE else ()

    def build(self, dense: nn.Module) -> nn.Module:
        """The model this variant trains (a copy; `dense` is not modified)."""
        return method_model(self.method, dense, self.config)


def run_variants(config: RunConfig, names: tuple[str, ...] = ("baseline", "facto")) -> list[Variant]:
    """A run's variants: the dense baseline and the config's Facto model, in that order."""
    methods = {"baseline": "dense", "facto": "facto"}
    unknown = [n for n in names if n not in methods]
    if unknown or not names:
        raise ValueError(f"variants={unknown or list(names)!r} is not allowed: use baseline and/or facto")
    return [Variant(n, methods[n], config) for n in methods if n in names]


@contextmanager
def probing(model: nn.Module, hooks: list | None = None) -> Iterator[nn.Module]:
    """A measuring forward in training mode that changes nothing: BatchNorm's running statistics,
    the train/eval mode and the given hook handles are put back (removed) afterwards."""
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = model.training
    model.train()
    try:
        yield model
    finally:
        for handle in hooks or []:
            handle.remove()
        model.train(was_training)
        model.load_state_dict(state, strict=False)


def layer_bytes(model: nn.Module, x: torch.Tensor, bits: int | None, block: int = 64) -> dict[str, int]:
    """Stored bytes per module for one training-mode forward of `x` (BN statistics restored after)."""
    with probing(model):
        meter = measure_activations(model, x, bits, block)
    return {k: v for k, v in meter.by_module.items() if v}


# ----------------------------------------------------------------------------- checkpointing

class Checkpointed(nn.Module):
    """Runs `module` under torch.utils.checkpoint (non-reentrant); only its input is kept."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        if not (torch.is_grad_enabled() and self.training):
            return self.module(x)
        hold(x)  # checkpoint keeps the segment input alive: count it
        return checkpoint(self.module, x, use_reentrant=False)


def with_checkpointing(model: nn.Module, segments: int = 3) -> nn.Module:
    """A copy with each stage checkpointed: top-level Sequentials of blocks as a whole,
    a flat Sequential of layers (e.g. `features`) split into `segments` pieces at pooling layers."""
    new = copy.deepcopy(model)
    for name, child in list(new.named_children()):
        if not isinstance(child, nn.Sequential) or not any(True for _ in child.parameters()):
            continue
        flat = all(not isinstance(c, nn.Sequential) and len(list(c.children())) == 0 for c in child)
        if flat:
            setattr(new, name, nn.Sequential(*[Checkpointed(s) for s in _split(child, segments)]))
        else:
            setattr(new, name, Checkpointed(child))
    return new


def _split(seq: nn.Sequential, segments: int) -> list[nn.Sequential]:
    """Split at pooling layers when there are some, else into equal pieces."""
    cuts = [i for i, m in enumerate(seq) if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    bounds = [0, *cuts, len(seq)] if cuts else [round(i * len(seq) / segments) for i in range(segments + 1)]
    return [nn.Sequential(*list(seq)[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
