"""Every setting is defined once (facto.config): each choice of each field goes through the CLI's
text, the app's widget value, RunConfig and the run store, and comes back the same."""
from __future__ import annotations

import pytest

from facto.cli.args import config_from_args, flag
from facto.cli.main import build_parser
from facto.config import DEFAULTS, PRESETS, SETTINGS, RankPolicy, RunConfig, matching_preset, preset
from facto.store.history import RunStore

EXAMPLES = {
    "rank": [0.5, 1.0, 0.125, 1, 16, "energy:0.9", "vbmf", "vbmf:0.2"],
    "block": [1, 16, 64, 1000],
    "epochs": [1, 4, 100],
    "max_steps": [None, 1, 50],
    "batch_size": [1, 64, 512],
    "lr": [1e-4, 0.01, 10.0],
    "weight_decay": [0.0, 5e-4, 0.5],
    "seed": [0, 7, 2**31 - 1],
    "eval_every": [0, 5],
    "warm_start_steps": [0, 20],
    "cycle_every": [0, 3],
    "data_dir": ["~/.facto/data", "/tmp/some data"],
    "max_train": [None, 1, 640],
    "max_test": [None, 64],
    "download": [False, True],
    "recompute": [False, True],
    "device": ["auto", "cpu", "cuda", "mps", "cuda:1"],
    "init": ["random", "pretrained", "run:1", "run:12", "/tmp/some weights.pt", "model.pth"],
    "keep_models": [False, True],
    "refit": [False, True],
}


def values(name: str) -> list:
    s = SETTINGS[name]
    if name in EXAMPLES:
        return EXAMPLES[name]
    return s.allowed()


CASES = [(name, value) for name in SETTINGS for value in values(name)]


def test_every_field_has_a_setting_with_label_and_help():
    for name, s in SETTINGS.items():
        assert s.label and len(s.help) > 20, name
        assert s.kind in ("choice", "int", "float", "bool", "text", "rank", "model", "dataset", "device", "bits", "init")
    assert set(EXAMPLES) | {n for n, s in SETTINGS.items() if s.allowed()} >= set(SETTINGS)


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_each_choice_round_trips_through_cli_widget_config_and_store(name, value, tmp_path):
    s = SETTINGS[name]
    config = RunConfig(**{name: value})
    normal = getattr(config, name)
    if name == "rank":
        assert normal == RankPolicy.parse(value) and RankPolicy.parse(str(normal)) == normal
    # CLI text -> value
    assert s.parse_text(name, s.to_text(normal)) == normal
    args = build_parser().parse_args(["train"] + ([flag(name)] if s.kind == "bool" and normal else
                                                  [f"--no-{name.replace('_', '-')}"] if s.kind == "bool" else
                                                  [flag(name), s.to_text(normal)]))
    if name != "device" or normal in ("auto", "cpu"):  # the CLI checks the device is really there
        assert getattr(config_from_args(args), name) == normal
    # widget value -> value
    assert s.from_widget(name, s.to_widget(normal)) == normal
    # the store keeps the config; from_dict gives the same field back
    with RunStore(tmp_path / "runs.db") as store:
        run_id = store.start_run(config.to_dict())
        stored = RunConfig.from_dict(store.get_run(run_id).config)
    assert getattr(stored, name) == normal and stored == config


@pytest.mark.parametrize("name, bad", [
    ("rank", 2.0), ("rank", "abc"), ("rank", 0), ("update", "middle"), ("bits", 0), ("bits", 9), ("bits", 3.5),
    ("block", 0), ("epochs", 0), ("batch_size", -1), ("lr", 0.0), ("lr", 11.0), ("weight_decay", 1.0),
    ("optimizer", "lbfgs"), ("schedule", "step"), ("precision", "fp8"), ("device", "tpu"), ("seed", -1),
    ("max_steps", 0), ("model", "nope"), ("dataset", "imagenet"), ("recompute", "yes"),
])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(name, bad):
    with pytest.raises(ValueError, match=f"{name}=") as info:
        RunConfig(**{name: bad})
    assert "allowed" in str(info.value) or "known" in str(info.value)
    assert SETTINGS[name].describe_allowed().split()[0] in str(info.value)


def test_defaults_come_from_the_settings_and_presets_are_valid():
    config = RunConfig()
    for name, default in DEFAULTS.items():
        assert getattr(config, name) == SETTINGS[name].validate(name, default)
    for name in PRESETS:
        assert matching_preset(preset(name)) == name
    assert matching_preset(RunConfig()) == "balanced"


def test_a_preset_at_full_rank_is_not_matched_by_rank_one():
    full = preset("transfer")
    assert str(full.rank) == "1.0" and matching_preset(full.replace(rank="1.0")) == "transfer"
    assert matching_preset(full.replace(rank=1)) is None  # one channel per mode, not full rank


def test_rank_text_is_canonical():
    assert str(RankPolicy.parse("0.50")) == "0.5" and str(RankPolicy.parse(1.0)) == "1.0"
    assert str(RankPolicy.parse("1")) == "1" and str(RankPolicy.parse(" ENERGY:0.9 ")) == "energy:0.9"
    assert RankPolicy.parse("vbmf") == RankPolicy.parse("vbmf:0.1")


@pytest.mark.parametrize("name, text", [
    ("seed", "\uff11"), ("epochs", "\u0663"), ("batch_size", "1_0"), ("block", "6 4"), ("bits", "\uff14"),
    ("rank", "\uff11\uff16"), ("rank", "0.\uff15"), ("rank", "energy:0.\uff19"), ("lr", "\uff10.1"),
    ("max_steps", "\uff15\uff10"), ("device", "cuda:\uff11"), ("weight_decay", "nan"),
])
def test_numbers_typed_as_text_take_only_the_ascii_digits(name, text):
    with pytest.raises(ValueError, match=f"{name}="):
        SETTINGS[name].parse_text(name, text)


def test_integer_settings_stop_at_2_to_the_53_minus_1():
    top = 9007199254740991  # the largest integer the app's number boxes (JavaScript numbers) hold exactly
    assert RunConfig(seed=top).seed == top and RunConfig(epochs=top).epochs == top
    for name in ("seed", "epochs", "max_steps", "batch_size", "eval_every"):
        with pytest.raises(ValueError, match=f"{name}=9007199254740992 is not allowed: use an integer >= . "
                                             f"and <= 9007199254740991"):
            RunConfig(**{name: top + 1})
        with pytest.raises(ValueError, match=f"{name}=100000000000000000000000 is not allowed"):
            SETTINGS[name].parse_text(name, "100000000000000000000000")
    assert SETTINGS["seed"].describe_allowed() == "an integer >= 0 and <= 9007199254740991"
    assert SETTINGS["max_train"].describe_allowed() == "an integer >= 1 and <= 9007199254740991 or none"
    assert SETTINGS["lr"].describe_allowed() == "a number > 0 and <= 10"
    assert SETTINGS["seed"].parse_text("seed", " +7 ") == 7 and SETTINGS["rank"].parse_text("rank", "1e-1") == \
        RankPolicy("fraction", 0.1)
