"""Tests for facto.store.history (SQLite run history)."""

from __future__ import annotations

import csv
import enum
import errno
import io
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import facto.store.history as store_module
from facto.store.history import (
    SCHEMA_VERSION,
    RunNotFoundError,
    RunRecord,
    RunStore,
    StoreUnavailableError,
    default_db_path,
)
from facto.store.schema import MIGRATIONS

CONFIG = {
    "model": "resnet18",
    "dataset": "cifar10",
    "rank": 8,
    "bits": 4,
    "update": "ema",
    "lr": 0.1,
    "data_dir": Path("/tmp/data"),
    "image_size": (32, 32),
}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "home"))
    with RunStore() as s:
        yield s


def _step_metrics(i: int) -> dict:
    return {"loss": 2.0 / (i + 1), "accuracy": i / 10, "act_bytes": 1000 + i, "lr": 0.1}


# ---------------------------------------------------------------- location


def test_default_path_honours_facto_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "fh"))
    assert default_db_path() == tmp_path / "fh" / "runs.db"
    with RunStore() as s:
        assert s.path == tmp_path / "fh" / "runs.db"
    assert (tmp_path / "fh" / "runs.db").exists()


def test_default_path_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FACTO_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db_path() == tmp_path / ".facto" / "runs.db"
    with RunStore():
        pass
    assert (tmp_path / ".facto" / "runs.db").exists()


def test_schema_version_and_reopen(tmp_path):
    path = tmp_path / "a" / "b" / "runs.db"
    with RunStore(path) as s:
        run_id = s.start_run({"model": "m"})
        assert s.schema_version == SCHEMA_VERSION >= 1
    with RunStore(str(path)) as s:  # reopening keeps data and does not re-create
        assert s.get_run(run_id).config == {"model": "m"}
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="schema version"):
        RunStore(path)


# --------------------------------------------------------------- lifecycle


