"""Ctrl-C in the `facto` program (`python -m facto`, the `facto` script): one "interrupted: ..." line, exit 130.

A Ctrl-C in the first seconds lands inside imports of torch and its libraries: without care a run
can end killed by SIGINT (exit -2) although the program handled the interrupt, print a traceback
(a KeyboardInterrupt inside an import, or an ImportError a C extension made of it), or go on
training (a library's import swallowed the KeyboardInterrupt). So the program notes each Ctrl-C before it raises KeyboardInterrupt, turns an interrupted start-up into
one line, re-raises a swallowed Ctrl-C at its next checkpoint, and clears CPython's memory of
an interrupt that escaped code run through PyRun_* (which would end the process by SIGINT).
Called from Python (`facto.cli.main([...])`, the app, tests), nothing here changes SIGINT.
Light on purpose: it runs before torch is imported.
"""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_state = {"program": None, "pressed": False}
NOTHING_STORED = "interrupted: nothing was stored"  # the line a Ctrl-C before any run was stored ends with


def is_program() -> bool:
    """Whether this process runs the facto program (checked once, at the package's first import)."""
    if _state["program"] is None:
        argv = list(getattr(sys, "orig_argv", sys.argv))
        if "-m" in argv[:-1]:  # python -m facto ... (not python -m facto.engine.worker, pytest, streamlit)
            _state["program"] = argv[argv.index("-m") + 1] == "facto"
        else:  # the console script
            _state["program"] = bool(sys.argv) and Path(sys.argv[0]).name == "facto"
    return bool(_state["program"])


def _note_ctrl_c(signum, frame) -> None:
    _state["pressed"] = True
    raise KeyboardInterrupt


def _note_only(signum, frame) -> None:
    _state["pressed"] = True


def watch_ctrl_c() -> None:
    """In the program, note every Ctrl-C before raising KeyboardInterrupt (a SIGINT that was
    ignored when the program started stays ignored)."""
    if is_program() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _note_ctrl_c)


def check_ctrl_c() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed and its KeyboardInterrupt got lost on the way."""
    if _state["pressed"]:
        raise KeyboardInterrupt


def from_ctrl_c(error: BaseException) -> bool:
    """Whether `error` is a Ctrl-C or came from one: a KeyboardInterrupt in its chain of causes
    (an ImportError a C extension raised when its init was interrupted), or, in the program, any
    error after a Ctrl-C was noted."""
    seen: BaseException | None = error
    for _ in range(20):  # the chain of causes and contexts
        if seen is None:
            break
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return is_program() and _state["pressed"]


def ctrl_c_closes() -> None:
    """After Ctrl-C, in the program: ignore further SIGINTs while the run is closed and forget an
    interrupt that escaped PyRun_* code (CPython would end the process by SIGINT, exit -2)."""
    if not is_program():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.pythonapi.PyRun_SimpleStringFlags(b"pass", None)  # resets CPython's "unhandled" mark
    except (AttributeError, OSError):  # not CPython: nothing to forget
        pass


@contextmanager
def quiet_start_up() -> Iterator[None]:
    """Around the package's imports: in the program, a Ctrl-C during them prints NOTHING_STORED and
    exits 130 (no traceback) once the imports are done; elsewhere nothing changes.

    The imports run with a handler that only notes the Ctrl-C: a KeyboardInterrupt raised inside a C
    extension's initialisation (torch's) can abort the process (exit -6) instead of unwinding."""
    watch_ctrl_c()
    noting = signal.getsignal(signal.SIGINT) is _note_ctrl_c
    if noting:
        signal.signal(signal.SIGINT, _note_only)
    try:
        try:
            yield
        finally:
            if noting:
                signal.signal(signal.SIGINT, _note_ctrl_c)
        if is_program():
            check_ctrl_c()
    except BaseException as error:
        if not (is_program() and from_ctrl_c(error)):
            raise
        ctrl_c_closes()
        print(NOTHING_STORED, file=sys.stderr)
        raise SystemExit(130) from None
