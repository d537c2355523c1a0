"""RunConfig and its settings, each defined once.

Every RunConfig field carries a `Setting`: its kind, allowed values or range, label, help
text and unit. Validation, the CLI's flags (`facto.cli.main`), the app's widgets and the stored
config (`to_dict` / `from_dict`) all derive from it, so a new setting (say, a new
optimizer) is one edit here plus its test.
"""
from __future__ import annotations

import numbers
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Iterable, Union

# ----------------------------------------------------------------------------- allowed values

ALLOWED_BITS = (None, 1, 2, 3, 4, 5, 6, 7, 8, 16)  # None: no compression; 16: half precision
COMPRESSED_BITS_HELP = "1..8 or 16"  # the widths that compress (None keeps a map as it is)
BITS_HELP = f"none (no compression), {COMPRESSED_BITS_HELP}"


def validate_bits(bits: int | None) -> int | None:
    """`bits` if it is one of ALLOWED_BITS, else ValueError naming it."""
    if bits is None or (isinstance(bits, int) and not isinstance(bits, bool) and bits in ALLOWED_BITS):
        return bits
    raise ValueError(f"bits={bits!r} is not allowed: use None (no compression), {COMPRESSED_BITS_HELP}")


UPDATES = ("first", "core", "last", "all")
UPDATE_HELP = {
    "first": "trains the first 1x1 factor: stores the full layer input (no saving from factorization)",
    "core": "trains the k x k core: stores its rank-sized input (big saving, trains well from scratch)",
    "last": "trains the last 1x1 factor: stores the rank-sized map after the stride (least memory, "
            "trains worse from scratch)",
    "all": "trains every factor (plain low-rank training): stores the most",
}


def validate_update(update: str) -> str:
    """`update` if it is one of UPDATES, else ValueError naming it."""
    if update not in UPDATES:
        raise ValueError(f"update={update!r} is not allowed: choose one of {', '.join(UPDATES)}")
    return update


INT_MAX = 2**53 - 1  # the largest integer setting: the app's number boxes hold it exactly, it fits 64 bits
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() also reads '１' and '1_0'
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_int(text: str) -> int:
    """An integer typed as text: an optional sign and ASCII digits; ValueError otherwise."""
    raw = str(text).strip()
    if not _INTEGER_TEXT.fullmatch(raw):
        raise ValueError(f"{text!r} is not an integer written with the digits 0-9")
    return int(raw)


def parse_float(text: str) -> float:
    """A number typed as text ('0.5', '1e-3', ASCII digits); ValueError otherwise (also nan, inf)."""
    raw = str(text).strip()
    if not _NUMBER_TEXT.fullmatch(raw):
        raise ValueError(f"{text!r} is not a number written with the digits 0-9")
    return float(raw)


RankSpec = Union[float, int, str, "RankPolicy"]
RANK_KINDS = ("fraction", "absolute", "energy", "vbmf")
RANK_HELP = ("a fraction of the channels in (0, 1] such as 0.5, a number of channels such as 16, "
             "energy:0.9 (keep 90 % of the weight's energy) or vbmf (estimated from the weights; "
             "vbmf:0.1 sets the smallest fraction)")
DEFAULT_VBMF_FLOOR = 0.1


@dataclass(frozen=True)
class RankPolicy:
    """How many channels each factorized mode keeps: parsed once, printed back as the same text.

    kind is fraction | absolute | energy | vbmf; value is its number. `str(policy)` is the
    canonical text and `RankPolicy.parse(str(policy)) == policy` (a fraction always prints
    with a decimal point, an absolute rank without one: "1.0" vs "1").
    """

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "fraction":
            text = f"{self.value:g}"
            return text if ("." in text or "e" in text) else text + ".0"
        if self.kind == "absolute":
            return str(int(self.value))
        return f"{self.kind}:{self.value:g}"

    @classmethod
    def parse(cls, rank: RankSpec, name: str = "rank") -> "RankPolicy":
        """Parse a number or text ('0.5', '16', 'energy:0.9', 'vbmf', 'vbmf:0.2'); ValueError if bad."""
        if isinstance(rank, RankPolicy):
            return rank
        bad = ValueError(f"{name}={rank!r} is not allowed: use {RANK_HELP}")
        if isinstance(rank, bool):
            raise bad
        if isinstance(rank, str):
            text = rank.strip().lower()
            if text.startswith("energy:"):
                frac = _to_float(text[len("energy:"):], bad)
                if not 0 < frac <= 1:
                    raise bad
                return cls("energy", frac)
            if text == "vbmf" or text.startswith("vbmf:"):
                floor = _to_float(text[5:], bad) if ":" in text else DEFAULT_VBMF_FLOOR
                if not 0 < floor <= 1:
                    raise bad
                return cls("vbmf", floor)
            try:
                rank = parse_int(text)
            except ValueError:
                rank = _to_float(text, bad)
        if isinstance(rank, numbers.Integral):  # int, numpy and torch integers
            if rank < 1:
                raise bad
            return cls("absolute", int(rank))
        if isinstance(rank, numbers.Real):
            if rank != rank or not 0 < rank <= 1:  # NaN
                raise bad
            return cls("fraction", float(rank))
        raise bad


