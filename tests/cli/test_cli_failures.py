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


@pytest.mark.parametrize("after_s", [0.3, 2.5])
def test_ctrl_c_during_start_up_is_quiet(tmp_path, after_s):
    """One Ctrl-C while torch loads (0.3 s), or later, while the rest of the package and the data load
    or the models are built: exit 130, one line, no traceback (facto.cli.program)."""
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


# ----------------------------------------------------------------------------- outputs never wipe the history

def stored_history(home: Path) -> Path:
    """A history in `home` with one finished run (no training: written through the store)."""
    from facto.store import RunStore

    with RunStore(home / "runs.db") as store:
        store.finish_run(store.start_run({"model": "simple_cnn"}, name="kept"), summary={"saving_pct": 90.0})
    return home / "runs.db"


def runs_in(db: Path) -> list[str]:
    """The names of the runs the history at `db` holds (it must still open as a history)."""
    from facto.store import RunStore

    with RunStore(db) as store:
        return [r.name for r in store.list_runs()]


@pytest.mark.parametrize("target", ["runs.db", "runs.db-wal", "runs.db-journal", "link.csv", "hardlink.csv"])
def test_an_export_onto_the_history_is_refused_and_the_history_kept(tmp_path, here, target):
    home = tmp_path / "home"
    db = stored_history(home)
    (tmp_path / "link.csv").symlink_to(db)
    os.link(db, tmp_path / "hardlink.csv")
    path = home / target if target.startswith("runs.db") else tmp_path / target
    line = one_line_error(here("runs", "export", "1", "-o", str(path), home=home))
    assert line == (f"error: --output {path} is not allowed: it is the run history's file "
                    f"{home / target if target.startswith('runs.db') else db}; name another file")
    assert runs_in(db) == ["kept"] and db.read_bytes().startswith(b"SQLite format 3\x00")
    assert (tmp_path / "link.csv").is_symlink()


def test_a_sweep_chart_onto_the_history_or_into_the_data_folder_is_refused_before_any_run(tmp_path, here):
    home, data = tmp_path / "home", tmp_path / "data"
    db = stored_history(home)
    data.mkdir()
    (data / "train.bin").write_bytes(b"images")
    (tmp_path / "chart.html").symlink_to(db)
    for html, why in ((db, f"it is the run history's file {db}"), (tmp_path / "chart.html", "it is the run history's"),
                      (data / "train.bin", f"it is inside the data folder {data}")):
        line = one_line_error(here("sweep", *TINY, "--max-steps", "1", "--ranks", "0.5", "--bits-list", "4",
                                   "--data-dir", str(data), "--html", str(html), home=home))
        assert line.startswith(f"error: --html {html} is not allowed: {why}"), line
    assert runs_in(db) == ["kept"]  # refused before the sweep stored anything
    assert (data / "train.bin").read_bytes() == b"images"


def test_a_failed_export_leaves_the_old_file_whole_and_says_so_in_one_line(tmp_path, here, monkeypatch):
    import errno

    import facto.store.files as files

    home = tmp_path / "home"
    stored_history(home)
    out = tmp_path / "out.csv"
    out.write_text("old export\n")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)  # the data never reaches the disk
    line = one_line_error(here("runs", "export", "1", "-o", str(out), home=home))
    assert line == f"error: cannot write --output {out}: No space left on device"
    assert out.read_text() == "old export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "out.csv"]  # no temporary file left
    monkeypatch.undo()
    assert here("runs", "export", "1", "-o", str(out), home=home).returncode == 0
    assert out.read_text().startswith("run_id,")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_sweep_chart_to_a_full_disk_is_one_line_and_the_runs_stay_stored(tmp_path, here):
    home = tmp_path / "home"
    proc = here("sweep", *TINY, "--max-steps", "1", "--ranks", "0.5", "--bits-list", "4", "--quiet",
                "--html", "/dev/full", home=home)
    assert one_line_error(proc) == "error: cannot write --html /dev/full: No space left on device"
    assert len(runs_in(home / "runs.db")) == 2  # the baseline and the one point


# ----------------------------------------------------------------------------- runs rm of a running run

