"""Tests for facto.store (SQLite run history)."""

from __future__ import annotations

import csv
import enum
import io
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from facto.store import (
    SCHEMA_VERSION,
    RunNotFoundError,
    RunRecord,
    RunStore,
    default_db_path,
)

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