def parse_rank(rank: RankSpec, name: str = "rank") -> RankPolicy:
    """`RankPolicy.parse`: one rank spec, a number or its text."""
    return RankPolicy.parse(rank, name)


def _to_float(text: str, error: Exception) -> float:
    try:
        return parse_float(text)
    except ValueError:
        raise error from None


OPTIMIZERS = ("adam", "adamw", "sgd")  # built by facto.engine.optim
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")  # autocast dtypes: facto.engine.step
DEVICES = ("auto", "cpu", "cuda", "mps")
NONE_WORDS = ("none", "fp32", "off", "")
CYCLE = "cycle"
UPDATE_CHOICES = (*UPDATES, CYCLE)


INIT_RANDOM, INIT_PRETRAINED, INIT_RUN = "random", "pretrained", "run:"
INIT_HELP = ("random (fresh weights from the seed), run:ID (the baseline a stored run trained), the path of a "
             "state-dict file (.pt, .pth) or pretrained (torchvision's published weights)")


def parse_init(value: object, name: str = "init") -> str:
    """Where a run's weights start, as text: 'random', 'pretrained', 'run:ID' (ID >= 1) or a file path.

    Only the form is checked here; whether the run, the file or the weights exist is checked when a
    run starts (`facto.engine.starting`). ValueError names the value and what is allowed.
    """
    bad = ValueError(f"{name}={value!r} is not allowed: use {INIT_HELP}")
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise bad
    text = value.strip()
    lowered = text.lower()
    if lowered in (INIT_RANDOM, INIT_PRETRAINED):
        return lowered
    if lowered.startswith(INIT_RUN):
        try:
            run_id = parse_int(text[len(INIT_RUN):])
        except ValueError:
            raise bad from None
        if run_id < 1:
            raise bad
        return f"{INIT_RUN}{run_id}"
    return text


def cycle_order() -> list[str]:
    """The factors `update='cycle'` trains in turn (never `first`: it stores the full input)."""
    return ["core", "last"]


def _models() -> list[str]:
    from .engine.models import list_models

    return list_models()


def _datasets() -> list[str]:
    from .engine.data import list_datasets

    return list_datasets()


def bits_label(bits: int | None) -> str:
    """'fp32 (none)' / '4 bits' / '16 bits (half)'."""
    if bits is None:
        return "fp32 (no compression)"
    return "16 bits (half)" if bits == 16 else f"{bits} bit" + ("s" if bits > 1 else "")