def test_full_lifecycle(store, tmp_path):
    run_id = store.start_run(CONFIG, kind="compare")
    rec = store.get_run(run_id)
    assert rec.status == "running" and rec.finished_at is None
    assert rec.name == "resnet18 cifar10 rank=8 bits=4 update=ema"
    assert rec.config["data_dir"] == "/tmp/data"
    assert rec.config["image_size"] == [32, 32]

    written = []
    for step in range(5):
        for variant in ("baseline", "facto"):
            m = _step_metrics(step)
            store.log_step(run_id, variant, step, step // 3, m)
            written.append({"variant": variant, "kind": "step", "step": step,
                            "epoch": step // 3, **m})
    evals = []
    for variant in ("baseline", "facto"):
        m = {"accuracy": 0.5, "loss": 1.25}
        store.log_eval(run_id, variant, 4, 1, m)
        evals.append({"variant": variant, "kind": "eval", "step": 4, "epoch": 1, **m})
    layers = {"conv1": 4096, "layer1.0.conv1": 2048, "fc": 64}
    store.log_layers(run_id, "facto", layers)
    store.log_layers(run_id, "baseline", {"conv1": 8192})
    summary = {"baseline": {"peak_bytes": 10}, "facto": {"peak_bytes": 3}, "lr": 0.5}
    store.finish_run(run_id, "completed", summary=summary)

    rec = store.get_run(run_id)
    assert isinstance(rec, RunRecord)
    assert rec.status == "completed" and rec.error is None
    assert rec.finished_at >= rec.created_at
    assert rec.summary == summary
    assert store.list_runs() == [rec]
    assert store.list_runs(status="completed", kind="compare") == [rec]
    assert store.list_runs(status="running") == []
    assert store.list_runs(kind="sweep") == []

    assert store.metrics(run_id, kind="step") == written
    assert store.metrics(run_id, kind="eval") == evals
    assert store.metrics(run_id, kind="step", variant="facto") == [
        r for r in written if r["variant"] == "facto"
    ]
    all_rows = store.metrics(run_id)
    assert all_rows == written[:8] + written[8:] + evals  # ordered by step
    assert [r["step"] for r in all_rows] == sorted(r["step"] for r in all_rows)

    lb = store.layer_bytes(run_id)
    assert lb == {"facto": layers, "baseline": {"conv1": 8192}}
    assert list(lb["facto"]) == list(layers)  # layer order preserved
    store.log_layers(run_id, "facto", {"layer1.0.conv1": 1})  # replace keeps order
    assert list(store.layer_bytes(run_id)["facto"].items())[1] == ("layer1.0.conv1", 1)

    # compare_runs: lr clashes between config and summary -> prefixed
    other = store.start_run({"model": "vgg", "name": "x"}, kind="single", name="mine")
    rows = store.compare_runs([run_id, other])
    assert [r["id"] for r in rows] == [run_id, other]
    assert list(rows[0]) == list(rows[1])  # same columns in every row
    r0, r1 = rows
    assert r0["name"] == rec.name and r1["name"] == "mine"
    assert r0["status"] == "completed" and r1["status"] == "running"
    assert r0["created_at"] == rec.created_at
    assert r0["model"] == "resnet18" and r1["model"] == "vgg"
    assert r0["config.lr"] == 0.1 and r0["summary.lr"] == 0.5
    assert r0["baseline.peak_bytes"] == 10 and r0["facto.peak_bytes"] == 3
    assert r1["config.name"] == "x" and r1["rank"] is None

    # export_csv round trip
    out = tmp_path / "m.csv"
    assert store.export_csv(run_id, out) == len(all_rows)
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["run_id", "variant", "kind", "step", "epoch",
                                     "accuracy", "act_bytes", "loss", "lr"]
        parsed = list(reader)
    back = []
    for p in parsed:
        assert int(p.pop("run_id")) == run_id
        row = {"variant": p.pop("variant"), "kind": p.pop("kind"),
               "step": int(p.pop("step")), "epoch": int(p.pop("epoch"))}
        for k, v in p.items():
            if v != "":
                row[k] = int(v) if k == "act_bytes" else float(v)
        back.append(row)
    assert back == all_rows

    buf = io.StringIO()
    assert store.export_runs_csv([run_id, other], buf) == 2
    table = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert list(table[0]) == list(rows[0])
    assert table[0]["model"] == "resnet18" and table[1]["rank"] == ""
    assert table[0]["image_size"] == "[32, 32]"


def test_log_metrics_batch_and_roundtrip(store):
    run_id = store.start_run({}, kind="single")
    rows = [("facto", "step", i, 0, {"loss": float(i)}) for i in range(3)]
    rows.append({"variant": "facto", "kind": "eval", "step": 2, "epoch": 0,
                 "metrics": {"accuracy": 0.9}})
    assert store.log_metrics(run_id, rows) == 4
    got = store.metrics(run_id)
    assert [r["kind"] for r in got] == ["step", "step", "step", "eval"]
    copy = store.start_run({}, kind="single")
    assert store.log_metrics(copy, got) == 4  # flat dicts from metrics() re-log
    assert store.metrics(copy) == got
    assert store.get_run(run_id).name.startswith("single run ")


def test_unfinished_run_marked_interrupted_and_failed_error(store):
    old = store.start_run({"model": "a"})
    failed = store.start_run({"model": "b"})
    store.finish_run(failed, "failed", error="Traceback: CUDA OOM")
    assert store.get_run(old).status == "running"
    assert store.mark_stale_running(max_age_s=3600) == 0  # too recent
    time.sleep(0.05)
    fresh = store.start_run({"model": "c"})
    assert store.mark_stale_running(max_age_s=0.03) == 1  # only the old one
    rec = store.get_run(old)
    assert rec.status == "interrupted" and rec.finished_at is not None
    assert store.get_run(fresh).status == "running"
    assert store.mark_stale_running() == 1  # None -> all running ones
    assert store.get_run(fresh).status == "interrupted"
    f = store.get_run(failed)
    assert f.status == "failed" and f.error == "Traceback: CUDA OOM"
    assert [r.id for r in store.list_runs(status="interrupted")] == [fresh, old]
    assert [r.id for r in store.list_runs(limit=2)] == [fresh, failed]


def test_delete_cascades(store, tmp_path):
    run_id = store.start_run({})
    store.log_step(run_id, "facto", 0, 0, {"loss": 1.0})
    store.log_layers(run_id, "facto", {"conv": 1})
    keep = store.start_run({})
    store.log_step(keep, "facto", 0, 0, {"loss": 2.0})
    store.delete_run(run_id)
    with pytest.raises(RunNotFoundError):
        store.get_run(run_id)
    assert store.metrics(run_id) == [] and store.layer_bytes(run_id) == {}
    assert len(store.metrics(keep)) == 1
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?",
                           (run_id,)).fetchone()[0] == 0
        assert raw.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 0
    raw.close()


# ----------------------------------------------------------------- errors


def test_bad_status_and_unknown_run(store):
    run_id = store.start_run({})
    with pytest.raises(ValueError, match="'done'") as info:
        store.finish_run(run_id, "done")
    assert "completed" in str(info.value) and "failed" in str(info.value)
    assert store.get_run(run_id).status == "running"
    for call in (
        lambda: store.get_run(42),
        lambda: store.finish_run(42),
        lambda: store.log_step(42, "facto", 0, 0, {"loss": 1.0}),
        lambda: store.log_layers(42, "facto", {"a": 1}),
        lambda: store.delete_run(42),
        lambda: store.set_tags(42, ["x"]),
        lambda: store.compare_runs([run_id, 42]),
        lambda: store.export_csv(42, io.StringIO()),
    ):
        with pytest.raises(RunNotFoundError, match="run 42 does not exist"):
            call()
    assert issubclass(RunNotFoundError, ValueError)


class Mode(enum.Enum):
    FAST = "fast"


class FakeScalar:
    """Stands in for a numpy/torch scalar."""

    def __init__(self, v: float) -> None:
        self.v = v

    def item(self) -> float:
        return self.v


def test_json_encoding_of_odd_values(store):
    config = {"path": Path("/x/y"), "shape": (1, 2), "mode": Mode.FAST,
              "scalar": FakeScalar(0.25), "ids": {3, 1}, "obj": object.__new__(object)}
    run_id = store.start_run(config, name="odd")
    got = store.get_run(run_id).config
    assert got["path"] == "/x/y" and got["shape"] == [1, 2]
    assert got["mode"] == "fast" and got["scalar"] == 0.25 and got["ids"] == [1, 3]
    assert isinstance(got["obj"], str)
    store.log_step(run_id, "facto", 0, 0, {"loss": FakeScalar(1.5), "acc": FakeScalar(0.5)})
    assert store.metrics(run_id)[0]["loss"] == 1.5
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("SELECT loss, accuracy FROM metrics").fetchone() == (1.5, 0.5)
    raw.close()
    store.finish_run(run_id, summary={Path("p"): (1, 2)})
    assert store.get_run(run_id).summary == {"p": [1, 2]}


def test_tags(store):
    run_id = store.start_run({})
    assert store.get_run(run_id).tags == ()
    store.set_tags(run_id, "a, b,,a")
    assert store.get_run(run_id).tags == ("a", "b")
    store.set_tags(run_id, ["z"])
    assert store.get_run(run_id).tags == ("z",)
    store.set_tags(run_id, None)
    assert store.get_run(run_id).tags == ()


# ------------------------------------------------------------ concurrency


def test_wal_mode_and_live_reads_from_second_connection(store):
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    run_id = store.start_run({"model": "m"})
    store.log_step(run_id, "facto", 0, 0, {"loss": 1.0})
    with RunStore(store.path) as reader:
        assert reader.get_run(run_id).status == "running"
        assert [r["loss"] for r in reader.metrics(run_id)] == [1.0]
        store.log_step(run_id, "facto", 1, 0, {"loss": 0.5})
        assert [r["loss"] for r in reader.metrics(run_id)] == [1.0, 0.5]


N_STEPS = 500


def _writer_process(path: str, run_id: int) -> None:
    with RunStore(path) as s:
        for i in range(N_STEPS):
            s.log_step(run_id, "facto", i, 0, {"loss": 1.0 / (i + 1)})
        s.finish_run(run_id, summary={"steps": N_STEPS})


def test_process_writer_with_polling_reader(store):
    run_id = store.start_run({})
    proc = multiprocessing.get_context("fork").Process(
        target=_writer_process, args=(str(store.path), run_id)
    )
    t0 = time.monotonic()
    proc.start()
    seen = []
    with RunStore(store.path) as reader:
        while time.monotonic() - t0 < 4.5:
            rows = reader.metrics(run_id)  # must never raise "database is locked"
            seen.append(len(rows))
            if reader.get_run(run_id).status == "completed":
                break
        proc.join(timeout=5)
        assert proc.exitcode == 0
        assert len(reader.metrics(run_id)) == N_STEPS
    assert seen == sorted(seen)  # progress only grows
    assert store.get_run(run_id).summary == {"steps": N_STEPS}


def test_threads_share_one_store(store):
    run_id = store.start_run({})
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(N_STEPS):
                store.log_step(run_id, "baseline", i, 0, {"loss": float(i)})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            with RunStore(store.path) as other:
                while not done.is_set():
                    store.metrics(run_id)
                    other.metrics(run_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert [r["loss"] for r in store.metrics(run_id)] == [float(i) for i in range(N_STEPS)]


# ------------------------------------------------------- unusable FACTO_HOME


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text
    return text


def test_facto_home_is_a_regular_file(tmp_path, monkeypatch):
    blocker = tmp_path / "home"
    blocker.write_text("my notes\n")
    before = _snapshot(blocker)
    for home in (blocker, blocker / "deeper"):
        monkeypatch.setenv("FACTO_HOME", str(home))
        with pytest.raises(StoreUnavailableError) as info:
            RunStore()
        text = _one_line(info.value)
        assert str(home / "runs.db") in text
        assert f"{blocker} is a file, not a folder" in text
        assert "set FACTO_HOME to another folder" in text and f"move the file {blocker} aside" in text
        assert isinstance(info.value, ValueError)
    assert _snapshot(blocker) == before


def test_runs_db_that_is_a_folder(tmp_path):
    (tmp_path / "runs.db").mkdir()
    with pytest.raises(StoreUnavailableError, match="is a folder, not a database file") as info:
        RunStore(tmp_path / "runs.db")
    assert "pass a path in another folder" in _one_line(info.value)  # explicit path: no FACTO_HOME


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all\n" * 50, b"SQLite format 3\x00" + bytes(range(256)) * 16],
    ids=["text", "damaged-sqlite"],
)
def test_corrupt_runs_db_is_reported_and_left_alone(tmp_path, monkeypatch, content):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path))
    db = tmp_path / "runs.db"
    db.write_bytes(content)
    os.utime(db, ns=(1_000_000_000, 1_000_000_000))
    before = _snapshot(db)
    for read_only in (False, True):
        with pytest.raises(StoreUnavailableError) as info:
            RunStore(read_only=read_only)
        text = _one_line(info.value)
        assert str(db) in text and ("not an SQLite database" in text or "damaged" in text)
        assert f"move {db} aside" in text and "set FACTO_HOME to another folder" in text
    assert _snapshot(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]  # no -wal / -shm left


