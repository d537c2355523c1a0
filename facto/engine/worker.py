"""A child process that runs one event stream for the app: `python -m facto.engine.worker`.

Protocol (binary pipes): the parent writes one pickled (module, function, args) to the child's
stdin, after its 8-byte length; the child writes each event the same way to its stdout, then an
end marker (or an error record). Any further byte on stdin, or stdin closing, asks the child
to stop after its current event: it closes the stream (a recorder stores the run as
interrupted) and ends. Everything else the child prints goes to stderr.
"""
from __future__ import annotations

import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

_END, _ERROR = "__facto_end__", "__facto_error__"
_HEADER = struct.Struct("<Q")


def _send(out, item: Any) -> None:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def main() -> int:
    """The child: read the job, run it, send its events."""
    out = os.fdopen(os.dup(1), "wb")  # the event channel; fd 1 (prints) now goes to stderr
    os.dup2(2, 1)
    # stdin is read by its file descriptor: exactly the job's bytes (a stop byte after them stays in
    # the pipe), and the watcher's blocking read holds no lock of sys.stdin, which the interpreter's
    # shutdown takes (while a buffered read held it: "Fatal Python error", abort)
    job = _receive(sys.stdin)
    if job is None:
        return 1  # the parent left before sending the job
    module, name, args = job
    stop = threading.Event()

    def watch_stdin() -> None:
        os.read(0, 1)  # a byte, or end of file when the parent is gone
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stream = None
    try:
        stream = getattr(importlib.import_module(module), name)(*args)
        for event in stream:
            _send(out, event)
            if stop.is_set():
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
    return 0


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
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _send(proc.stdin, (fn.__module__, fn.__name__, args))  # the job, framed as the events are
    finished = False
    try:
        while True:
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
                raise RuntimeError(f"{item[1]}: {item[2]}")
            yield item
    finally:
        _stop(proc, finished, stop_wait_s)


def _stop(proc: subprocess.Popen, finished: bool, wait_s: float) -> None:
    """Ask a child that is still going to stop, let it store what it did, then reap it."""
    if not finished and proc.poll() is None:
        try:
            proc.stdin.write(b"s")
            proc.stdin.flush()
        except OSError:
            pass
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


if __name__ == "__main__":
    raise SystemExit(main())
