"""facto.engine.jobs: runs in the background, queued one at a time, stoppable, with nothing lost."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from facto.engine.jobs import Job, JobRegistry


class Collect:
    def __init__(self) -> None:
        self.seen = []

    def add(self, event) -> None:
        self.seen.append(event)


def gated(n: int, gate: threading.Event, closed: list | None = None):
    """A stream of n events that waits for `gate` before each; records whether it was closed."""
    def events():
        try:
            for i in range(n):
                gate.wait(10)
                yield i
        finally:
            if closed is not None:
                closed.append(True)
    return events


def test_a_job_consumes_its_events_into_the_accumulator():
    gate = threading.Event()
    gate.set()
    job = Job(gated(5, gate), Collect(), label="five").start()
    assert job.wait(10) and job.status == "completed"
    assert job.read(lambda acc: acc.seen) == [0, 1, 2, 3, 4]
    snap = job.snapshot(since=3)
    assert snap.events == [3, 4] and snap.status == "completed" and snap.version == 6


def test_stop_closes_the_stream_after_the_current_event():
    closed = []

    def slow():
        try:
            for i in range(1000):
                time.sleep(0.01)
                yield i
        finally:
            closed.append(True)

    job = Job(slow).start()
    time.sleep(0.1)
    job.stop(wait_s=10)
    assert job.status == "interrupted" and closed == [True]  # the recorder's finally would store it
    assert 0 < len(job.snapshot().events) < 1000


def test_errors_end_the_job_as_failed_with_the_message():
    def broken():
        yield 1
        raise ValueError("dataset='cifar10' is not on disk")

    job = Job(broken).start()
    job.wait(10)
    assert job.status == "failed" and "cifar10" in job.error and job.snapshot().events == [1]


def test_the_registry_runs_one_at_a_time_and_queues_the_rest():
    registry = JobRegistry(max_running=1)
    gate = threading.Event()
    first = registry.submit(Job(gated(3, gate), owner="alice"))
    second = registry.submit(Job(gated(3, gate), owner="bob"))
    third = registry.submit(Job(gated(3, gate), owner="carol"))
    assert first.status == "running" and second.status == third.status == "queued"
    assert registry.queue_position(second) == 1 and registry.queue_position(third) == 2
    third.stop()  # stopped while waiting: it never starts
    assert third.status == "interrupted" and registry.queue_position(third) is None
    gate.set()
    assert first.wait(10) and second.wait(10)
    assert second.status == "completed" and third.snapshot().events == []
    assert [j.id for j in registry.jobs()] == [third.id, second.id, first.id]
    assert registry.jobs(active_only=True) == []


def test_finished_jobs_beyond_the_limit_are_forgotten_oldest_first():
    registry = JobRegistry(max_running=2, keep_finished=2)
    done = threading.Event()
    done.set()
    jobs = [registry.submit(Job(gated(1, done))) for _ in range(4)]
    for job in jobs:
        job.wait(10)
    registry.submit(Job(gated(1, done))).wait(10)
    kept = {j.id for j in registry.jobs()}
    assert jobs[0].id not in kept and jobs[-1].id in kept


@pytest.mark.slow
def test_a_job_in_a_child_process_runs_stops_and_reports_errors(tmp_path):
    """The app's runs train in a child process (page redraws can't starve them of the GIL there):
    events come back, Stop lets the child store the run as interrupted, errors keep their kind."""
    from facto.config import RunConfig
    from facto.engine.events import RunTracker
    from facto.engine.jobs import in_child
    from facto.engine.train import compare_and_record
    from facto.store.history import RunStore

    db = str(tmp_path / "runs.db")
    tiny = RunConfig(max_train=64, max_test=32, batch_size=32, epochs=1, device="cpu").to_dict()
    done = Job(in_child(compare_and_record, tiny, db), RunTracker()).start()
    assert done.wait(180) and done.status == "completed", done.error
    assert done.read(lambda t: t.summary().steps) == {"baseline": 2, "facto": 2}

    long = {**tiny, "max_train": 640, "epochs": 3}
    stopped = Job(in_child(compare_and_record, long, db), RunTracker()).start()
    deadline = time.monotonic() + 120
    while not stopped.read(lambda t: t.steps) and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped.stop(wait_s=120)
    assert stopped.status == "interrupted"
    assert [r.status for r in RunStore(db).list_runs()] == ["interrupted", "completed"]

    broken = Job(in_child(compare_and_record, {**tiny, "dataset": "cifar10", "data_dir": str(tmp_path)}, None))
    broken.start().wait(120)
    assert broken.status == "failed" and "cifar10" in broken.error


def start_worker(name: str, args: tuple):
    """`python -m facto.engine.worker` running this module's `name(*args)`, spoken to as the parent does."""
    import subprocess
    import sys

    from facto.engine import worker

    proc = subprocess.Popen([sys.executable, "-m", "facto.engine.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    worker._send(proc.stdin, (__name__, name, args))
    return proc


def count_to(n: int):
    """A tiny event stream for the child-process tests (imported by name in the child)."""
    yield from range(n)


def test_a_child_that_ends_while_its_parent_still_holds_the_pipe_exits_cleanly():
    """The child's stop watcher blocks on stdin for the whole run; a parent that closes the pipe a
    moment after the end marker (a busy web server) must not catch the child's interpreter
    shutdown with that read still holding a lock: it used to abort with "Fatal Python error:
    _enter_buffered_busy" on stderr, sometimes, after every event had been sent."""
    from facto.engine import worker

    proc = start_worker("count_to", (3,))
    events = [worker._next(proc, time.monotonic() + 60) for _ in range(4)]
    assert events == [0, 1, 2, worker._END]
    code = proc.wait(60)  # the pipe is still open: the child ends on its own
    proc.stdin.close()
    stderr = proc.stderr.read().decode()
    assert code == 0 and "Fatal" not in stderr, (code, stderr)


def count_slowly(n: int, marker: str):
    """Events every 20 ms; `marker` is written when the stream is closed (finished or not)."""
    try:
        for i in range(n):
            time.sleep(0.02)
            yield i
    finally:
        with open(marker, "w") as f:
            f.write("closed")


def test_a_child_whose_parent_dies_closes_its_stream_and_ends_quietly(tmp_path):
    """A web server killed mid-run (kill -9) closes both pipes: the child must close its stream
    (a recorder stores the run as interrupted) and end without a broken-pipe traceback."""
    from facto.engine import worker

    marker = tmp_path / "closed"
    proc = start_worker("count_slowly", (100_000, str(marker)))
    assert worker._next(proc, time.monotonic() + 60) == 0
    proc.stdout.close()  # the parent is gone: nobody reads, and stdin ends
    proc.stdin.close()
    code = proc.wait(60)
    stderr = proc.stderr.read().decode()
    assert code == 0 and stderr == "", (code, stderr)
    assert marker.read_text() == "closed"


def count_to_with_payload(n: int, payload: bytes):
    """count_to with a large argument (a big config, a long list of layer names)."""
    assert len(payload) > 0
    yield from range(n)


def test_a_job_whose_arguments_exceed_a_pipe_buffer_reaches_the_child_whole():
    """The job is read from a pipe that holds 64 KiB at a time: it must arrive whole (an
    unbuffered read took part of it and the job failed with a broken pipe)."""
    from facto.engine.jobs import in_child

    job = Job(in_child(count_to_with_payload, 3, b"x" * 1_000_000)).start()
    assert job.wait(60) and job.status == "completed", job.error
    assert job.snapshot().events == [0, 1, 2]


# ----------------------------------------------------------------------------- stopping a run in any phase

WARM_FOREVER = dict(max_train=64, max_test=32, batch_size=32, epochs=1, device="cpu", warm_start_steps=10**8)


class EndlessTests:
    """A test loader that never runs out: a run's first evaluation ends only when it is stopped.
    `entered` (an Event or a marker file) tells that the evaluation has begun."""

    def __init__(self, loader, entered: threading.Event | None = None, marker: str | None = None) -> None:
        self.loader, self.entered, self.marker = loader, entered, marker

    def __iter__(self):
        if self.entered is not None:
            self.entered.set()
        if self.marker is not None:
            with open(self.marker, "w") as f:
                f.write("evaluating")
        while True:
            yield from self.loader


def endless_evaluation(config: dict, db: str, marker: str | None = None, entered: threading.Event | None = None):
    """compare_and_record whose first evaluation (after step 1) never ends by itself."""
    import dataclasses

    from facto.config import RunConfig
    from facto.engine.data import load_data
    from facto.engine.recorder import history_at, record
    from facto.engine.train import compare

    cfg = RunConfig.from_dict({**config, "eval_every": 1})
    data = load_data(cfg.dataset, cfg.data_dir, cfg.batch_size, seed=cfg.seed, max_train=cfg.max_train,
                     max_test=cfg.max_test)
    data = dataclasses.replace(data, test_loader=EndlessTests(data.test_loader, entered, marker))
    with history_at(db) as store:
        yield from record(compare(cfg, data=data), store)


def stored(db: str):
    from facto.store.history import RunStore

    with RunStore(db) as store:
        return [(r.status, r.error) for r in store.list_runs()]


def stop_in_warm_up(job: Job, db: str, label: str, limit_s: float) -> None:
    """Once `job` has sent a warm-up step, Stop it: it ends interrupted, stored as stopped by the user."""
    deadline = time.monotonic() + limit_s
    while not job.read(lambda t: t.steps.get("warmup")) and time.monotonic() < deadline:
        time.sleep(0.05)
    asked = time.monotonic()
    job.stop(wait_s=limit_s / 2)
    print(f"{label}: stopped in its warm-up after {time.monotonic() - asked:.2f} s")
    assert job.status == "interrupted", (job.status, job.error)
    assert stored(db) == [("interrupted", "stopped by the user")]


def test_stop_reaches_a_run_in_its_warm_up_and_in_an_evaluation(tmp_path):
    """Stop was seen only when the run sent its next event: a warm-up of 10**8 steps or a long test
    (no event until it ends) kept the only slot. Now the run checks between steps and batches."""
    from facto.engine.events import RunTracker
    from facto.engine.train import compare_and_record

    db = str(tmp_path / "runs.db")
    stop_in_warm_up(Job(lambda: compare_and_record(WARM_FOREVER, db), RunTracker()).start(), db, "thread job", 60)

    entered = threading.Event()
    testing = Job(lambda: endless_evaluation({**WARM_FOREVER, "warm_start_steps": 0}, db, entered=entered),
                  RunTracker()).start()
    assert entered.wait(60)
    testing.stop(wait_s=30)
    assert testing.status == "interrupted", testing.status
    assert stored(db)[0] == ("interrupted", "stopped by the user")
    assert testing.read(lambda t: {v: len(s) for v, s in t.steps.items()}) == {"baseline": 1, "facto": 1}


@pytest.mark.slow
def test_a_run_in_a_child_process_stops_in_its_warm_up(tmp_path):
    """FACTO_JOBS=process: the Job's thread waits for the child's next event; a Stop must still reach
    a child that sends none for a long while (its warm-up)."""
    from facto.engine.events import RunTracker
    from facto.engine.jobs import in_child
    from facto.engine.train import compare_and_record

    db = str(tmp_path / "runs.db")
    stop_in_warm_up(Job(in_child(compare_and_record, WARM_FOREVER, db), RunTracker()).start(), db, "child job", 120)


def _gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie nobody reaped yet counts as ended)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


SERVER = """
import sys, time
from facto.engine.jobs import Job, in_child
from facto.engine.train import compare_and_record
from tests.engine.test_jobs import WARM_FOREVER, endless_evaluation
db, phase, marker = sys.argv[1:4]
if phase == "warm-up":
    Job(in_child(compare_and_record, WARM_FOREVER, db)).start()
else:
    Job(in_child(endless_evaluation, {**WARM_FOREVER, "warm_start_steps": 0}, db, marker)).start()
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_a_worker_dies_with_its_server_in_its_warm_up_and_in_an_evaluation(tmp_path):
    """kill -9 of a web server left its training child running on (190 % CPU) until the run's next
    event. Now the child stops when its parent goes, stores the run as interrupted itself and ends."""
    import os
    import signal
    import subprocess

    from facto.engine.worker import PARENT_GONE

    for phase in ("warm-up", "evaluation"):
        db, marker = str(tmp_path / f"{phase}.db"), str(tmp_path / f"{phase}.marker")
        server = subprocess.Popen([sys.executable, "-c", SERVER, db, phase, marker], cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if phase == "evaluation" and os.path.exists(marker):
                break
            if phase == "warm-up" and os.path.exists(db) and _stored_rows(db):
                break
            time.sleep(0.1)
        children = _children(server.pid)
        assert len(children) == 1, children
        worker = children[0]
        killed = time.monotonic()
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        while not _gone(worker) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        print(f"{phase}: the worker was gone {time.monotonic() - killed:.2f} s after its server")
        assert _gone(worker), f"{phase}: the worker {worker} outlived its server by 10 s"
        assert stored(db) == [("interrupted", PARENT_GONE)], phase


ROOT = str(__import__("pathlib").Path(__file__).resolve().parents[2])


def _stored_rows(db: str) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
    except sqlite3.Error:
        return 0


def _children(pid: int) -> list[int]:
    import glob

    found = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(path) as f:
            found += [int(p) for p in f.read().split()]
    return found