def count(n: int, word: str) -> str:
    """'1 run', '3 runs' (the word's plural adds an s)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- one setting

@dataclass(frozen=True)
class Setting:
    """Metadata of one RunConfig field.

    kind: choice | int | float | bool | text | rank | model | dataset | device | init.
    choices: allowed values (or a function returning them) for choice-like kinds.
    optional: None is allowed (text 'none'; widget value 0 for numbers).
    """

    label: str
    help: str
    kind: str
    choices: Union[tuple, Callable[[], Iterable], None] = None
    minimum: float | None = None
    maximum: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    optional: bool = False
    unit: str = ""
    group: str = "training"  # method | training | data | advanced
    choice_help: dict | None = None
    steps: tuple | None = None  # suggested values for a slider (any valid value is accepted)

    def allowed(self) -> list:
        """The allowed values of a choice-like setting (empty for free values)."""
        if self.choices is None:
            return []
        return list(self.choices() if callable(self.choices) else self.choices)

    def describe_allowed(self) -> str:
        """What is allowed, in words (for error messages and help)."""
        if self.kind == "rank":
            return RANK_HELP
        if self.kind == "init":
            return INIT_HELP
        if self.kind == "model":
            return "one of " + ", ".join(self.allowed()) + " or any torchvision classification model name"
        if self.kind == "device":
            return "one of " + ", ".join(DEVICES) + " or cuda:N"
        if self.kind == "bits":
            return BITS_HELP
        if self.allowed():
            return "one of " + ", ".join(map(str, self.allowed()))
        if self.kind in ("int", "float"):
            number = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: f"{v:g}")
            maximum = self._maximum()
            low = "" if self.minimum is None else f"{'>=' if self.min_inclusive else '>'} {number(self.minimum)}"
            high = "" if maximum is None else f"{'<=' if self.max_inclusive else '<'} {number(maximum)}"
            what = "an integer" if self.kind == "int" else "a number"
            text = " and ".join(t for t in (low, high) if t)
            return (f"{what} {text}" if text else what) + (" or none" if self.optional else "")
        if self.kind == "bool":
            return "true or false"
        return "text"

    def error(self, name: str, value: Any) -> ValueError:
        return ValueError(f"{name}={value!r} is not allowed: use {self.describe_allowed()}")

    def validate(self, name: str, value: Any) -> Any:
        """The value, normalised (rank -> RankPolicy, model -> lower case); ValueError if bad."""
        if value is None and (self.optional or self.kind == "bits"):
            return None
        kind = self.kind
        if kind == "rank":
            return RankPolicy.parse(value, name)
        if kind == "init":
            return parse_init(value, name)
        if kind == "model":
            from .engine.models import check_model_name

            return check_model_name(value)
        if kind == "device":
            if isinstance(value, str) and (value in DEVICES or
                                           re.fullmatch(r"cuda:[0-9]{1,9}", value) is not None):
                return value
            raise self.error(name, value)
        if kind in ("choice", "dataset", "bits"):
            if value in self.allowed() and not isinstance(value, bool):
                return value
            raise self.error(name, value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise self.error(name, value)
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not self._in_range(value):
                raise self.error(name, value)
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not self._in_range(value):
                raise self.error(name, value)
            return float(value)
        if not isinstance(value, str):
            raise self.error(name, value)
        return value

    def _maximum(self) -> float | None:
        """The largest allowed value: its own, and for integers at most INT_MAX."""
        if self.kind == "int":
            return INT_MAX if self.maximum is None else min(self.maximum, INT_MAX)
        return self.maximum

    def _in_range(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        maximum = self._maximum()
        if self.minimum is not None and (value < self.minimum or (value == self.minimum and not self.min_inclusive)):
            return False
        if maximum is not None and (value > maximum or (value == maximum and not self.max_inclusive)):
            return False
        return True

    # -- text (CLI flags, stored configs) ---------------------------------------------------

    def parse_text(self, name: str, text: str) -> Any:
        """A value typed as text (a CLI flag), validated."""
        raw = str(text).strip()
        if (self.optional or self.kind == "bits") and raw.lower() in NONE_WORDS:
            return None
        try:
            if self.kind in ("int", "bits"):
                value: Any = parse_int(raw)
            elif self.kind == "float":
                value = parse_float(raw)
            elif self.kind == "rank":
                value = _number_or_text(raw)
            elif self.kind == "bool":
                lowered = raw.lower()
                if lowered not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                    raise ValueError
                value = lowered in ("true", "yes", "1", "on")
            else:
                value = raw
        except ValueError:
            raise self.error(name, text) from None
        return self.validate(name, value)

    def to_text(self, value: Any) -> str:
        """The text `parse_text` reads back as `value`."""
        if value is None:
            return "none"
        if self.kind == "bool":
            return "true" if value else "false"
        return str(value)

    # -- widgets (the app) --------------------------------------------------------------

    def to_widget(self, value: Any) -> Any:
        """The value a widget shows: rank as text, an optional number's None as 0."""
        if self.kind == "rank":
            return str(value)
        if self.optional and self.kind == "int":
            return 0 if value is None else value
        return value

    def from_widget(self, name: str, value: Any) -> Any:
        """A widget's value back to a validated config value."""
        if self.kind == "rank":
            return RankPolicy.parse(_number_or_text(str(value).strip()), name)
        if self.optional and self.kind == "int":
            return None if not value else self.validate(name, int(value))
        if self.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if self.kind == "text":
            value = str(value).strip()
        return self.validate(name, value)

    def format(self, value: Any) -> str:
        """A human label for a value (select boxes, tables)."""
        if self.kind == "bits":
            return bits_label(value)
        if value is None:
            return "all" if self.kind == "int" else "none"
        return str(value)


