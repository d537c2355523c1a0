"""`facto` when the environment around it breaks: one clear line, exit 2, and nothing lost.

Each case runs the command with its own FACTO_HOME: in a subprocess where the process itself is
tested (Ctrl-C, a kill, a closed pipe), else through `facto.cli.main` in this process (`here`), which
returns the exit code and writes stdout and stderr as the program does.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--max-train", "128", "--max-test", "64", "--batch-size", "32", "--device", "cpu"]


def facto(*args: str, home: Path, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACTO_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "facto", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


@pytest.fixture()
def here(monkeypatch, capsys):
    """`facto ARGS` with FACTO_HOME=home through facto.cli.main in this process, as a CompletedProcess."""
    from facto.cli import main

    def run(*args: str, home: Path) -> subprocess.CompletedProcess:
        monkeypatch.setenv("FACTO_HOME", str(home))
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as done:  # --help
            code = done.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_sweep_json_is_valid_json_on_stdout_with_progress_on_stderr(tmp_path, here):
    proc = here("sweep", *TINY, "--max-steps", "2", "--ranks", "0.5", "--bits-list", "4", "--json",
                 home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert {r["variant"] for r in rows} == {"baseline", "facto"}


def test_facto_home_that_is_a_file_is_one_line_and_left_alone(tmp_path, here):
    home = tmp_path / "home"
    home.write_text("my notes")
    before = (home.read_bytes(), home.stat().st_mtime_ns)
    for args in (["runs", "list"], ["train", *TINY, "--max-steps", "1"]):
        line = one_line_error(here(*args, home=home))
        assert str(home) in line and "FACTO_HOME" in line
    assert (home.read_bytes(), home.stat().st_mtime_ns) == before


def test_corrupt_history_is_one_line_and_left_alone(tmp_path, here):
    home = tmp_path / "home"
    home.mkdir()
    db = home / "runs.db"
    db.write_bytes(b"this is not a database" * 100)
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    line = one_line_error(here("runs", "list", home=home))
    assert str(db) in line and "aside" in line
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in home.iterdir()) == ["runs.db"]


def test_read_only_history_lists_but_refuses_to_store_a_run(tmp_path, monkeypatch, capsys):
    """As root, permissions don't stop writes; the store's own read-only mode stands in for them."""
    import facto.store
    from facto.cli import main

    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    with facto.store.RunStore() as store:
        store.finish_run(store.start_run({"model": "simple_cnn"}), "completed")
    real = facto.store.RunStore
    monkeypatch.setattr(facto.store, "RunStore", lambda *a, **k: real(*a, **{**k, "read_only": True}))
    assert main(["runs", "list"]) == 0
    assert "completed" in capsys.readouterr().out
    assert main(["train", *TINY, "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "--no-store" in err and err.count("\n") == 1


def test_run_ids_are_never_reused_after_rm(tmp_path, monkeypatch):
    from facto.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("FACTO_HOME", str(home))
    for _ in range(2):
        assert main(["train", *TINY, "--max-steps", "1", "--quiet"]) == 0
    assert main(["runs", "rm", "2"]) == 0
    assert main(["train", *TINY, "--max-steps", "1", "--quiet"]) == 0
    ids = [row[0] for row in sqlite3.connect(home / "runs.db").execute("SELECT id FROM runs ORDER BY id")]
    assert ids == [1, 3]


def test_export_into_a_closed_pipe_is_quiet(tmp_path, monkeypatch):
    from facto.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("FACTO_HOME", str(home))
    assert main(["train", *TINY, "--max-steps", "3", "--quiet"]) == 0
    env = {**os.environ, "FACTO_HOME": str(home)}
    proc = subprocess.run(f"{sys.executable} -m facto runs export 1 | head -1", shell=True, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("run_id") or "," in proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("after_s", [0.3, 1.2, 2.5])
def test_ctrl_c_during_start_up_is_quiet(tmp_path, after_s):
    """One Ctrl-C while torch loads (0.3 s), while the rest of the package and the data load, or while
    the models are built: exit 130, one line, no traceback (facto.cli.program)."""
    env = {**os.environ, "FACTO_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    # As from a terminal: a non-interactive shell that starts pytest in the background (`cmd &`) makes
    # it ignore SIGINT, and an ignored signal stays ignored in every process started from it
    proc = subprocess.Popen([sys.executable, "-m", "facto", "train", *TINY, "--model", "resnet18"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err


def test_ctrl_c_helpers_outside_the_program():
    """Called from Python (here, pytest) nothing changes SIGINT, and an error made of a Ctrl-C is
    told from others by its chain."""
    from facto.cli import program

    assert not program.is_program()
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), program.quiet_start_up():
        raise KeyboardInterrupt  # re-raised: only the program turns it into one line
    program.ctrl_c_closes()
    assert signal.getsignal(signal.SIGINT) is before
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("initialization failed")  # as a C extension's init reports it
    except ImportError as made_of_ctrl_c:
        assert program.from_ctrl_c(made_of_ctrl_c)
    assert not program.from_ctrl_c(ImportError("No module named 'tensorly'"))


def test_data_dir_that_is_a_file_says_so(tmp_path, here):
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("x")
    line = one_line_error(here("train", "--dataset", "cifar10", "--data-dir", str(not_a_folder), *TINY[4:],
                                home=tmp_path / "home"))
    assert "is a file, not a folder" in line and "--download" not in line


def test_sweep_quiet_and_a_clean_help(tmp_path, here):
    proc = here("sweep", *TINY, "--max-steps", "1", "--ranks", "0.5", "--bits-list", "4", "--quiet",
                 "--no-store", home=tmp_path / "home")
    assert proc.returncode == 0 and "[1/2]" not in proc.stderr and "baseline" in proc.stdout
    help_text = here("train", "--help", home=tmp_path / "home").stdout
    assert "baseline,facto,baseline,facto" not in help_text and "--variants" in help_text


@pytest.mark.slow
def test_a_run_killed_hard_reads_as_interrupted_with_its_steps(tmp_path, here):
    home = tmp_path / "home"
    env = {**os.environ, "FACTO_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facto", "train", "--max-train", "640", "--max-test", "64",
                             "--batch-size", "32", "--device", "cpu", "--epochs", "5", "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = home / "runs.db"
    deadline = time.monotonic() + 180
    steps = 0
    while steps < 20:
        assert time.monotonic() < deadline and proc.poll() is None, "the run did not store steps in time"
        time.sleep(0.5)
        if db.exists():
            try:
                steps = sqlite3.connect(db).execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
            except sqlite3.OperationalError:
                steps = 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    listing = here("runs", "list", home=home)
    assert listing.returncode == 0 and "interrupted" in listing.stdout and "running" not in listing.stdout
    shown = json.loads(here("runs", "show", "1", home=home).stdout)
    assert shown["status"] == "interrupted"
    exported = here("runs", "export", "1", home=home).stdout.strip().splitlines()
    assert len(exported) - 1 >= 20  # the steps it stored are kept
