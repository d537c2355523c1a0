"""What `facto` prints: tables that fit 100 columns (--wide for more), progress on stderr also with
--json (bars on a terminal, plain lines elsewhere), the line a Ctrl-C ends with, sweeps in `runs list`."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from facto.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--max-train", "128", "--max-test", "64", "--batch-size", "32", "--device", "cpu"]
WIDTH = 100  # what every table fits by default


@pytest.fixture(autouse=True)
def facto_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`facto ARGV` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_history() -> None:
    """A history with long names: a comparison, a sweep (its baseline and a point) and an interrupted run."""
    from facto.store import RunStore

    long = {"model": "mobilenet_v2", "dataset": "cifar100", "rank": "0.25", "bits": 16, "update": "last",
            "epochs": 12}
    with RunStore() as store:
        run_id = store.start_run(long)
        store.finish_run(run_id, summary={"saving_pct": 81.25, "accuracy": {"baseline": 71.5, "facto": 70.25}})
        sweep = store.start_sweep(2)
        for point, name in ((0, "mobilenet_v2 cifar100 baseline"), (1, None)):
            run_id = store.start_run(long, kind="sweep", name=name, sweep_id=sweep, sweep_point=point)
            variant = "baseline" if point == 0 else "facto"
            store.finish_run(run_id, summary={"accuracy": {variant: 68.0 + point}})
        store.finish_run(store.start_run(long), "interrupted")


def fast_bench(monkeypatch) -> None:
    """The methods benchmark with its timing rounds and training replaced by fixed numbers (its
    memory is still measured): the table's widest values (accuracy mean ± sd) in a second."""
    import facto.engine.bench as bench

    monkeypatch.setattr(bench, "step_times", lambda models, bits, x, y: [0.01 * (i + 1) for i in range(len(models))])
    monkeypatch.setattr(bench, "train_accuracy", lambda *args: 97.125)


def fast_gpu_bench(monkeypatch) -> None:
    """gpu-bench's rows as a GPU gives them (kernel launches, peaks), without measuring."""
    import facto.engine.gpu_bench as gpu

    steps = [gpu.StepRow("simple_cnn", 256, "Facto + recompute 4-bit, bf16 autocast", 12.345, 1.234, 1234, 2.5,
                         123.4, 456.7, 78.9, 0.987)] * 3
    batches = [gpu.BatchRow("tv:resnet50", 4.0, "compress-4", 123, 1.5, 130, 5.69, "")] * 2
    monkeypatch.setattr(gpu, "step_table", lambda *args, **kwargs: steps)
    monkeypatch.setattr(gpu, "max_batch_table", lambda *args, **kwargs: batches)


@pytest.mark.parametrize("argv, prepare", [
    (["plan", "--model", "simple_cnn", "--input", "1x32x32", "--budget", "1GB", "--device", "cpu"], None),
    (["runs", "list"], stored_history),
    (["inspect", "--model", "resnet20"], None),
    (["inspect", "--model", "simple_cnn", "--rank", "0.25"], None),
    (["bench", "--models", "simple_cnn", "--seeds", "0,1", "--epochs", "1", "--batch", "8"], fast_bench),
    (["gpu-bench", "--skip", "app"], fast_gpu_bench),
    (["train", *TINY, "--max-steps", "2", "--no-store"], None),
    (["sweep", *TINY, "--max-steps", "1", "--ranks", "0.25", "--bits-list", "16", "--updates", "last",
      "--no-store"], None),
], ids=["plan", "runs-list", "inspect-resnet20", "inspect-simple_cnn", "bench", "gpu-bench", "train", "sweep"])
def test_every_table_fits_100_columns(argv, prepare, capsys, monkeypatch):
    if prepare is fast_bench or prepare is fast_gpu_bench:
        prepare(monkeypatch)
    elif prepare is not None:
        prepare()
    code, out, err = run(capsys, *argv)
    assert code == 0, err[-2000:]
    lines = out.splitlines()
    assert len(lines) > 2  # a table was printed
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, "\n".join(too_wide)


def test_wide_prints_the_full_width_in_one_line_per_row(capsys):
    stored_history()
    code, out, _ = run(capsys, "runs", "list")
    assert code == 0 and not any(len(line) > WIDTH for line in out.splitlines())
    assert "mobilenet_v2 cifar100 rank=0.25 bits=16 update=last" not in out  # the long name wraps
    code, wide, _ = run(capsys, "runs", "list", "--wide")
    assert code == 0 and len(wide.splitlines()) == 5  # the header and one line per run
    assert max(len(line) for line in wide.splitlines()) > WIDTH
    assert "mobilenet_v2 cifar100 rank=0.25 bits=16 update=last" in wide
    assert "saving %" in wide.splitlines()[0]