def _number_or_text(text: str) -> Any:
    """'16' -> 16, '0.5' -> 0.5, 'energy:0.9' stays text (a rank as typed)."""
    for cast in (parse_int, parse_float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def setting(default: Any, **meta: Any) -> Any:
    """A dataclass field with a default and its Setting."""
    return field(default=default, metadata={"setting": Setting(**meta)})


# ----------------------------------------------------------------------------- the config

@dataclass(frozen=True)
class RunConfig:
    """One comparison (or single run). Validated on construction: bad values raise ValueError."""

    model: str = setting("simple_cnn", label="Model", kind="model", choices=_models, group="method",
                         help="The CNN to train twice (dense and Facto). Deeper and wider models keep "
                              "more feature maps, so they have more to save.")
    dataset: str = setting("digits", label="Dataset", kind="dataset", choices=_datasets, group="data",
                           help="digits ships with scikit-learn (offline); the others are read from the "
                                "data folder.")
    rank: RankPolicy = setting(RankPolicy("fraction", 0.5), label="Rank", kind="rank", group="method",
                               help="How many channels each factorized layer keeps: " + RANK_HELP +
                                    ". Lower rank: fewer channels stored, larger reconstruction error.")
    update: str = setting("core", label="Trained factor", kind="choice", choices=UPDATE_CHOICES,
                          group="method",
                          choice_help={**UPDATE_HELP, CYCLE: "alternates " + " and ".join(cycle_order())
                                       + ", one per epoch (or every N steps)"},
                          help="Which factor trains in each layer; only its input is stored for backward.")
    bits: int | None = setting(4, label="Bits per stored value", kind="bits", choices=ALLOWED_BITS,
                               group="method", unit="bits",
                               help="What Facto stores is compressed block-wise to this many bits per value "
                                    "(ReLUs keep exact 1-bit masks). Fewer bits: less memory, noisier "
                                    "gradients. none keeps fp32.")
    block: int = setting(64, label="Block size", kind="int", minimum=1, group="advanced", unit="values",
                         steps=(16, 32, 64, 128, 256, 512, 1024),
                         help="Values per quantization block; each block stores its own min and scale. "
                              "Smaller blocks: less error, more metadata bytes.")
    recompute: bool = setting(True, label="Recompute BatchNorm inputs", kind="bool", group="method",
                              help="Don't store BatchNorm inputs: recompute them in backward from the "
                                   "stored factor input (one cheap 1x1 conv). Less memory, a little compute.")
    epochs: int = setting(4, label="Epochs", kind="int", minimum=1, group="training",
                          help="Passes over the training set.")
    max_steps: int | None = setting(None, label="Stop after steps", kind="int", minimum=1, optional=True,
                                    group="advanced",
                                    help="Stop after this many steps, or at the end of the epochs if that comes "
                                         "first (none: all epochs).")
    batch_size: int = setting(64, label="Batch size", kind="int", minimum=1, group="training",
                              unit="images", steps=(8, 16, 32, 64, 128, 256, 512),
                              help="Images per step. Stored bytes grow in proportion, for both variants.")
    lr: float = setting(1e-2, label="Learning rate", kind="float", minimum=0, maximum=10,
                        min_inclusive=False, group="training", steps=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                        help="Peak learning rate. Too high diverges, too low learns slowly. No effect on memory.")
    optimizer: str = setting("adam", label="Optimizer", kind="choice", choices=OPTIMIZERS, group="advanced",
                             help="Adam and AdamW keep two extra values per trained weight, SGD (momentum) one.")
    weight_decay: float = setting(5e-4, label="Weight decay", kind="float", minimum=0, maximum=1,
                                  max_inclusive=False, group="advanced", help="L2 penalty on the weights.")
    schedule: str = setting("onecycle", label="Schedule", kind="choice", choices=SCHEDULES, group="advanced",
                            help="Short runs need a schedule: one-cycle warms up then anneals.")
    precision: str = setting("fp32", label="Precision", kind="choice", choices=PRECISIONS, group="advanced",
                             help="Autocast precision for both variants: bf16/fp16 run convs and matmuls in "
                                  "16 bits (faster on GPUs; the baseline then stores 16-bit maps too). On a "
                                  "CPU they save memory, not time: fp16, and bf16 on CPUs without 16-bit "
                                  "instructions, can be several times slower than fp32.")
    seed: int = setting(0, label="Seed", kind="int", minimum=0, group="training",
                        help="Initial weights, data order and stochastic rounding; the same seed repeats "
                             "a run exactly on the same machine.")
    device: str = setting("auto", label="Device", kind="device", choices=DEVICES, group="training",
                          help="auto picks a GPU when there is one. Stored bytes are the same on every "
                               "device; on CUDA the allocator's peak is shown too.")
    eval_every: int = setting(0, label="Test every N steps", kind="int", minimum=0, group="advanced",
                              help="More frequent tests give smoother accuracy curves but cost time "
                                   "(0: at the end of each epoch).")
    init: str = setting(INIT_RANDOM, label="Start from", kind="init", group="training",
                        help="The weights both variants start from: " + INIT_HELP + ". The first conv and "
                             "the classifier adapt to the dataset; the run says which tensors were loaded.")
    refit: bool = setting(True, label="Refit factors to trained weights", kind="bool", group="advanced",
                          help="From weights that have learned (a start other than random, or a warm-up): refit "
                               "each factorized layer's last factor by least squares so that its outputs match "
                               "the dense layer's on two training batches, then re-estimate BatchNorm statistics "
                               "(no labels, no gradient). The factorized model then starts near the dense model's "
                               "accuracy instead of near chance.")
    warm_start_steps: int = setting(0, label="Warm-up steps", kind="int", minimum=0, group="training",
                                    help="Train the dense model this many steps (from its starting weights) "
                                         "before factorizing it: trained weights factorize with less error. "
                                         "Costs time, not memory.")
    warm_start_dataset: str | None = setting(None, label="Warm-up data", kind="dataset", choices=_datasets,
                                             optional=True, group="training",
                                             help="The dataset the warm-up trains on (none: the run's own). "
                                                  "Another dataset makes the run a transfer: the dense model "
                                                  "learns there, then both variants fine-tune on the run's.")
    cycle_every: int = setting(0, label="Cycle every N steps", kind="int", minimum=0, group="advanced",
                               help="With update=cycle: switch the trained factor every N steps "
                                    "(0: each epoch).")
    data_dir: str = setting("~/.facto/data", label="Data folder", kind="text", group="data",
                            help="Where torchvision datasets are read from (digits needs none).")
    download: bool = setting(False, label="Download a missing dataset", kind="bool", group="data",
                             help="Needs internet; without it, missing files are an error with the fix.")
    max_train: int | None = setting(None, label="Train images", kind="int", minimum=1, optional=True,
                                    group="data", unit="images",
                                    help="Train on a fixed random subset of this many images (0/none: all).")
    keep_models: bool = setting(True, label="Keep trained models", kind="bool", group="advanced",
                                help="Keep the trained baseline and Facto models (as plain state dicts of the "
                                     "original architecture) with the run in the history, for History, "
                                     "`facto runs export` and `--init run:ID` (a stopped run: as it stopped).")
    max_test: int | None = setting(None, label="Test images", kind="int", minimum=1, optional=True,
                                   group="data", unit="images",
                                   help="Test on a fixed random subset (0/none: all): faster, noisier accuracy.")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = SETTINGS[f.name].validate(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    @property
    def init_run(self) -> int | None:
        """The run id of `init='run:ID'` (None for any other start)."""
        return int(self.init[len(INIT_RUN):]) if self.init.startswith(INIT_RUN) else None

    @property
    def start_dataset(self) -> str:
        """The dataset the dense model starts on: the warm-up's (`warm_start_dataset`) when there is a
        warm-up on another dataset, else the run's own."""
        return (self.warm_start_dataset or self.dataset) if self.warm_start_steps else self.dataset

    @property
    def facto_update(self) -> str:
        """The factor trained first (the first of the cycle for update='cycle')."""
        return cycle_order()[0] if self.update == CYCLE else self.update

    def to_dict(self) -> dict:
        """Plain JSON-ready values (rank as its text)."""
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), RankPolicy) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """Build from a dict, ignoring unknown keys (e.g. a stored config of an older version)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some fields changed (validated)."""
        return RunConfig(**{**self.to_dict(), **changes})

    def label(self) -> str:
        """'simple_cnn on digits · rank 0.5 · core · 4 bits · recompute'."""
        bits = bits_label(self.bits)
        return (f"{self.model} on {self.dataset} · rank {self.rank} · {self.update} · {bits}"
                + (" · recompute" if self.recompute else ""))


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(RunConfig)}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}


