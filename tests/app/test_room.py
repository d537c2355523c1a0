"""room.py: the app server's settings read from its environment, without Streamlit.

Good values are taken, a value a variable cannot take falls back to its default (or the safe
side) with one plain line naming the variable, and a room's limits refuse what they bound.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facto.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = ["FACTO_ROOM", "FACTO_ROOM_DOWNLOAD", "FACTO_MAX_RUNS", "FACTO_JOBS", "FACTO_DATA_DIR",
             "FACTO_ROOM_MAX_EPOCHS", "FACTO_ROOM_MAX_BATCH", "FACTO_ROOM_MAX_TRAIN", "FACTO_ROOM_MAX_PARAMS",
             "FACTO_ROOM_RUNS_PER_VISITOR", "FACTO_ROOM_MAX_INPUT", "FACTO_ROOM_MAX_WARMUP", "FACTO_ROOM_MAX_SWEEP"]


@pytest.fixture()
def room(monkeypatch):
    """The room module, with none of the server's variables set."""
    monkeypatch.syspath_prepend(str(ROOT))
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    import room as module

    return module


def test_room_does_not_import_streamlit():
    code = "import room, sys; assert 'streamlit' not in sys.modules, 'room imported streamlit'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_nothing_set_is_no_room_and_no_problem(room):
    assert room.room() == room.Room() and not room.room().enabled
    assert room.env_problems() == []
    assert room.max_runs() == 1 and room.jobs_mode() == "process"


def test_good_values_are_taken(room, monkeypatch, tmp_path):
    for name, value in {"FACTO_ROOM": "yes", "FACTO_ROOM_DOWNLOAD": "1", "FACTO_MAX_RUNS": "3",
                        "FACTO_JOBS": "Thread", "FACTO_DATA_DIR": str(tmp_path), "FACTO_ROOM_MAX_EPOCHS": " 4 ",
                        "FACTO_ROOM_MAX_BATCH": "+64", "FACTO_ROOM_MAX_TRAIN": "5000",
                        "FACTO_ROOM_MAX_PARAMS": "1000000", "FACTO_ROOM_RUNS_PER_VISITOR": "2",
                        "FACTO_ROOM_MAX_INPUT": "3072"}.items():
        monkeypatch.setenv(name, value)
    assert room.room() == room.Room(enabled=True, max_epochs=4, max_batch=64, max_train=5000, max_params=1_000_000,
                                    runs_per_visitor=2, max_input=3072, data_dir=str(tmp_path), download=True)
    assert room.max_runs() == 3 and room.jobs_mode() == "thread"
    assert room.env_problems() == []


@pytest.mark.parametrize("value", ["0", "off", "no", "false", ""])
def test_a_room_switched_off(room, monkeypatch, value):
    monkeypatch.setenv("FACTO_ROOM", value)
    monkeypatch.setenv("FACTO_ROOM_MAX_EPOCHS", "4")
    assert not room.room().enabled and room.env_problems() == []


def test_a_room_without_a_data_folder_uses_the_default_one(room, monkeypatch):
    monkeypatch.setenv("FACTO_ROOM", "1")
    assert room.room().data_dir == RunConfig().data_dir and not room.room().download


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("FACTO_MAX_RUNS", "0", "FACTO_MAX_RUNS='0' is not allowed: use an integer >= 1. Using 1."),
    ("FACTO_ROOM_MAX_EPOCHS", "three", "FACTO_ROOM_MAX_EPOCHS='three' is not allowed: use an integer >= 1. Using 10."),
    ("FACTO_ROOM_MAX_BATCH", "-5", "FACTO_ROOM_MAX_BATCH='-5' is not allowed: use an integer >= 1. Using 256."),
    ("FACTO_ROOM_MAX_TRAIN", "2.5", "FACTO_ROOM_MAX_TRAIN='2.5' is not allowed: use an integer >= 1. Using 20000."),
    ("FACTO_ROOM", "y", "FACTO_ROOM='y' is not allowed: use 1 (on) or 0 (off). Taken as on."),
    ("FACTO_ROOM_DOWNLOAD", "sure", "FACTO_ROOM_DOWNLOAD='sure' is not allowed: use 1 (on) or 0 (off). Taken as off."),
    ("FACTO_JOBS", "fork", "FACTO_JOBS='fork' is not allowed: use process or thread. Using process."),
])
def test_a_bad_value_falls_back_with_a_line_naming_the_variable(room, monkeypatch, name, value, problem):
    monkeypatch.setenv("FACTO_ROOM", "1")
    monkeypatch.setenv(name, value)
    assert room.env_problems() == [problem]
    r = room.room()
    assert r.enabled  # an unreadable FACTO_ROOM counts as on: the safe side
    defaults = room.Room(enabled=True, data_dir=RunConfig().data_dir)
    assert r == defaults and room.max_runs() == 1 and room.jobs_mode() == "process"