def test_text_table_keeps_every_value_when_it_fits_a_width():
    """The one table helper: narrowed to a width by wrapping headers and texts, never cutting a value."""
    from facto.cli.args import text_table

    rows = [{"name": "a long name of several words " * 2, "value": 123456.789, "n": 7}]
    fitted = text_table(rows, ["name", "value", "n"], width=30, left=("name",), wrap=("name",))
    assert all(len(line) <= 30 for line in fitted.splitlines())
    assert "123456.79" in fitted and " ".join(fitted.split()).count("several words") == 2
    words = [w for line in fitted.splitlines()[1:] for w in line.split() if w not in ("123456.79", "7")]
    assert words == rows[0]["name"].split()  # every word of the name, in order, over several lines
    full = text_table(rows, ["name", "value", "n"], width=None, left=("name",), wrap=("name",))
    assert len(full.splitlines()) == 2


# ----------------------------------------------------------------------------- progress

def test_train_json_keeps_progress_on_stderr_in_plain_lines(capsys):
    """stdout holds the JSON document alone; stderr (not a terminal here) has a line per test, no bars."""
    code, out, err = run(capsys, "train", *TINY, "--epochs", "1", "--max-steps", "3", "--json")
    assert code == 0
    assert json.loads(out)["steps"] == {"baseline": 3, "facto": 3}
    lines = err.splitlines()
    assert any(line.startswith("device: ") and "3 steps" in line for line in lines)
    assert [line.split()[0] for line in lines if " tested at step 3/3 (epoch 1/1)" in line] == ["baseline", "facto"]
    assert "\r" not in err and "it/s" not in err and "s/it" not in err  # no bar drawn into a file