# ----------------------------------------------------------------------------- presets

PRESET_FIELDS = ("rank", "update", "bits", "recompute")
PRESETS: dict[str, dict] = {
    # the paper's recipe as we read it: train the last factor, compress the feature maps
    "paper": dict(rank=0.5, update="last", bits=4, recompute=False),
    # the measured default (README, benchmarks/engine.py): close to dense accuracy, ~94 % saving
    "balanced": dict(rank=0.5, update="core", bits=4, recompute=True),
    # every trick: recompute BN inputs, 2-bit maps
    "max-saving": dict(rank=0.5, update="core", bits=2, recompute=True),
    # fine-tuning offline: the dense model learns the digits 0-4, then both variants fine-tune on 5-9;
    # full rank keeps every direction of the trained filters (rank 0.5 keeps half their energy and
    # trails dense fine-tuning); cosine starts at the full rate (one-cycle's warm-up wastes a short budget)
    "transfer": dict(rank=1.0, update="core", bits=4, recompute=True, dataset="digits_5_9",
                     warm_start_dataset="digits_0_4", warm_start_steps=60, epochs=3, schedule="cosine"),
}
PRESET_TAGLINES = {"paper": "the paper's recipe", "balanced": "the measured default",
                   "max-saving": "least memory", "transfer": "fine-tune trained weights, offline"}
