"""`python -m facto`: user mistakes are one line + exit 2; train/sweep/inspect/runs work end to end."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from facto.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--max-train", "128", "--max-test", "64", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(autouse=True)
def facto_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("argv, needle", [
    (["train", "--model", "nope"], "nope"),
    (["train", "--bits", "0"], "bits=0"),
    (["train", "--rank", "2.0"], "rank=2.0"),
    (["train", "--update", "middle"], "middle"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["train", "--no-such-flag"], "no-such-flag"),
    (["runs", "show", "4242"], "4242"),
    (["runs", "list", "--limit", "0"], "--limit='0'"),
    (["sweep", "--html", "no/such/folder/sweep.html"], "the folder no/such/folder does not exist"),
    (["sweep", "--html", "."], "--html . is a folder"),
    (["bench", "--html", "no/such/folder/bench.html"], "the folder no/such/folder does not exist"),
    (["runs", "export", "4242", "-o", "never.csv"], "4242"),
    (["bench", "--models", "nope"], "nope"),
    (["bench", "--models", ""], "--models"),
    (["bench", "--seeds", "a"], "--seeds='a'"),
    (["bench", "--rank", "2.0"], "rank='2.0'"),
    (["bench", "--epochs", "0"], "epochs=0"),
    (["bench", "--batch", "0"], "batch_size=0"),
    (["bench", "--device", "tpu"], "tpu"),
    (["bench", "--max-batch-gb", "-1"], "--max-batch-gb=-1"),
    (["bench", "--bogus"], "--bogus"),
    (["plan", "--input", "3x224"], "3x224"),
    (["inspect", "--model", "tv:resnet18"], "is for facto plan"),
    (["inspect", "--model", "alexnet"], "cannot take 1x32x32 images"),
])
def test_user_mistakes_print_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "never.csv").exists()  # an export of an unknown run creates no file


def test_module_entry_point_exit_code(facto_home):
    env = {**os.environ, "FACTO_HOME": str(facto_home)}
    proc = subprocess.run([sys.executable, "-m", "facto", "train", "--bits", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: bits=0") and "Traceback" not in proc.stderr


def test_train_json_summary_and_runs_commands(capsys, tmp_path):
    assert main(["train", *TINY, "--max-steps", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["saving_pct"] > 50
    assert main(["runs", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:3] == ["id", "started", "status"])
    assert "completed" in table[header + 1]
    assert re.search(r"\b20\d\d-\d\d-\d\d \d\d:\d\d\b", table[header + 1])  # when it started, readable
    assert main(["runs", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)  # for scripts: the document alone on stdout
    assert listed["id"] == 1 and listed["status"] == "completed" and listed["saving_pct"] == summary["saving_pct"]
    assert set(listed["accuracy"]) == {"baseline", "facto"}
    out_csv = tmp_path / "run.csv"
    assert main(["runs", "export", "1", "-o", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert {r["variant"] for r in rows} == {"baseline", "facto"}
    capsys.readouterr()
    for bad in (tmp_path / "no" / "such" / "folder.csv", tmp_path):  # a missing folder; a folder
        assert main(["runs", "export", "1", "-o", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output {bad}") and err.count("\n") == 1, err
    assert main(["runs", "show", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    assert main(["runs", "rm", "1"]) == 0
    assert main(["runs", "show", "1"]) == 2


def test_train_table_output(capsys):
    assert main(["train", *TINY, "--max-steps", "2", "--quiet", "--no-store"]) == 0
    captured = capsys.readouterr()
    assert "baseline" in captured.out and "facto" in captured.out and "saves" in captured.out
    # two steps: the baseline is near chance, and the CLI says so (as the app does), on stderr
    note = [line for line in captured.err.splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and "too short to compare" in note[0] and "--epochs" in note[0], captured.err
    # the run was cut by its step limit: the note says so first
    assert "stopped at its limit of 2 steps" in note[0] and "Raise the limit" in note[0]
    assert "(--max-steps, --epochs" in note[0]


def test_a_baseline_alone_is_not_called_too_short_to_compare(capsys):
    assert main(["train", *TINY, "--max-steps", "2", "--quiet", "--no-store", "--variants", "baseline"]) == 0
    assert "note:" not in capsys.readouterr().err  # nothing is compared


def test_train_says_nothing_of_length_when_the_baseline_learned_enough(capsys, monkeypatch):
    """The note follows the library's threshold (a 2-step run counts as long enough at 0 %)."""
    import facto.engine.train

    monkeypatch.setattr(facto.engine.train, "TOO_SHORT_PCT", 0.0)
    assert main(["train", *TINY, "--max-steps", "2", "--quiet", "--no-store", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "completed" and "note:" not in captured.err


def test_sweep_table_and_html(capsys, tmp_path):
    html = tmp_path / "sweep.html"
    assert main(["sweep", *TINY, "--max-steps", "2", "--ranks", "0.5", "--bits-list", "4,8",
                 "--html", str(html), "--no-store"]) == 0
    captured = capsys.readouterr()
    table = captured.out.strip().splitlines()
    assert table[0].split()[:4] == ["variant", "rank", "bits", "update"]
    assert sorted(line.split()[0] for line in table[1:]) == ["baseline", "facto", "facto"]
    baseline = next(line.split() for line in table[1:] if line.startswith("baseline"))
    assert baseline[1:4] == ["-", "-", "-"]  # dense: no rank, no bits, no trained factor
    progress = [line for line in captured.err.splitlines() if line.startswith("[") and "acc=" in line]
    assert [line.split()[0] for line in progress] == ["[1/3]", "[2/3]", "[3/3]"]  # on stderr, one per point
    assert progress[0].startswith("[1/3] baseline (dense fp32):") and "bits=None" not in captured.err
    assert "note: The baseline reached only" in captured.err and "too short to rank" in captured.err
    assert "a higher step limit (now 2 steps)" in captured.err
    assert html.exists() and "plotly" in html.read_text()[:5000].lower()
    assert f"\nchart written to {html}\n" in captured.err  # the sweep's line, not a point's


def test_sweep_json_is_the_only_thing_on_stdout(capsys):
    assert main(["sweep", *TINY, "--max-steps", "2", "--ranks", "0.5", "--bits-list", "4", "--json",
                 "--no-store"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["facto", "baseline"] and rows[0]["saving_pct"] > 50


def test_inspect_prints_report_and_layer_bytes(capsys):
    assert main(["inspect", "--model", "resnet20", "--rank", "0.25", "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "factorized" in out and "TOTAL" in out and "saving:" in out


@pytest.mark.slow
def test_torchrun_two_processes_gloo(facto_home):
    """DDP on CPU: 2 processes with gloo; rank 0 prints and stores, metrics reduced across ranks."""
    env = {**os.environ, "FACTO_HOME": str(facto_home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--tee", "2", "-m",
         "facto", "train", *TINY, "--max-steps", "3", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    ranks = [line for line in proc.stderr.splitlines() if line.startswith("[default")]
    assert proc.returncode == 0, "\n".join(ranks[-40:]) + proc.stderr[-1500:]
    summary = json.loads(proc.stdout)  # exactly one JSON document: only rank 0 prints
    assert summary["steps"] == {"baseline": 3, "facto": 3}
    from facto.store.history import RunStore

    runs = RunStore(facto_home / "runs.db").list_runs()
    assert len(runs) == 1 and runs[0].status == "completed"


@pytest.mark.parametrize("command", ["train", "sweep", "inspect", "runs", "plan", "bench"])
def test_every_command_has_a_working_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bench_max_batch_without_cuda_is_refused_before_any_work(capsys, monkeypatch):
    """The largest-batch search needs CUDA: said at once, not after minutes of benchmarking."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--max-batch-gb", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --max-batch-gb needs a CUDA GPU") and captured.out == ""


def test_the_audit_has_a_help_and_refuses_unknown_flags(capsys):
    """`facto audit --help` explains instead of starting minutes of measurements."""
    with pytest.raises(SystemExit) as done:
        main(["audit", "--help"])
    assert done.value.code == 0 and "usage: facto audit" in capsys.readouterr().out
    assert main(["audit", "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("error: facto audit: unrecognized arguments: --bogus")