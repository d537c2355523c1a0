"""A child process that runs one event stream for the app: `python -m facto.engine.worker`.

Protocol (binary pipes): the parent writes one pickled (module, function, args) to the child's
stdin, after its 8-byte length; the child writes each event the same way to its stdout, then an
end marker (or an error record). Any further byte on stdin asks the child to stop: the run
sees it at its next check (`facto.engine.stopping`: between steps and inside its long phases),
a recorder stores it as interrupted, and the child ends.

The child dies with its parent (a web server killed with kill -9): stdin closing, its parent pid
changing, or SIGTERM (which Linux sends it when the parent dies, PR_SET_PDEATHSIG) stop the run
the same way, and a child still alive `EXIT_GRACE_S` later exits at once (a reader of the history
then shows its run as interrupted). Everything else the child prints goes to stderr.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

from .stopping import STOPPED_BY_USER, RunStopped, stop_reason, stop_requests

_END, _ERROR = "__facto_end__", "__facto_error__"
_HEADER = struct.Struct("<Q")
PARENT_ENV = "FACTO_WORKER_PARENT"  # the parent's pid, given to the child
PARENT_GONE = "its parent process (the server that started it) is gone"
WATCH_EVERY_S = 0.5  # how often the child looks at its parent pid
EXIT_GRACE_S = 5.0  # how long a child whose parent is gone may take to store its run
POLL_S = 0.1  # how often a parent waiting for the next event looks for a stop request
_PR_SET_PDEATHSIG = 1


def _send(out, item: Any) -> None:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def main() -> int:
    """The child: read the job, run it, send its events."""
    from ..memory.process import return_big_buffers, return_memory_wanted

    if return_memory_wanted():  # FACTO_RETURN_MEMORY=1: see facto.memory.process
        return_big_buffers()
    out = os.fdopen(os.dup(1), "wb")  # the event channel; fd 1 (prints) now goes to stderr
    os.dup2(2, 1)
    # stdin is read by its file descriptor: exactly the job's bytes (a stop byte after them stays in
    # the pipe), and the watcher's blocking read holds no lock of sys.stdin, which the interpreter's
    # shutdown takes (while a buffered read held it: "Fatal Python error", abort)
    job = _receive(sys.stdin)
    if job is None:
        return 1  # the parent left before sending the job
    module, name, args = job
    stop = _StopState()
    stop.watch_parent(int(os.environ.get(PARENT_ENV) or 0))
    with stop_requests(stop.reason):  # also while the stream is closed: the run stores why it ended
        _run_stream(out, stop, module, name, args)
    return 0


def _run_stream(out, stop: "_StopState", module: str, name: str, args: tuple) -> None:
    """Run the job's stream, sending its events, then the end marker or its error."""
    stream = None
    try:
        stream = getattr(importlib.import_module(module), name)(*args)
        for event in stream:
            _send(out, event)
            if stop.reason() is not None:
                stream.close()
                break
        _send(out, _END)
    except BrokenPipeError:
        _parent_gone(out)
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it there
        kind = "ValueError" if isinstance(exc, ValueError) else type(exc).__name__
        try:
            _send(out, (_ERROR, kind, str(exc)))
        except BrokenPipeError:
            _parent_gone(out)
    finally:
        if stream is not None:
            stream.close()  # a recorder stores the run (as interrupted when it did not finish)