SCENARIO_FIELDS = tuple(dict.fromkeys(k for values in PRESETS.values() for k in values if k not in PRESET_FIELDS))


def preset(name: str, **overrides: Any) -> RunConfig:
    """A RunConfig from a named preset (see PRESETS) with optional overrides."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not allowed: use one of {', '.join(PRESETS)}")
    return RunConfig(**{**PRESETS[name], **overrides})


def matching_preset(config: RunConfig) -> str | None:
    """The preset whose settings `config` has (the one setting most of them when several do), else None.

    A preset of rank/update/bits/recompute alone matches whatever the other fields are; one that also
    sets a scenario (dataset, warm-up: SCENARIO_FIELDS) matches only with it."""
    def same(field: str, a: Any, b: Any) -> bool:  # rank 1.0 (full) is not rank 1 (one channel)
        return str(parse_rank(a)) == str(parse_rank(b)) if field == "rank" else a == b

    for name, values in sorted(PRESETS.items(), key=lambda item: -len(item[1])):
        ref = RunConfig(**values)
        if all(same(k, getattr(ref, k), getattr(config, k)) for k in values):
            return name
    return None


def preset_text(name: str) -> str:
    """'balanced: rank 0.5, train core, 4 bits, recompute BN (the measured default)'."""
    ref = preset(name)
    text = f"rank {ref.rank}, train {ref.update}, {bits_label(ref.bits)}" + (", recompute BN" if ref.recompute else "")
    if ref.warm_start_dataset:
        text = (f"{ref.warm_start_steps} dense steps on {ref.warm_start_dataset}, then {count(ref.epochs, 'epoch')} "
                f"on {ref.dataset}; " + text)
    tag = PRESET_TAGLINES.get(name)
    return f"{name}: {text}" + (f" ({tag})" if tag else "")