def test_read_only_file_system_when_creating_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "new" / "home"))

    def read_only_fs(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only_fs)
    with pytest.raises(StoreUnavailableError) as info:
        RunStore()
    text = _one_line(info.value)
    assert "cannot create the folder" in text and "Read-only file system" in text
    assert "set FACTO_HOME to a writable folder" in text


def _make_history(path: Path) -> int:
    with RunStore(path) as s:
        run_id = s.start_run({"model": "m"}, name="kept")
        s.log_metrics(run_id, [("facto", "step", i, 0, {"loss": float(i)}) for i in range(3)])
        s.log_layers(run_id, "facto", {"conv": 7})
        s.finish_run(run_id, summary={"best": 1})
    return run_id


def _read_everything(path: Path, **kwargs) -> dict:
    """What a reader of a read-only history can do, and what a write attempt says."""
    with RunStore(path, **kwargs) as s:
        out = io.StringIO()
        rows = s.list_runs()
        result = {
            "writable": s.writable,
            "runs": [(r.id, r.name, r.status) for r in rows],
            "get": s.get_run(rows[0].id).summary,
            "metrics": len(s.metrics(rows[0].id)),
            "layers": s.layer_bytes(rows[0].id),
            "export": s.export_csv(rows[0].id, out),
            "compare": len(s.compare_runs([r.id for r in rows])),
            "stale": s.mark_stale_running(),
        }
        errors = []
        for write in (
            lambda: s.start_run({}),
            lambda: s.log_step(rows[0].id, "facto", 9, 0, {"loss": 0.0}),
            lambda: s.log_layers(rows[0].id, "facto", {"x": 1}),
            lambda: s.finish_run(rows[0].id),
            lambda: s.set_tags(rows[0].id, "a"),
            lambda: s.delete_run(rows[0].id),
            lambda: s.heartbeat(rows[0].id),
        ):
            try:
                write()
                errors.append(None)
            except StoreUnavailableError as exc:
                errors.append(_one_line(exc))
        result["errors"] = errors
    return result


