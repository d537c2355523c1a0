"""Runs in the background: a `Job` consumes an event stream in a worker thread; a `JobRegistry`
holds every job of a process (a Streamlit server), queues them, and lets any session find one.

No Streamlit here: the app keeps one registry per server process and draws what jobs have
received. A job never calls back into the UI; readers take consistent snapshots.

Policy: at most `max_running` jobs train at once (default 1: on a small machine two runs
side by side are each more than twice as slow); later jobs wait in a FIFO queue and start
when a slot frees up. Stop works on a queued job too (it never starts).

`in_child(fn, *args)` runs an event stream in a child process instead of a thread: a web
server's page redraws (Python work holding the GIL) would otherwise starve the training loop,
whose every op hands the GIL back and forth (with a few browser tabs watching, a run in a thread
is many times slower).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from .stopping import STOPPED_BY_USER, RunStopped, stop_requests

log = logging.getLogger("facto.engine.jobs")

STATUSES = ("queued", "running", "completed", "interrupted", "failed")
FINISHED = ("completed", "interrupted", "failed")
_ids = itertools.count(1)


class Accumulator(Protocol):
    """Folds events into a state readers can draw (e.g. `facto.engine.events.RunTracker`)."""

    def add(self, event: Any) -> None: ...


@dataclass
class Snapshot:
    """A consistent copy of what a job has so far."""

    job_id: int
    status: str
    version: int
    events: list
    error: str | None
    stopping: bool
    queue_position: int | None
    label: str
    owner: str | None
    started_at: float | None
    finished_at: float | None
    meta: dict = field(default_factory=dict)


class Job:
    """One event stream (a comparison, a sweep) consumed by a worker thread.

    Args:
        make_events: called in the worker to start the stream (a generator).
        accumulator: optional object with `add(event)`, fed under the job's lock.
        label: what the job is, for lists ("simple_cnn on digits · rank 0.5 ...").
        owner: who started it (a session id), for lists and permissions.
        meta: anything the UI wants to keep with the job (e.g. the config dict).
    """

    def __init__(self, make_events: Callable[[], Iterator], accumulator: Accumulator | None = None,
                 label: str = "", owner: str | None = None, meta: dict | None = None) -> None:
        self.id = next(_ids)
        self.label, self.owner, self.meta = label, owner, dict(meta or {})
        self.accumulator = accumulator
        self.status = "queued"
        self.error: str | None = None
        self.version = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._make_events = make_events
        self._events: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_finish: list[Callable[["Job"], None]] = []

    # -- control --------------------------------------------------------------------------

    def start(self) -> "Job":
        """Start the worker (once)."""
        with self._lock:
            if self._thread is not None or self.status != "queued":
                return self
            self.status = "running"
            self.started_at = time.time()
            self._thread = threading.Thread(target=self._work, name=f"facto-job-{self.id}", daemon=True)
        if self._stop.is_set():  # stopped while queued: never train
            self._finish("interrupted")
            return self
        self._thread.start()
        return self

    def stop(self, wait_s: float = 0.0) -> None:
        """Ask the run to stop at its next check (between steps, inside a long phase); a queued
        job ends at once."""
        self._stop.set()
        with self._lock:
            queued = self.status == "queued"
        if queued:
            self._finish("interrupted")
        elif wait_s:
            self.wait(wait_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the job has finished; True when it has."""
        return self._done.wait(timeout_s)

    def on_finish(self, callback: Callable[["Job"], None]) -> None:
        self._on_finish.append(callback)

    # -- state ------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() and not self.finished

    def snapshot(self, since: int = 0, queue_position: int | None = None) -> Snapshot:
        """Events from index `since` on, with the status they belong to."""
        with self._lock:
            return Snapshot(self.id, self.status, self.version, self._events[since:], self.error,
                            self.stopping, queue_position, self.label, self.owner, self.started_at,
                            self.finished_at, dict(self.meta))

    def read(self, fn: Callable[[Any], Any]) -> Any:
        """Call fn(accumulator) under the job's lock (a consistent read of its state)."""
        with self._lock:
            return fn(self.accumulator)

    # -- worker -----------------------------------------------------------------------------

    def _stop_reason(self) -> str | None:
        return STOPPED_BY_USER if self._stop.is_set() else None

    def _work(self) -> None:
        events = None
        try:
            with stop_requests(self._stop_reason):  # a run checks it inside its long phases too
                events = self._make_events()
                for event in events:
                    with self._lock:
                        self._events.append(event)
                        if self.accumulator is not None:
                            self.accumulator.add(event)
                        self.version += 1
                    if self._stop.is_set():
                        events.close()  # the recorder stores the run as 'interrupted'
                        self._finish("interrupted")
                        return
            self._finish("completed")
        except RunStopped:  # the stop reached the run inside a phase; the recorder stored it
            self._finish("interrupted")
        except ValueError as exc:  # a bad combination, data not on disk, a device not there
            self._finish("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - kept for the UI; the recorder stores it as failed
            log.exception("job %s failed", self.id)
            self._finish("failed", f"{type(exc).__name__}: {exc}")

    def _finish(self, status: str, error: str | None = None) -> None:
        with self._lock:
            if self.finished:
                return
            self.error = error
            self.finished_at = time.time()
            self.version += 1
            self.status = status
        self._done.set()
        for callback in self._on_finish:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a listener must not break the job
                log.exception("job %s: finish callback failed", self.id)


# ----------------------------------------------------------------------------- runs in a child process

CHILD_STOP_WAIT_S = 60.0  # how long a stopped child may take to store its run before it is killed


def in_child(fn: Callable[..., Iterator], *args: Any) -> Callable[[], Iterator]:
    """`make_events` for a Job whose stream `fn(*args)` runs in a child Python process.

    fn must be a module-level function and its args and events picklable. The returned
    callable starts `python -m facto.engine.worker` and gives a generator of the child's events;
    a Job's Stop (its stop request, or closing that generator) asks the child to stop at its next
    check and waits for it, so what it stores is complete; the child also ends with its parent.
    An error in the child is raised in the parent (a ValueError stays a ValueError: a user's
    mistake).
    """
    def make_events() -> Iterator:
        from . import worker

        return worker.events_from_child(fn, args, CHILD_STOP_WAIT_S)

    return make_events


class JobRegistry:
    """Every job of one process: submit (queued FIFO, `max_running` at once), find, list, stop."""

    def __init__(self, max_running: int = 1, keep_finished: int = 50) -> None:
        self.max_running = max(1, int(max_running))
        self.keep_finished = keep_finished
        self._jobs: dict[int, Job] = {}
        self._queue: list[int] = []
        self._lock = threading.RLock()

    def submit(self, job: Job) -> Job:
        """Add `job`; it starts now when a slot is free, else when one frees up."""
        job.on_finish(self._finished)
        with self._lock:
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._prune()
        self._start_next()
        return job

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self, active_only: bool = False) -> list[Job]:
        """Jobs newest first (running and queued ones only, when `active_only`)."""
        with self._lock:
            jobs = list(self._jobs.values())
        if active_only:
            jobs = [j for j in jobs if not j.finished]
        return sorted(jobs, key=lambda j: -j.id)

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to start, None when not waiting."""
        with self._lock:
            return self._queue.index(job.id) + 1 if job.id in self._queue else None

    def running(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.status == "running"]

    def _finished(self, job: Job) -> None:
        with self._lock:
            if job.id in self._queue:
                self._queue.remove(job.id)
        self._start_next()

    def _start_next(self) -> None:
        while True:
            with self._lock:
                if len(self.running()) >= self.max_running or not self._queue:
                    return
                job = self._jobs[self._queue.pop(0)]
            job.start()

    def _prune(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j.id)
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]