class _StopState:
    """Why the child should stop (the first reason wins), from its stdin, its parent pid and SIGTERM."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._parent_gone = threading.Event()

    def reason(self) -> str | None:
        return self._reason

    def set(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
        if reason == PARENT_GONE:
            self._parent_gone.set()

    def watch_parent(self, parent_pid: int) -> None:
        """Start watching stdin and the parent; ask the kernel for SIGTERM when the parent dies."""
        _die_with_parent()
        signal.signal(signal.SIGTERM, lambda signum, frame: self.set(PARENT_GONE))
        threading.Thread(target=self._watch_stdin, daemon=True).start()
        threading.Thread(target=self._watch_parent, args=(parent_pid or os.getppid(),), daemon=True).start()

    def _watch_stdin(self) -> None:
        byte = os.read(0, 1)  # a byte (Stop), or end of file when the parent is gone
        self.set(STOPPED_BY_USER if byte else PARENT_GONE)

    def _watch_parent(self, parent_pid: int) -> None:
        while not self._parent_gone.wait(WATCH_EVERY_S):
            if os.getppid() != parent_pid:  # re-parented: the parent died
                self.set(PARENT_GONE)
        time.sleep(EXIT_GRACE_S)  # the run stores itself as interrupted meanwhile, and the child ends
        os._exit(1)  # still here: stuck in a long operation, nobody waits for it


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies (elsewhere the
    parent-pid watcher does it alone)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _parent_gone(out) -> None:
    """The parent (a web server) is gone: nobody reads the events any more. What is still
    buffered for it goes nowhere, so ending prints no broken-pipe error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, out.fileno())
    os.close(devnull)


def _read(stream, size: int, deadline: float | None) -> bytes | None:
    """Exactly `size` bytes from a pipe (None at end of file or when the deadline passes)."""
    chunks, got = [], 0
    fd = stream.fileno()
    while got < size:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
        chunk = os.read(fd, size - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _receive(stream, deadline: float | None = None) -> Any:
    """One item written by :func:`_send` (None at end of file or when the deadline passes)."""
    header = _read(stream, _HEADER.size, deadline)
    if header is None:
        return None
    body = _read(stream, _HEADER.unpack(header)[0], deadline)
    return None if body is None else pickle.loads(body)


def _next(proc: subprocess.Popen, deadline: float | None = None) -> Any:
    """The child's next event (None at its end or when the deadline passes)."""
    return _receive(proc.stdout, deadline)


def events_from_child(fn: Callable[..., Iterator], args: tuple, stop_wait_s: float = 60.0) -> Iterator:
    """Run fn(*args) in a child process and yield its events (see the module docstring)."""
    proc = subprocess.Popen([sys.executable, "-m", "facto.engine.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())})
    _send(proc.stdin, (fn.__module__, fn.__name__, args))  # the job, framed as the events are
    finished = asked = False
    try:
        while True:
            while not select.select([proc.stdout.fileno()], [], [], POLL_S)[0]:
                if not asked and stop_reason() is not None:  # this thread's Job was stopped
                    asked = _ask_to_stop(proc)
            item = _next(proc)
            if item is None:
                proc.wait(10)
                raise RuntimeError(f"the training process ended unexpectedly (exit code {proc.returncode})")
            if isinstance(item, str) and item == _END:
                finished = True
                return
            if isinstance(item, tuple) and len(item) == 3 and item[0] == _ERROR:
                finished = True
                if item[1] == "ValueError":
                    raise ValueError(item[2])
                if item[1] == "RunStopped":
                    raise RunStopped(item[2])
                raise RuntimeError(f"{item[1]}: {item[2]}")
            yield item
    finally:
        _stop(proc, finished, stop_wait_s)


def _ask_to_stop(proc: subprocess.Popen) -> bool:
    """Send the child its stop byte (True; also when it is already gone)."""
    try:
        proc.stdin.write(b"s")
        proc.stdin.flush()
    except OSError:
        pass
    return True


def _stop(proc: subprocess.Popen, finished: bool, wait_s: float) -> None:
    """Ask a child that is still going to stop, let it store what it did, then reap it."""
    if not finished and proc.poll() is None:
        _ask_to_stop(proc)
        deadline = time.monotonic() + wait_s
        while True:  # drain its last events until the end marker
            item = _next(proc, deadline)
            if item is None or (isinstance(item, str) and item == _END) or (
                    isinstance(item, tuple) and item[:1] == (_ERROR,)):
                break
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    proc.stdout.close()


def _exit(code: int) -> None:
    """End the child at once once its run is stored and its last event sent: the interpreter's
    teardown of torch takes seconds on a busy machine, and a stopped run's slot waits for it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