def _check_read_only_result(result: dict, run_id: int, db: Path) -> None:
    assert result["writable"] is False
    assert result["runs"] == [(run_id, "kept", "completed")]
    assert result["get"] == {"best": 1} and result["metrics"] == 3
    assert result["layers"] == {"facto": {"conv": 7}}
    assert result["export"] == 3 and result["compare"] == 1 and result["stale"] == 0
    assert all(e is not None and str(db) in e and "read-only" in e for e in result["errors"])


def test_read_only_argument_reads_but_refuses_writes(tmp_path):
    db = tmp_path / "runs.db"
    run_id = _make_history(db)
    before = _snapshot(db)
    _check_read_only_result(_read_everything(db, read_only=True), run_id, db)
    assert _snapshot(db) == before
    with RunStore(db) as s:  # untouched: still writable and whole
        assert s.writable and len(s.metrics(run_id)) == 3


def test_read_only_open_of_a_missing_history_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTO_HOME", str(tmp_path / "none"))
    with pytest.raises(StoreUnavailableError, match="no run history there"):
        RunStore(read_only=True)
    assert not (tmp_path / "none").exists()


def test_falls_back_to_read_only_when_not_writable(tmp_path, monkeypatch):
    """Root ignores chmod, so pretend the OS says 'not writable' (see the nobody test too)."""
    db = tmp_path / "runs.db"
    run_id = _make_history(db)
    real_access = os.access
    monkeypatch.setattr(store_module.os, "access",
                        lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
    result = _read_everything(db)
    _check_read_only_result(result, run_id, db)
    assert "the file is read-only" in result["errors"][0]
    assert "make" in result["errors"][0] and "writable" in result["errors"][0]
    with pytest.raises(StoreUnavailableError, match="cannot create it") as info:
        RunStore(tmp_path / "other" / "runs.db")
    assert "read-only" in _one_line(info.value)


@pytest.fixture()
def public_tmp():
    """A folder the 'nobody' user can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="facto-ro-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _as_unprivileged(fn, *args):
    """``fn(*args)`` where permissions apply: in a forked child as 'nobody' when root."""
    if os.geteuid() != 0:
        return fn(*args)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        except OSError as exc:
            result = ("skip", f"cannot drop root: {exc}")
        else:
            try:
                result = ("ok", fn(*args))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = ("error", f"{type(exc).__name__}: {exc}")
        os.write(write_end, pickle.dumps(result))
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "skip":
        pytest.skip(value)
    assert kind == "ok", value
    return value


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_read_only_folder_and_file_open_read_only(public_tmp):
    """Real permissions: a read-only folder (no WAL files possible) and a read-only db file."""
    ro_dir = public_tmp / "ro-dir"
    ro_dir.mkdir()
    run_id = _make_history(ro_dir / "runs.db")
    (ro_dir / "runs.db").chmod(0o444)
    ro_dir.chmod(0o555)
    ro_file = public_tmp / "ro-file"
    ro_file.mkdir()
    _make_history(ro_file / "runs.db")
    (ro_file / "runs.db").chmod(0o444)
    ro_file.chmod(0o777)
    before = _snapshot(ro_dir / "runs.db")
    try:
        for folder in (ro_dir, ro_file):
            _check_read_only_result(_as_unprivileged(_read_everything, folder / "runs.db"),
                                    run_id, folder / "runs.db")
        assert _snapshot(ro_dir / "runs.db") == before
        assert sorted(p.name for p in ro_dir.iterdir()) == ["runs.db"]

        def create_in_read_only_folder() -> str:
            try:
                RunStore(ro_dir / "sub" / "runs.db")
            except StoreUnavailableError as exc:
                return _one_line(exc)
            return "opened"

        text = _as_unprivileged(create_in_read_only_folder)
        assert "cannot create the folder" in text and str(ro_dir / "sub") in text
    finally:
        ro_dir.chmod(0o755)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_read_only_reader_sees_a_live_writers_wal(public_tmp):
    """While a writer holds the db open its latest rows live in the WAL: a read-only
    reader in a read-only folder must see them (immutable=1 would not)."""
    folder = public_tmp / "live"
    folder.mkdir()
    writer = RunStore(folder / "runs.db")
    run_id = writer.start_run({}, name="live")
    writer.log_metrics(run_id, [("facto", "step", i, 0, {"loss": 1.0}) for i in range(5)])
    assert (folder / "runs.db-wal").stat().st_size > 0
    folder.chmod(0o555)
    try:
        def read() -> tuple:
            with RunStore(folder / "runs.db") as s:
                return s.writable, s.get_run(run_id).name, len(s.metrics(run_id))

        assert _as_unprivileged(read) == (False, "live", 5)
    finally:
        folder.chmod(0o755)
        writer.close()


# ----------------------------------------------------------- ids and schema


def test_run_ids_are_never_reused(store):
    ids = [store.start_run({}) for _ in range(6)]
    store.delete_run(ids[-1])
    assert store.start_run({}) == ids[-1] + 1
    for run_id in [*ids[:-1], ids[-1] + 1]:
        store.delete_run(run_id)
    assert store.list_runs() == []
    assert store.start_run({}) == ids[-1] + 2


def _v1_database(path: Path) -> None:
    """A history written by schema version 1 (runs 1, 2, 4; run 3 was deleted)."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA foreign_keys = ON")
    for sql in MIGRATIONS[0]:
        raw.execute(sql)
    for i in (1, 2, 3, 4):
        raw.execute(
            "INSERT INTO runs (id, name, kind, created_at, updated_at, finished_at, status,"
            " error, config_json, summary_json, tags) VALUES (?, ?, 'compare', ?, ?, ?, ?, ?, ?, ?, ?)",
            (i, f"run {i}", 100.0 + i, 200.0 + i, None if i == 4 else 300.0 + i,
             "running" if i == 4 else "failed" if i == 2 else "completed",
             "boom" if i == 2 else None, f'{{"model": "m{i}"}}', '{"best": 1}', '["t"]'),
        )
        raw.executemany(
            "INSERT INTO metrics (run_id, variant, kind, step, epoch, loss, accuracy, act_bytes,"
            " data_json) VALUES (?, 'facto', 'step', ?, 0, ?, NULL, NULL, ?)",
            [(i, s, float(s), f'{{"loss": {float(s)}}}') for s in range(3)],
        )
        raw.execute("INSERT INTO layers VALUES (?, 'facto', 'conv', ?)", (i, 10 * i))
    raw.execute("DELETE FROM runs WHERE id = 3")
    raw.execute("PRAGMA user_version = 1")
    raw.close()