@pytest.mark.parametrize("value", ["²", "١٢", "３", "-1", "1e3", "12a", "0x10"])
def test_an_integer_setting_takes_only_ascii_digits(room, monkeypatch, value):
    """'²'.isdigit() holds but int('²') raises; '３' and '١٢' are digits of other scripts: each is named
    in one line and the default used, where '²' used to raise on every page."""
    monkeypatch.setenv("FACTO_ROOM", "1")
    monkeypatch.setenv("FACTO_ROOM_MAX_EPOCHS", value)
    assert room.env_problems() == [f"FACTO_ROOM_MAX_EPOCHS={value!r} is not allowed: use an integer >= 1. Using 10."]
    assert room.room().max_epochs == 10


@pytest.mark.parametrize(("value", "expected"), [("", 10), ("  ", 10), (" 7 ", 7), ("+7", 7), ("007", 7)])
def test_an_integer_setting_in_ascii_digits_or_empty_is_taken(room, monkeypatch, value, expected):
    monkeypatch.setenv("FACTO_ROOM", "1")
    monkeypatch.setenv("FACTO_ROOM_MAX_EPOCHS", value)
    assert room.env_problems() == [] and room.room().max_epochs == expected


@pytest.mark.parametrize(("text", "expected"), [("12", 12), (" 3 ", 3), ("+4", 4), ("²", None), ("３", None),
                                                ("١٢", None), ("-1", None), ("1e3", None), ("", None), ("1 2", None)])
def test_ascii_int(room, text, expected):
    assert room.ascii_int(text) == expected


def test_page_computations_are_bounded_tighter_in_a_room(room, monkeypatch):
    server = room.page_limits(room.Room())
    assert (server.max_input, server.max_params, server.max_batch) == (3 * 224 * 224, 30_000_000, 1024)
    monkeypatch.setenv("FACTO_ROOM", "1")
    in_room = room.page_limits(room.room())
    assert (in_room.max_input, in_room.max_params, in_room.max_batch) == (3 * 128 * 128, 30_000_000, 256)
    monkeypatch.setenv("FACTO_ROOM_MAX_INPUT", "3072")
    assert room.page_limits(room.room()).max_input == 3072
    assert "Fit my GPU plans images of up to 3,072 values (e.g. 3x32x32)" in room.room().describe()


def test_every_bad_variable_gets_its_own_line(room, monkeypatch):
    for name in ("FACTO_MAX_RUNS", "FACTO_ROOM_MAX_EPOCHS", "FACTO_ROOM_RUNS_PER_VISITOR"):
        monkeypatch.setenv(name, "none")
    lines = room.env_problems()
    assert [line.split("=")[0] for line in lines] == ["FACTO_MAX_RUNS", "FACTO_ROOM_MAX_EPOCHS",
                                                      "FACTO_ROOM_RUNS_PER_VISITOR"]


def problems(room, r, config: RunConfig, params: int | None) -> dict[str, str]:
    from facto.engine.estimate import run_work

    return room.room_problems(r, config, params, run_work(config))