def test_sweep_json_keeps_a_line_per_point_on_stderr(capsys):
    code, out, err = run(capsys, "sweep", *TINY, "--max-steps", "1", "--ranks", "0.5", "--bits-list", "4", "--json")
    assert code == 0 and [r["variant"] for r in json.loads(out)] == ["facto", "baseline"]
    points = [line for line in err.splitlines() if "acc=" in line]
    assert [line.split()[:2] for line in points] == [["[1/2]", "baseline"], ["[2/2]", "facto"]]
    assert err.splitlines()[0].startswith("sweep #1: 2 runs")


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_bars_and_quiet_gets_nothing(capsys, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["train", *TINY, "--max-steps", "3", "--no-store", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    drawn = terminal.getvalue()
    assert "\r" in drawn and "3/3" in drawn and "baseline" in drawn and "facto" in drawn  # tqdm's bars
    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["train", *TINY, "--max-steps", "3", "--no-store", "--json", "--quiet"]) == 0
    assert "\r" not in quiet.getvalue() and "tested at" not in quiet.getvalue()  # only a note, if any


def test_plain_step_lines_come_at_most_every_few_seconds():
    """Off a terminal: a step line only once `every_s` seconds passed since the last line, never one per step."""
    from facto.cli.progress import RunProgress
    from facto.engine.events import StartEvent, StepEvent

    clock_s = [0.0]
    out = io.StringIO()
    progress = RunProgress(stream=out, every_s=10.0, clock=lambda: clock_s[0])
    progress.add(StartEvent(config={}, device="cpu", device_name="cpu", steps_per_epoch=50, total_steps=100,
                            train_size=1, test_size=1, params={"baseline": 1, "facto": 1},
                            trainable_params={}, layer_bytes={}, report=[]))
    for step in range(1, 101):
        clock_s[0] = step * 0.5  # a step every half second: 50 s in all
        for variant in ("baseline", "facto"):
            progress.add(StepEvent(variant, step, 1 + (step > 50), 1.0 / step, 0.5, 10, 10, None, 0.5, 0.1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # at 10, 20, 30, 40 and 50 s
    assert lines[0] == "step 20/100 (epoch 1/2): baseline loss 0.050, facto loss 0.050"
    assert lines[-1].startswith("step 100/100 (epoch 2/2)")


# ----------------------------------------------------------------------------- Ctrl-C

def ctrl_c_after(monkeypatch, events: int) -> None:
    """A Ctrl-C as the train or sweep command reads event number `events` (1: the first)."""
    import facto.cli.train as train

    seen = [0]

    def check() -> None:
        seen[0] += 1
        if seen[0] >= events:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "check_ctrl_c", check)


def test_ctrl_c_in_training_says_which_run_is_stored(capsys, monkeypatch):
    from facto.store import RunStore

    ctrl_c_after(monkeypatch, 6)  # loading, factorizing, start, then steps
    code, out, err = run(capsys, "train", *TINY, "--max-steps", "20")
    assert code == 130 and out == ""
    assert err.splitlines()[-1] == ("interrupted: the partial run is stored as run 1, marked interrupted, with the "
                                    "models trained so far (facto runs export 1 --model FILE)")
    with RunStore() as store:
        (stored,) = store.list_runs()
        kept = store.kept_models(1)
    assert stored.id == 1 and stored.status == "interrupted" and set(kept) == {"baseline", "facto"}


@pytest.mark.parametrize("argv, events", [
    (["train", *TINY, "--max-steps", "20", "--no-store"], 6),
    (["train", *TINY, "--max-steps", "20", "--no-store"], 1),
    (["sweep", *TINY, "--max-steps", "2", "--ranks", "0.5", "--bits-list", "4", "--no-store"], 8),
])
def test_ctrl_c_with_no_store_never_says_a_run_was_stored(argv, events, capsys, monkeypatch):
    ctrl_c_after(monkeypatch, events)
    code, _, err = run(capsys, *argv)
    assert code == 130 and "stored as" not in err and "run 1" not in err
    assert err.splitlines()[-1].endswith("nothing was stored (--no-store)")
    from facto.store.history import default_db_path

    assert not default_db_path().exists()


def test_ctrl_c_before_anything_was_stored_says_so(capsys, monkeypatch):
    """A Ctrl-C while the command reads its settings: no run exists, and the line says so."""
    import facto.cli.train as train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "config_from_args", interrupted)
    code, _, err = run(capsys, "train", *TINY)
    assert code == 130 and err == "interrupted: nothing was stored\n"


def test_ctrl_c_in_a_sweep_lists_the_finished_runs_and_the_partial_one(capsys, monkeypatch):
    from facto.store import RunStore

    ctrl_c_after(monkeypatch, 12)  # past the baseline's run and its point, inside the second run
    code, _, err = run(capsys, "sweep", *TINY, "--max-steps", "1", "--ranks", "0.5", "--bits-list", "4,8")
    assert code == 130
    with RunStore() as store:
        runs = {r.id: r.status for r in store.list_runs()}
    done = sorted(i for i, s in runs.items() if s == "completed")
    (partial,) = [i for i, s in runs.items() if s == "interrupted"]
    assert done and partial > max(done)
    last = err.splitlines()[-1]
    assert last.startswith(f"interrupted after {len(done)} of 3 points: ")
    assert f"{'run' if len(done) == 1 else 'runs'} {' and '.join(map(str, done))}" in last
    assert last.endswith(f"the partial run is stored as run {partial}, marked interrupted")


def test_sigint_to_train_with_no_store_never_says_a_run_was_stored(tmp_path):
    """The program itself: SIGINT once training runs (`timeout -s INT N facto train --no-store`)."""
    env = {**os.environ, "FACTO_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facto", "train", *TINY, "--no-store", "--epochs", "50"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until it trains
        seen.append(line)
        if line.startswith("device: ") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines()[-1] == "interrupted: nothing was stored (--no-store)"
    assert "stored as" not in err and "Traceback" not in err and not (tmp_path / "home" / "runs.db").exists()


# ----------------------------------------------------------------------------- sweeps in runs list

def test_runs_list_marks_each_sweep_point_with_its_sweep_and_epochs(capsys):
    code, _, _ = run(capsys, "sweep", *TINY, "--epochs", "2", "--max-steps", "1", "--ranks", "0.5",
                     "--bits-list", "4,8")
    assert code == 0
    code, _, _ = run(capsys, "train", *TINY, "--epochs", "3", "--max-steps", "1", "--quiet")
    assert code == 0
    code, out, _ = run(capsys, "runs", "list", "--json")
    listed = {r["id"]: r for r in json.loads(out)}
    assert [(listed[i]["sweep_id"], listed[i]["sweep_point"], listed[i]["epochs"]) for i in (1, 2, 3, 4)] == [
        (1, 0, 2), (1, 1, 2), (1, 2, 2), (None, None, 3)]
    assert listed[1]["name"] == "simple_cnn digits baseline"  # the baseline, named as the baseline
    code, out, _ = run(capsys, "runs", "list", "--wide")
    rows = {int(line.split()[0]): line.split() for line in out.splitlines()[1:]}
    name_words = {1: 3, 2: 5, 3: 5, 4: 5}  # 'simple_cnn digits baseline'; the others name rank, bits, update
    for i, words in rows.items():  # id, date, time, status, the name, then sweep and epochs
        assert words[4 + name_words[i]:][:2] == (["1", "2"] if i < 4 else ["-", "3"]), words
    assert "bits=None" not in out and "rank" not in " ".join(rows[1])


def test_bench_says_what_compressed_its_maps(capsys, monkeypatch):
    """The machine line and the JSON name the compression path, which its step times depend on."""
    from facto.compress import backend

    fast_bench(monkeypatch)
    argv = ["bench", "--models", "simple_cnn", "--seeds", "0", "--epochs", "1", "--batch", "8", "--no-train"]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and json.loads(out)["compression"] == backend.path_name(torch.device("cpu"))
    monkeypatch.setattr(backend, "CPU_KERNELS", False)
    code, out, err = run(capsys, *argv)
    assert code == 0 and "device cpu (compression: PyTorch reference)" in err