def test_migration_from_schema_1_keeps_runs_and_ids(tmp_path):
    db = tmp_path / "runs.db"
    _v1_database(db)
    with RunStore(db, stale_after_s=3600) as s:
        assert s.schema_version == SCHEMA_VERSION == 3
        runs = {r.id: r for r in s.list_runs()}
        assert sorted(runs) == [1, 2, 4]
        assert runs[2].status == "failed" and runs[2].error == "boom"
        assert runs[1].config == {"model": "m1"} and runs[1].summary == {"best": 1}
        assert runs[1].tags == ("t",) and runs[1].created_at == 101.0
        # run 4 was left 'running' by a writer that recorded no owner, long ago
        assert runs[4].status == "interrupted" and runs[4].host is None
        assert runs[4].error.startswith("process ended without finishing the run")
        for i in (1, 2, 4):
            assert [r["loss"] for r in s.metrics(i)] == [0.0, 1.0, 2.0]
            assert s.layer_bytes(i) == {"facto": {"conv": 10 * i}}
        new = s.start_run({})
        assert new == 5
        s.delete_run(new)
        assert s.start_run({}) == 6  # 5 is not handed out again
        s.delete_run(4)  # cascades still work on the rebuilt table
        assert s.metrics(4) == [] and s.layer_bytes(4) == {}
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    assert raw.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 6
    raw.close()