def test_runs_rm_refuses_a_running_run_and_deletes_it_once_its_process_is_gone(tmp_path, here):
    from facto.store import RunStore

    home = tmp_path / "home"
    with RunStore(home / "runs.db") as store:
        run_id = store.start_run({"model": "simple_cnn"}, name="live")  # owned by this (living) process
    line = one_line_error(here("runs", "rm", str(run_id), home=home))
    assert line == (f"error: run {run_id} is still running: stop it first (Ctrl-C where it runs, or Stop in the "
                    "app), then delete it")
    assert runs_in(home / "runs.db") == ["live"]
    ended = subprocess.Popen(["true"])
    ended.wait()
    with sqlite3.connect(home / "runs.db") as conn:  # its owner is now a process that has ended
        conn.execute("UPDATE runs SET pid = ?, pid_start = NULL WHERE id = ?", (ended.pid, run_id))
    assert here("runs", "rm", str(run_id), home=home).returncode == 0
    assert runs_in(home / "runs.db") == []


# ----------------------------------------------------------------------------- numbers and names

BIG = "9223372036854775808"  # 2**63: one more than SQLite stores
NAME_300 = "a" * 300


@pytest.mark.parametrize("argv, message", [
    (["runs", "show", BIG],
     f"error: ID='{BIG}' is not allowed: use an integer >= 1 and <= 9223372036854775807 written with the digits 0-9"),
    (["runs", "list", "--limit", BIG],
     f"error: --limit='{BIG}' is not allowed: use an integer >= 1 and <= 9223372036854775807 written with the "
     "digits 0-9"),
    (["runs", "rm", "\uff11"],  # a full-width 1: int() reads it as 1
     "error: ID='\uff11' is not allowed: use an integer >= 1 and <= 9223372036854775807 written with the digits 0-9"),
    (["runs", "list", "--limit", "1_0"],
     "error: --limit='1_0' is not allowed: use an integer >= 1 and <= 9223372036854775807 written with the digits 0-9"),
    (["train", *TINY, "--seed", "100000000000000000000000"],
     "error: seed=100000000000000000000000 is not allowed: use an integer >= 0 and <= 9007199254740991"),
    (["train", *TINY, "--epochs", "\uff12"],
     "error: epochs='\uff12' is not allowed: use an integer >= 1 and <= 9007199254740991"),
    (["bench", "--seeds", "0,\uff11"], "error: --seeds='0,\uff11' is not allowed: use integers, comma separated, "
                                       "e.g. 0,1,2"),
    (["bench", "--seeds", "100000000000000000000000"],
     "error: seed=100000000000000000000000 is not allowed: use an integer >= 0 and <= 9007199254740991"),
    (["plan", "--classes", "\uff11\uff10"],
     "error: --classes='\uff11\uff10' is not allowed: use an integer >= 1 and <= 9007199254740991 written with the "
     "digits 0-9"),
])
def test_numbers_out_of_range_or_not_in_ascii_digits_are_one_line(argv, message, tmp_path, here):
    home = tmp_path / "home"
    stored_history(home)
    assert one_line_error(here(*argv, home=home)) == message
    assert runs_in(home / "runs.db") == ["kept"]  # `runs rm １` deleted nothing


def test_names_longer_than_the_file_system_allows_are_one_line(tmp_path, here):
    home = tmp_path / "home"
    long_dir = tmp_path / NAME_300
    line = one_line_error(here("train", *TINY, "--data-dir", str(long_dir), home=home))
    assert line.startswith(f"error: --data-dir {str(long_dir)[:40]}") and "is 300 bytes long" in line
    assert "allows at most 255 per name" in line
    html = tmp_path / (NAME_300 + ".html")
    line = one_line_error(here("sweep", *TINY, "--html", str(html), home=home))
    assert line.startswith("error: --html ") and "is 305 bytes long" in line
    deep = tmp_path.joinpath(*["d" * 200] * 25, "chart.html")  # each name fits, the whole path does not
    line = one_line_error(here("sweep", *TINY, "--html", str(deep), home=home))
    assert f"the path is {len(os.fsencode(deep))} bytes long" in line
    assert not (home / "runs.db").exists() or runs_in(home / "runs.db") == []


# ----------------------------------------------------------------------------- --max-steps is a cap

def test_max_steps_beyond_the_epochs_stops_at_the_end_of_the_epochs(tmp_path, here):
    # 128 training images in batches of 32: 4 steps make the one epoch
    proc = here("train", *TINY, "--epochs", "1", "--max-steps", "50", "--no-store", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(128 train / 64 test) | 4 steps" in proc.stderr
    assert "limit of 50 steps" not in proc.stderr
    proc = here("train", *TINY, "--epochs", "1", "--max-steps", "2", "--no-store", home=tmp_path / "home")
    assert "| 2 steps" in proc.stderr