def test_a_room_refuses_what_its_limits_bound(room):
    r = room.Room(enabled=True, max_epochs=3, max_batch=64, max_train=1000, max_params=2_000_000)
    assert problems(room, r, RunConfig(epochs=3, batch_size=64, max_train=1000), 1_000_000) == {}
    found = problems(room, r, RunConfig(model="resnet20", epochs=5, batch_size=128), 2_500_000)
    assert found == {"epochs": "Epochs 5 is above this room's limit of 3.",
                     "batch_size": "Batch size 128 is above this room's limit of 64.",
                     # "all" of digits is its 1,400 training images
                     "max_train": "All 1,400 training images is above this room's limit of 1,000: set Train images "
                                  "to 1,000 or fewer.",
                     "model": "resnet20 has 2.5 M parameters, above this room's limit of 2.0 M."}
    assert problems(room, room.Room(), RunConfig(epochs=500, batch_size=4096), 10**9) == {}  # no room: no limit
    assert problems(room, r, RunConfig(epochs=1, max_train=10), None) == {}  # parameters unknown: not refused


def test_train_images_all_is_the_datasets_size_and_a_room_takes_it_within_its_limit(room):
    """The room's defaults run: digits' "all" is the 1,400 images a run really loads, below 20,000."""
    from facto.engine.data import load_data
    from facto.engine.estimate import run_work

    config = RunConfig()
    bundle = load_data(config.dataset, config.data_dir, batch_size=config.batch_size)
    work = run_work(config)
    assert (work.train_images, work.test_images) == (bundle.train_size, bundle.test_size) == (1400, 397)
    assert work.steps_per_epoch == len(bundle.train_loader) and work.steps == config.epochs * len(bundle.train_loader)
    assert problems(room, room.Room(enabled=True), config, 100_000) == {}
    small = room.Room(enabled=True, max_train=1000)
    assert problems(room, small, RunConfig(max_train=999), None) == {}
    assert "max_train" in problems(room, small, RunConfig(max_train=1001), None)


def test_a_room_bounds_testing(room):
    """Testing after every step of a big test set would cost a room more than its training."""
    r = room.Room(enabled=True, max_epochs=2, max_train=1000)  # 2,000 images of tests at most
    assert problems(room, r, RunConfig(epochs=2, max_train=1000, max_test=500), None) == {}  # 2 tests of 500
    found = problems(room, r, RunConfig(epochs=2, max_train=1000, max_test=500, eval_every=4), None)
    # 1,000 images in batches of 64: 16 steps an epoch, 32 in all, a test after steps 4, 8, ..., 32 of
    # digits' 397 test images (max_test 500 is above its size)
    assert list(found) == ["eval_every"] and "8 tests of 397 images (3,176 in all)" in found["eval_every"]
    assert list(problems(room, r, RunConfig(epochs=1, max_train=100, max_test=1001), None)) == ["max_test"]


def test_a_room_bounds_the_warm_up(room, monkeypatch):
    """A warm-up of 10**8 steps would hold the room's only slot for hours before a first step shows."""
    monkeypatch.setenv("FACTO_ROOM", "1")
    monkeypatch.setenv("FACTO_ROOM_MAX_WARMUP", "500")
    r = room.room()
    assert r.max_warmup == 500 and "500 warm-up steps" in r.describe()
    assert problems(room, r, RunConfig(max_train=100, warm_start_steps=500), None) == {}
    assert problems(room, r, RunConfig(max_train=100, warm_start_steps=10**8), None) == {
        "warm_start_steps": "Warm-up steps 100,000,000 is above this room's limit of 500."}


def test_the_limits_are_described_in_plain_words(room):
    text = room.Room(enabled=True, max_epochs=3, runs_per_visitor=1).describe()
    assert text.startswith("Room mode: at most 3 epochs, 1,000 warm-up steps, batches of 256, 20,000 training images, "
                           "models up to 3.0 M parameters, 1 run per visitor at a time")