def test_read_only_store_reads_an_unmigrated_history(tmp_path):
    db = tmp_path / "runs.db"
    _v1_database(db)
    with RunStore(db, read_only=True) as s:
        assert s.schema_version == 1 and not s.writable
        assert [r.id for r in s.list_runs()] == [4, 2, 1]
        assert s.get_run(4).status == "interrupted"
        assert len(s.metrics(1)) == 3
    with RunStore(db) as s:
        assert s.schema_version == SCHEMA_VERSION


def _v2_database(path: Path) -> int:
    """A history written by schema version 2, before sweeps were stored: one sweep run and one
    comparison; returns the sweep run's id."""
    raw = sqlite3.connect(path, isolation_level=None)
    for statements in MIGRATIONS[:2]:
        for sql in statements:
            raw.execute(sql)
    raw.execute("PRAGMA user_version = 2")
    for name, kind in (("simple_cnn digits rank=0.5 bits=4 update=core", "sweep"), ("old run", "compare")):
        raw.execute(
            "INSERT INTO runs (name, kind, created_at, updated_at, finished_at, status, config_json)"
            " VALUES (?, ?, 1.0, 2.0, 3.0, 'completed', '{\"epochs\": 2}')",
            (name, kind),
        )
    raw.close()
    return 1


def test_migration_from_schema_2_keeps_runs_and_marks_no_sweep(tmp_path):
    db = tmp_path / "runs.db"
    old = _v2_database(db)
    with RunStore(db, read_only=True) as ro:  # an older history reads as it is
        assert ro.schema_version == 2
        assert [(r.id, r.kind, r.sweep_id, r.sweep_point) for r in ro.list_runs()] == [
            (2, "compare", None, None), (old, "sweep", None, None)]
    with RunStore(db) as s:
        assert s.schema_version == SCHEMA_VERSION == 3
        assert s.get_run(old).config == {"epochs": 2} and s.get_run(old).sweep_id is None
        sweep = s.start_sweep(3, {"ranks": ["0.5"]})
        run = s.start_run({"model": "m"}, kind="sweep", sweep_id=sweep, sweep_point=1)
        assert run == 3 and (s.get_run(run).sweep_id, s.get_run(run).sweep_point) == (sweep, 1)


