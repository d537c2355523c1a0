"""Soak test for facto.store.history: several writer processes and a reader share one FACTO_HOME.

The writers all open a fresh FACTO_HOME at the same moment (so they also race to
create the schema), store complete runs and throw-away runs they delete, while
the reader polls the history.  Nothing may fail, no run may be lost or cut
short, no id may be handed out twice, and no live run may ever read as dead.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from facto.store.history import RunNotFoundError, RunStore

WRITERS = 4
RUNS_PER_WRITER = 20
STEPS = 300
BATCH = 8  # every other run logs its steps in batches of this many rows


def _writer(home: str, index: int, out: str, go) -> None:
    import os

    os.environ["FACTO_HOME"] = home
    result: dict = {"kept": [], "deleted": [], "error": None}
    try:
        go.wait(10)
        with RunStore() as store:
            for r in range(RUNS_PER_WRITER):
                run_id = store.start_run({"writer": index, "run": r}, kind="single")
                rows = [("facto", "step", i, i // 10, {"loss": 1.0 / (i + 1), "act_bytes": index})
                        for i in range(STEPS)]
                if r % 2:
                    for i in range(0, STEPS, BATCH):
                        store.log_metrics(run_id, rows[i:i + BATCH])
                else:
                    for variant, kind, step, epoch, metrics in rows:
                        store.log_step(run_id, variant, step, epoch, metrics)
                store.log_layers(run_id, "facto", {"conv": index, "fc": r})
                store.finish_run(run_id, summary={"writer": index, "steps": STEPS})
                result["kept"].append(run_id)
                scratch = store.start_run({"writer": index, "scratch": r}, kind="single")
                store.log_step(scratch, "facto", 0, 0, {"loss": 1.0})
                store.delete_run(scratch)
                result["deleted"].append(scratch)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(exc).__name__}: {exc}"
    Path(out).write_text(json.dumps(result))


@pytest.mark.slow
@pytest.mark.soak
def test_writers_and_reader_soak(tmp_path, monkeypatch):
    home = tmp_path / "home"  # does not exist yet: the first opener creates it
    monkeypatch.setenv("FACTO_HOME", str(home))
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    outs = [tmp_path / f"writer{i}.json" for i in range(WRITERS)]
    procs = [ctx.Process(target=_writer, args=(str(home), i, str(outs[i]), go))
             for i in range(WRITERS)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    go.set()

    errors: list[str] = []
    seen_rows: dict[int, int] = {}
    polls = 0
    with RunStore() as reader:  # races the writers to create the schema
        while any(p.is_alive() for p in procs) and time.monotonic() - t0 < 40:
            polls += 1
            try:
                for rec in reader.list_runs():
                    if rec.status not in ("running", "completed"):
                        errors.append(f"run {rec.id} read as {rec.status}: {rec.error}")
                    n = len(reader.metrics(rec.id))
                    try:
                        status = reader.get_run(rec.id).status
                    except RunNotFoundError:
                        continue  # a scratch run deleted meanwhile
                    if n < seen_rows.get(rec.id, 0):
                        errors.append(f"run {rec.id} shrank from {seen_rows[rec.id]} to {n} rows")
                    seen_rows[rec.id] = n
                    if rec.status == "completed" and status == "completed" and n != STEPS:
                        errors.append(f"completed run {rec.id} has {n} rows")
            except Exception as exc:  # noqa: BLE001 - the reader must never fail
                errors.append(f"{type(exc).__name__}: {exc}")
        for p in procs:
            p.join(timeout=20)
        elapsed = time.monotonic() - t0

        assert errors == []
        assert [p.exitcode for p in procs] == [0] * WRITERS
        results = [json.loads(out.read_text()) for out in outs]
        assert [r["error"] for r in results] == [None] * WRITERS
        kept = [i for r in results for i in r["kept"]]
        deleted = [i for r in results for i in r["deleted"]]
        assert len(kept) == WRITERS * RUNS_PER_WRITER
        assert len(set(kept + deleted)) == len(kept) + len(deleted)  # no id handed out twice
        assert sorted(r.id for r in reader.list_runs()) == sorted(kept)
        for w, r in enumerate(results):
            for n, run_id in enumerate(r["kept"]):
                rec = reader.get_run(run_id)
                assert rec.status == "completed" and rec.config == {"writer": w, "run": n}
                assert rec.summary == {"writer": w, "steps": STEPS}
                rows = reader.metrics(run_id)
                assert [row["step"] for row in rows] == list(range(STEPS))
                assert {row["act_bytes"] for row in rows} == {w}
                assert reader.layer_bytes(run_id) == {"facto": {"conv": w, "fc": n}}
            for run_id in r["deleted"]:
                with pytest.raises(RunNotFoundError):
                    reader.get_run(run_id)
                assert reader.metrics(run_id) == []
    print(f"soak: {elapsed:.2f} s, {polls} reader polls")
    assert polls > 3  # the reader really ran alongside the writers


def _open_and_start(path: str, go, out) -> None:
    go.wait(10)
    try:
        with RunStore(path) as store:
            store.start_run({"opener": True}, kind="single")
        out.put(None)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        out.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
@pytest.mark.soak
def test_many_processes_create_one_history_together(tmp_path):
    """SQLite refuses a switch to WAL at once (no busy wait) while another process opens the same new
    file: without the store's retry about 1 open in 20 fails, so 90 opens would all pass by chance
    with a probability near 1 %."""
    ctx = multiprocessing.get_context("fork")
    errors: list[str] = []
    for trial in range(15):
        path = tmp_path / f"home{trial}" / "runs.db"  # folder made by the openers
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_and_start, args=(str(path), go, out)) for _ in range(6)]
        for p in procs:
            p.start()
        go.set()
        failed = [e for e in (out.get(timeout=30) for _ in procs) if e]
        for p in procs:
            p.join(timeout=10)
        with RunStore(path) as store:
            assert len(store.list_runs()) == len(procs) - len(failed)
        errors += failed
    assert errors == []
