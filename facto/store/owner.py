"""Which process owns a run, and whether that process is gone.

Every write to the run history records its owner (host name, pid, process start
time, boot id, pid namespace); :func:`owner_gone` later tells from those whether a
'running' run's process has ended (``kill -9``, power loss) or may still live.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["OWNER_COLUMNS", "STALE_ERROR", "Owner", "owner_gone", "this_process"]

STALE_ERROR = "process ended without finishing the run"  # prefix of every liveness verdict
OWNER_COLUMNS = ("host", "pid", "pid_start", "boot_id", "pid_ns")  # as in Owner.row()


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who writes a run: enough to tell later whether that process still exists."""

    host: str
    pid: int
    pid_start: int | None  # start time in clock ticks since boot (Linux), tells pid reuse
    boot_id: str | None  # changes when the machine restarts (Linux)
    pid_ns: str | None  # pid namespace: pids are only comparable inside one

    def row(self) -> tuple[Any, ...]:
        return (self.host, self.pid, self.pid_start, self.boot_id, self.pid_ns)


_owner_cache: tuple[int, Owner] | None = None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) from ``/proc/<pid>/stat``, or None."""
    text = _read_text(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None


def this_process() -> Owner:
    """The current process as a run owner (recomputed after a fork)."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache is None or _owner_cache[0] != pid:
        try:
            pid_ns: str | None = os.readlink("/proc/self/ns/pid")
        except OSError:
            pid_ns = None
        stat = _proc_stat(pid)
        owner = Owner(
            host=socket.gethostname(),
            pid=pid,
            pid_start=None if stat is None else stat[1],
            boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
            pid_ns=pid_ns,
        )
        _owner_cache = (pid, owner)
    return _owner_cache[1]


def _pid_alive(pid: int, pid_start: int | None) -> bool | None:
    """Whether process ``pid`` (started at ``pid_start``) still runs here; None: can't tell."""
    if os.name != "posix" or pid <= 0:  # os.kill(pid, 0) would kill on Windows
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except OSError:
        return None
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (or hidden): os.kill is all we know
    state, started = stat
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return pid_start is None or started == pid_start  # a different start: pid reused


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def owner_gone(row: Mapping[str, Any], now: float, stale_after_s: float) -> tuple[str, bool] | None:
    """Why a 'running' row's process is gone and whether that is certain; None if it may live.

    Pids are checked only where they mean the same thing: same host name, same
    boot (Linux boot_id) and same pid namespace -- then a dead pid (or a pid now
    used by a process started later) is gone at once.  Anything else (another
    host, this host before a restart, a container that shares the host name, a
    row without owner) is presumed gone after ``stale_after_s`` without a write.
    """
    me = this_process()
    host, pid = row.get("host"), row.get("pid")
    last = f"last write {_when(row['updated_at'])}"
    same_kernel = row.get("boot_id") == me.boot_id and row.get("pid_ns") == me.pid_ns
    if host == me.host and pid is not None and same_kernel:
        alive = _pid_alive(int(pid), row.get("pid_start"))
        if alive is False:
            return f"{STALE_ERROR}: process {pid} on {host} is gone ({last})", True
        if alive:
            return None
    quiet = now - row["updated_at"]
    if quiet > stale_after_s:
        who = f"process {pid} on {host}" if host is not None else "its process"
        return (
            f"{STALE_ERROR}: no write from {who} for {quiet / 60:.0f} min ({last})",
            False,
        )
    return None