def test_sweeps_have_ids_of_their_own_and_runs_name_their_sweep_and_point(store):
    first = store.start_sweep(2)
    base = store.start_run({"model": "m"}, kind="sweep", name="m digits baseline", sweep_id=first, sweep_point=0)
    point = store.start_run({"model": "m"}, kind="sweep", sweep_id=first, sweep_point=1)
    alone = store.start_run({"model": "m"})
    listed = {r.id: r for r in store.list_runs()}
    assert (listed[base].sweep_id, listed[base].sweep_point, listed[base].name) == (first, 0, "m digits baseline")
    assert (listed[point].sweep_id, listed[point].sweep_point) == (first, 1)
    assert (listed[alone].sweep_id, listed[alone].sweep_point) == (None, None)
    store.delete_run(base)
    store.delete_run(point)
    assert store.start_sweep(2) == first + 1  # the next sweep: a new id, also once the first one's runs are gone


# ----------------------------------------------------------------- liveness


WRITER_SCRIPT = r"""
import importlib, sys, time, types
facto = types.ModuleType("facto")  # the package without its __init__ (no torch)
facto.__path__ = [sys.argv[1]]
sys.modules["facto"] = facto
store = importlib.import_module("facto.store.history")
s = store.RunStore(sys.argv[2])
run_id = s.start_run({"model": "m"}, kind="single")
for i in range(7):
    s.log_step(run_id, "facto", i, 0, {"loss": 1.0 / (i + 1)})
print(run_id, flush=True)
time.sleep(120)
"""


def test_killed_writer_reads_as_interrupted_with_its_steps(tmp_path):
    db = tmp_path / "runs.db"
    RunStore(db).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, os.path.dirname(os.path.dirname(store_module.__file__)), str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        run_id = int(proc.stdout.readline())
        with RunStore(db) as s:
            rec = s.get_run(run_id)
            assert rec.status == "running" and rec.pid == proc.pid
            assert rec.host == socket.gethostname()
            assert [r.id for r in s.list_runs(status="running")] == [run_id]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    # a read-only reader sees the verdict without storing it
    with RunStore(db, read_only=True) as ro:
        rec = ro.get_run(run_id)
        assert rec.status == "interrupted" and rec.finished_at == rec.updated_at
        assert f"process {proc.pid} on {socket.gethostname()} is gone" in rec.error
        assert len(ro.metrics(run_id)) == 7
        assert ro.list_runs(status="running") == []
        assert [r.id for r in ro.list_runs(status="interrupted")] == [run_id]
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT status FROM runs").fetchone()[0] == "running"
    raw.close()
    # a writable reader also stores it
    with RunStore(db) as s:
        assert [r.status for r in s.list_runs()] == ["interrupted"]
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT status, error LIKE 'process ended%' FROM runs").fetchone() == (
        "interrupted", 1)
    raw.close()


def _set_owner(path: Path, run_id: int, **values) -> None:
    raw = sqlite3.connect(path)
    sets = ", ".join(f"{k} = ?" for k in values)
    raw.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), run_id))
    raw.commit()
    raw.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_checks_on_this_host(store):
    run_id = store.start_run({})
    rec = store.get_run(run_id)
    assert (rec.status, rec.host, rec.pid) == ("running", socket.gethostname(), os.getpid())
    _set_owner(store.path, run_id, pid=_dead_pid())
    assert store.get_run(run_id).status == "interrupted"
    if os.path.exists(f"/proc/{os.getpid()}/stat"):  # pid reused by another process
        other = store.start_run({})
        raw = sqlite3.connect(store.path)
        start = raw.execute("SELECT pid_start FROM runs WHERE id = ?", (other,)).fetchone()[0]
        raw.close()
        assert start is not None
        _set_owner(store.path, other, pid_start=start + 1)
        assert "is gone" in store.get_run(other).error
    # another boot (or a machine with the same name): pids mean nothing, wait for quiet
    elsewhere = store.start_run({})
    _set_owner(store.path, elsewhere, boot_id="another-boot", pid=_dead_pid())
    assert store.get_run(elsewhere).status == "running"
    _set_owner(store.path, elsewhere, updated_at=time.time() - 2 * store.stale_after_s)
    assert "no write from process" in store.get_run(elsewhere).error


def test_other_host_is_presumed_dead_after_a_quiet_period(tmp_path):
    db = tmp_path / "runs.db"
    with RunStore(db, stale_after_s=60) as s:
        run_id = s.start_run({})
        s.log_step(run_id, "facto", 0, 0, {"loss": 1.0})
        _set_owner(db, run_id, host="gpu-box", pid=1, updated_at=time.time() - 30)
        assert s.get_run(run_id).status == "running"  # quiet for 30 s < 60 s
        _set_owner(db, run_id, updated_at=time.time() - 600)
        rec = s.get_run(run_id)
        assert rec.status == "interrupted" and "no write from process 1 on gpu-box" in rec.error
        assert [r.status for r in s.list_runs(status="interrupted")] == ["interrupted"]
        raw = sqlite3.connect(db)
        assert raw.execute("SELECT status FROM runs").fetchone()[0] == "running"  # not stored
        raw.close()
        # the app's mark_stale_running stores it; a later write from the owner revives it
        assert s.mark_stale_running(max_age_s=300) == 1
        s.log_step(run_id, "facto", 1, 0, {"loss": 0.5})
        rec = s.get_run(run_id)
        assert (rec.status, rec.error, rec.finished_at) == ("running", None, None)
        assert len(s.metrics(run_id)) == 2


def test_failure_and_interruption_reasons_are_kept(store):
    failed = store.start_run({})
    store.finish_run(failed, "failed", error="RuntimeError: CUDA out of memory")
    stopped = store.start_run({})
    store.log_step(stopped, "facto", 0, 0, {"loss": 1.0})
    store.finish_run(stopped, "interrupted", error="stopped by the user")
    store.heartbeat(stopped)  # not a liveness verdict: stays interrupted
    with RunStore(store.path, read_only=True) as reader:
        assert reader.get_run(failed).error == "RuntimeError: CUDA out of memory"
        rec = reader.get_run(stopped)
        assert (rec.status, rec.error) == ("interrupted", "stopped by the user")


# ----------------------------------------------------------------------------- output files (facto.store.files)

def test_an_output_is_never_written_onto_the_history_or_its_journals(tmp_path):
    from facto.store.files import FilePathError, history_files, write_output_file

    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        store.finish_run(store.start_run({"model": "m"}, name="kept"))
    (tmp_path / "link").symlink_to(db)
    os.link(db, tmp_path / "other-name.db")
    assert [p.name for p in history_files(db)] == ["runs.db", "runs.db-wal", "runs.db-shm", "runs.db-journal"]
    for path in (db, tmp_path / "runs.db-wal", tmp_path / "runs.db-shm", tmp_path / "link",
                 tmp_path / "other-name.db"):
        with pytest.raises(FilePathError, match="is not allowed: it is the run history's file"):
            write_output_file(path, lambda fh: fh.write("x"), "-o", protected_files=history_files(db))
    with pytest.raises(FilePathError, match="is not allowed: it is inside the data folder"):
        write_output_file(tmp_path / "data" / "x.csv", lambda fh: fh.write("x"), "-o",
                          protected_folders=[tmp_path / "data"])
    with RunStore(db) as store:
        assert [r.name for r in store.list_runs()] == ["kept"]


def test_an_output_is_written_whole_or_not_at_all(tmp_path):
    from facto.store.files import FilePathError, write_output_file

    out = tmp_path / "out.csv"
    out.write_text("old\n")
    out.chmod(0o640)

    def fails_half_way(fh):
        fh.write("new, partial")
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(FilePathError, match=f"^cannot write -o {out}: {os.strerror(errno.EIO)}$"):
        write_output_file(out, fails_half_way, "-o")
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["out.csv"]
    assert write_output_file(out, lambda fh: fh.write("new\n"), "-o") == 4
    assert out.read_text() == "new\n" and oct(out.stat().st_mode & 0o777) == oct(0o640)
    (tmp_path / "link.csv").symlink_to(out)  # a link is written through: its target changes, the link stays
    write_output_file(tmp_path / "link.csv", lambda fh: fh.write("via link\n"), "-o")
    assert (tmp_path / "link.csv").is_symlink() and out.read_text() == "via link\n"


def test_names_the_file_system_cannot_hold_are_refused(tmp_path):
    from facto.store.files import FilePathError, check_path_names

    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert check_path_names(tmp_path / ("a" * name_max), "--x") == tmp_path / ("a" * name_max)
    with pytest.raises(FilePathError, match=f"is {name_max + 1} bytes long and this file system allows at most "
                                            f"{name_max} per name"):
        check_path_names(tmp_path / ("a" * (name_max + 1)) / "b", "--x")
    with pytest.raises(FilePathError, match="the path is .* bytes long"):
        check_path_names(tmp_path.joinpath(*["d" * 100] * 50), "--x")
