"""Run history for Facto, kept in a small SQLite database.

One file (``runs.db``) holds every training run: its config, live step/eval
metrics, per-layer stored activation bytes and a final summary.  The file is
opened in WAL mode so a Streamlit page and the CLI can read while a trainer
writes; every write is committed at once so readers see progress live.

Typical use::

    with RunStore() as store:
        run_id = store.start_run(dataclasses.asdict(cfg))
        store.log_step(run_id, "facto", step=10, epoch=0, metrics={"loss": 1.2})
        store.finish_run(run_id, summary={"best_acc": 0.91})

Every write also records which process owns the run (host name, pid, process
start time) and when it last wrote.  Readers use that to show a run whose
process is gone (``kill -9``, power loss) as 'interrupted' with the steps it
stored, without anyone having to call :meth:`RunStore.mark_stale_running`.

A history that cannot be used (FACTO_HOME is a file, a read-only folder, a
damaged ``runs.db``) raises :class:`StoreUnavailableError` with a one-line
fix; a valid history that cannot be written opens read-only.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "RUN_KINDS",
    "RUN_STATUSES",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "RunNotFoundError",
    "RunRecord",
    "RunStore",
    "STALE_AFTER_S",
    "StoreUnavailableError",
    "default_db_path",
]

RUN_KINDS = ("compare", "single", "sweep")  # conventional values; not enforced
RUN_STATUSES = ("running", "completed", "interrupted", "failed")
FINAL_STATUSES = ("completed", "interrupted", "failed")
BUSY_TIMEOUT_S = 10.0
STALE_AFTER_S = 900.0  # a run owned by another host is presumed dead after this long without a write
_SQLITE_MAGIC = b"SQLite format 3\x00"
_READ_ONLY_CODES = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")

# Metric keys copied into typed columns (first key present wins).
_TYPED_COLUMNS = (
    ("loss", ("loss",)),
    ("accuracy", ("accuracy", "acc")),
    ("act_bytes", ("act_bytes",)),
)
_ROW_KEYS = ("variant", "kind", "step", "epoch")
_NAME_KEYS = ("model", "dataset", "rank", "bits", "update")
_BASE_COLUMNS = ("id", "name", "kind", "status", "created_at", "finished_at")
_STALE_ERROR = "process ended without finishing the run"  # prefix of every liveness verdict
_OWNER_COLUMNS = ("host", "pid", "pid_start", "boot_id", "pid_ns")

# Schema migrations: entry i brings user_version from i to i + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'interrupted', 'failed')),
            error TEXT,
            config_json TEXT NOT NULL DEFAULT '{}',
            summary_json TEXT,
            tags TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS runs_status_created ON runs (status, created_at)",
        """CREATE TABLE IF NOT EXISTS metrics (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            variant TEXT NOT NULL,
            kind TEXT NOT NULL,
            step INTEGER NOT NULL,
            epoch INTEGER,
            loss REAL,
            accuracy REAL,
            act_bytes INTEGER,
            data_json TEXT NOT NULL
        )""",
        """CREATE INDEX IF NOT EXISTS metrics_run_kind_variant_step
            ON metrics (run_id, kind, variant, step)""",
        """CREATE TABLE IF NOT EXISTS layers (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            variant TEXT NOT NULL,
            layer TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            PRIMARY KEY (run_id, variant, layer)
        )""",
    ),
    # 1 -> 2: ids are never reused (AUTOINCREMENT) and each run records its owning
    # process.  SQLite cannot add AUTOINCREMENT in place, so ``runs`` is rebuilt with
    # its ids; foreign keys are off meanwhile so metrics and layers are kept.
    (
        """CREATE TABLE runs_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'interrupted', 'failed')),
            error TEXT,
            config_json TEXT NOT NULL DEFAULT '{}',
            summary_json TEXT,
            tags TEXT,
            host TEXT,
            pid INTEGER,
            pid_start INTEGER,
            boot_id TEXT,
            pid_ns TEXT
        )""",
        """INSERT INTO runs_v2 (id, name, kind, created_at, updated_at, finished_at, status,
                               error, config_json, summary_json, tags)
            SELECT id, name, kind, created_at, updated_at, finished_at, status,
                   error, config_json, summary_json, tags FROM runs""",
        "DROP TABLE runs",
        "ALTER TABLE runs_v2 RENAME TO runs",
        "CREATE INDEX IF NOT EXISTS runs_status_created ON runs (status, created_at)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreUnavailableError(ValueError):
    """The run history cannot be opened or written; the message says where and how to fix it."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        text = f"run history {path} cannot be used: {problem}. To fix: {fix}."
        super().__init__(" ".join(text.split()))  # always one line
        self.path = Path(path)
        self.problem = problem
        self.fix = fix


class RunNotFoundError(ValueError):
    """Raised when a run id is not in the database."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} does not exist")
        self.run_id = run_id


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` with its JSON columns decoded."""

    id: int
    name: str
    kind: str
    status: str
    created_at: float
    finished_at: float | None
    error: str | None
    config: dict[str, Any]
    summary: dict[str, Any] | None
    tags: tuple[str, ...] = ()
    updated_at: float | None = None  # last write for this run (heartbeat)
    host: str | None = None  # host name of the process that last wrote the run
    pid: int | None = None  # its process id

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (or to the last write while running)."""
        end = self.finished_at if self.finished_at is not None else self.updated_at
        return None if end is None else end - self.created_at


def default_db_path() -> Path:
    """``$FACTO_HOME/runs.db`` if FACTO_HOME is set, else ``~/.facto/runs.db``."""
    home = os.environ.get("FACTO_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".facto"
    return base / "runs.db"


# --------------------------------------------------------------------------- JSON


def _json_default(obj: Any) -> Any:
    """Make Paths, enums, numpy/torch scalars and the like JSON-encodable."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    for method in ("item", "tolist"):  # scalars first, then whole arrays
        fn = getattr(obj, method, None)
        if callable(fn):
            try:
                return fn()
            except (TypeError, ValueError, RuntimeError):
                pass
    return str(obj)


def _stringify_keys(obj: Any) -> Any:
    """Copy of ``obj`` whose dict keys are all strings (for odd keys like enums)."""
    if isinstance(obj, Mapping):
        return {_key(k): _stringify_keys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_stringify_keys(v) for v in obj]
    return obj


def _key(k: Any) -> str:
    return str(k.value) if isinstance(k, enum.Enum) else str(k)


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, default=_json_default)
    except TypeError:  # e.g. dict keys that are Paths or tuples
        return json.dumps(_stringify_keys(obj), default=_json_default)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# ------------------------------------------------------------------------ helpers


def _number(value: Any) -> float | None:
    """Float for numeric values (incl. numpy/torch scalars), else None."""
    if isinstance(value, bool) or value is None:
        return None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (int, float)):
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _typed_values(metrics: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(loss, accuracy, act_bytes) pulled from a metric dict."""
    out: list[Any] = []
    for column, keys in _TYPED_COLUMNS:
        value = next((_number(metrics[k]) for k in keys if k in metrics), None)
        if column == "act_bytes" and value is not None:
            value = int(value) if value == value and abs(value) != float("inf") else None
        out.append(value)
    return out[0], out[1], out[2]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys (``{"a": {"b": 1}}`` -> ``a.b``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _label(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return ",".join(_label(v) for v in value)
    return str(value)


def _default_name(config: Mapping[str, Any], kind: str) -> str:
    """Readable run name from model/dataset/rank/bits/update in ``config``."""
    flat = _flatten(config)
    parts: list[str] = []
    for key in _NAME_KEYS:
        match = next(
            (v for k, v in flat.items() if k == key or k.endswith("." + key)), None
        )
        if match is None or match == "":
            continue
        parts.append(_label(match) if key in ("model", "dataset") else f"{key}={_label(match)}")
    if parts:
        return " ".join(parts)
    return f"{kind} run {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _parse_tags(tags: Iterable[str] | str | None) -> list[str]:
    if tags is None:
        return []
    items = tags.split(",") if isinstance(tags, str) else [str(t) for t in tags]
    return list(dict.fromkeys(t.strip() for t in items if t.strip()))


def _metric_row(row: Any) -> tuple[str, str, int, int | None, Mapping[str, Any]]:
    """Normalise one ``log_metrics`` row to (variant, kind, step, epoch, metrics)."""
    if isinstance(row, Mapping):
        if isinstance(row.get("metrics"), Mapping):
            metrics = row["metrics"]
        else:
            metrics = {k: v for k, v in row.items() if k not in _ROW_KEYS}
        return row["variant"], row["kind"], row["step"], row.get("epoch"), metrics
    variant, kind, step, epoch, metrics = row
    return variant, kind, step, epoch, metrics


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return _dumps(value)
    return value


@contextmanager
def _open_text(path_or_file: str | Path | IO[str]) -> Iterator[IO[str]]:
    if isinstance(path_or_file, (str, Path)):
        with open(path_or_file, "w", newline="", encoding="utf-8") as fh:
            yield fh
    else:
        yield path_or_file


# ---------------------------------------------------------------- liveness


@dataclasses.dataclass(frozen=True)
class _Owner:
    """Who writes a run: enough to tell later whether that process still exists."""

    host: str
    pid: int
    pid_start: int | None  # start time in clock ticks since boot (Linux), tells pid reuse
    boot_id: str | None  # changes when the machine restarts (Linux)
    pid_ns: str | None  # pid namespace: pids are only comparable inside one

    def row(self) -> tuple[Any, ...]:
        return (self.host, self.pid, self.pid_start, self.boot_id, self.pid_ns)


_owner_cache: tuple[int, _Owner] | None = None


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


def _this_process() -> _Owner:
    """The current process as a run owner (recomputed after a fork)."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache is None or _owner_cache[0] != pid:
        try:
            pid_ns: str | None = os.readlink("/proc/self/ns/pid")
        except OSError:
            pid_ns = None
        stat = _proc_stat(pid)
        owner = _Owner(
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


def _owner_gone(row: Mapping[str, Any], now: float, stale_after_s: float) -> tuple[str, bool] | None:
    """Why a 'running' row's process is gone and whether that is certain; None if it may live.

    Pids are checked only where they mean the same thing: same host name, same
    boot (Linux boot_id) and same pid namespace -- then a dead pid (or a pid now
    used by a process started later) is gone at once.  Anything else (another
    host, this host before a restart, a container that shares the host name, a
    row without owner) is presumed gone after ``stale_after_s`` without a write.
    """
    me = _this_process()
    host, pid = row.get("host"), row.get("pid")
    last = f"last write {_when(row['updated_at'])}"
    same_kernel = row.get("boot_id") == me.boot_id and row.get("pid_ns") == me.pid_ns
    if host == me.host and pid is not None and same_kernel:
        alive = _pid_alive(int(pid), row.get("pid_start"))
        if alive is False:
            return f"{_STALE_ERROR}: process {pid} on {host} is gone ({last})", True
        if alive:
            return None
    quiet = now - row["updated_at"]
    if quiet > stale_after_s:
        who = f"process {pid} on {host}" if host is not None else "its process"
        return (
            f"{_STALE_ERROR}: no write from {who} for {quiet / 60:.0f} min ({last})",
            False,
        )
    return None


# ---------------------------------------------------------------- location


def _fix_location(explicit: bool, what: str = "another folder") -> str:
    return f"pass a path in {what}" if explicit else f"set FACTO_HOME to {what}"


def _check_location(path: Path, explicit: bool, read_only: bool) -> None:
    """Raise :class:`StoreUnavailableError` if ``path`` cannot hold a run history.

    Only looks (stat, reads 16 bytes) and creates missing folders; never touches
    an existing file.
    """
    where = _fix_location(explicit)
    try:
        for folder in (path.parent, *path.parent.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise StoreUnavailableError(
                        path, f"{folder} is a file, not a folder",
                        f"{where}, or move the file {folder} aside",
                    )
                break
        if path.is_dir():
            raise StoreUnavailableError(
                path, "it is a folder, not a database file",
                f"{where}, or move the folder {path} aside",
            )
        exists = path.exists()
    except OSError as exc:
        raise StoreUnavailableError(
            path, f"cannot look at it ({exc.strerror or exc})",
            _fix_location(explicit, "a folder you can read"),
        ) from exc
    if exists:
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise StoreUnavailableError(
                path, f"cannot read it ({exc.strerror or exc})",
                f"make it readable, or {_fix_location(explicit, 'another folder')}",
            ) from exc
        if head and head != _SQLITE_MAGIC:  # an empty file is a valid new database
            raise StoreUnavailableError(
                path, "it is not an SQLite database", _damaged_fix(path, explicit)
            )
        return
    if read_only:
        raise StoreUnavailableError(
            path, "there is no run history there (opened read-only)",
            f"{_fix_location(explicit, 'the folder that holds your runs.db')}",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(
            path, f"cannot create the folder {path.parent} ({exc.strerror or exc})",
            _fix_location(explicit, "a writable folder"),
        ) from exc


def _damaged_fix(path: Path, explicit: bool) -> str:
    return (
        f"move {path} aside (e.g. rename it to {path.name}.bad) to start a new history,"
        f" or {_fix_location(explicit)}"
    )


def _not_writable(path: Path) -> str | None:
    """Why ``path`` (or its folder, where SQLite keeps its WAL files) can't be written."""
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"the folder {path.parent} is read-only"
    return None


def _sqlite_code(exc: BaseException) -> str:
    """SQLite's error name (``SQLITE_READONLY``...) or a guess from the message."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return "_".join(str(name).split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    text = str(exc).lower()
    for needle, code in (
        ("not a database", "SQLITE_NOTADB"),
        ("malformed", "SQLITE_CORRUPT"),
        ("readonly", "SQLITE_READONLY"),
        ("read-only", "SQLITE_READONLY"),
        ("unable to open", "SQLITE_CANTOPEN"),
        ("locked", "SQLITE_BUSY"),
        ("disk is full", "SQLITE_FULL"),
        ("disk i/o", "SQLITE_IOERR"),
    ):
        if needle in text:
            return code
    return "SQLITE_ERROR"


# -------------------------------------------------------------------------- store


class RunStore:
    """SQLite-backed run history; safe to share between threads of one process.

    Every public method takes and returns plain Python types.  One connection
    is shared behind a lock; other processes open their own ``RunStore``.

    ``read_only=True`` opens an existing history for reading only; a history
    whose file or folder is not writable opens that way by itself (see
    :attr:`writable`).  Writes to a read-only store raise
    :class:`StoreUnavailableError`.  Runs owned by a process that is gone read
    as 'interrupted' (another host's runs after ``stale_after_s`` without a write).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        read_only: bool = False,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        explicit = path is not None
        self.path = Path(path) if explicit else default_db_path()
        self.stale_after_s = float(stale_after_s)
        self._explicit = explicit
        self._lock = threading.RLock()
        self._read_only_reason: str | None = "opened with read_only=True" if read_only else None
        if str(self.path) == ":memory:":
            if read_only:
                raise ValueError("read_only=True needs a database file, not ':memory:'")
            self._conn = self._open_rw(in_memory=True)
            return
        _check_location(self.path, explicit, read_only)
        if self._read_only_reason is None:
            reason = _not_writable(self.path)
            if reason is not None and not self.path.exists():
                raise StoreUnavailableError(
                    self.path, f"cannot create it: {reason}", self._fix("a writable folder")
                )
            self._read_only_reason = reason
        if self._read_only_reason is None:
            try:
                self._conn = self._open_rw()
                return
            except (sqlite3.Error, StoreUnavailableError) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreUnavailableError) else exc
                if not (
                    self.path.exists()
                    and isinstance(cause, sqlite3.OperationalError)
                    and _sqlite_code(cause) in _READ_ONLY_CODES
                ):
                    if isinstance(exc, StoreUnavailableError):
                        raise
                    raise self._unavailable(exc, "open it") from exc
                self._read_only_reason = f"it cannot be written: {cause}"
        self._conn = self._open_ro()

    def _fix(self, what: str = "another folder") -> str:
        return _fix_location(self._explicit, what)

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(
            target,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,
            uri=uri,
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return conn

    def _open_rw(self, in_memory: bool = False) -> sqlite3.Connection:
        """Read-write connection in WAL mode with the schema brought up to date."""
        self._conn = self._connect(str(self.path))
        try:
            # Read the schema first: a damaged file fails here, before anything is written.
            self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if not in_memory:
                self._enable_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
            self._conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            self._conn.close()
            raise
        return self._conn

    def _enable_wal(self) -> None:
        """Switch the file to WAL (it stays so), retrying while others hold it.

        SQLite answers a journal-mode change with "database is locked" at once,
        without its busy handler, while another process opens the same new file,
        so processes that create one history together must wait here themselves.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if _sqlite_code(exc) not in ("SQLITE_BUSY", "SQLITE_LOCKED") or (
                    time.monotonic() > deadline
                ):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _open_ro(self) -> sqlite3.Connection:
        """Read-only connection: ``mode=ro``, or ``immutable=1`` where SQLite cannot
        create its WAL index files (a read-only folder with no writer)."""
        base = self.path.resolve().as_uri()
        wal = Path(f"{self.path}-wal")
        last: sqlite3.Error | None = None
        for query in ("?mode=ro", "?immutable=1"):
            if query == "?immutable=1" and wal.exists() and wal.stat().st_size > 0:
                raise StoreUnavailableError(
                    self.path,
                    f"it is read-only ({self._read_only_reason}) and {wal.name} holds recent"
                    " writes that SQLite can only read with write access to the folder",
                    f"open it once where the folder {self.path.parent} is writable,"
                    f" or copy the folder somewhere writable and {self._fix('the copy')}",
                ) from last
            try:
                self._conn = self._connect(base + query, uri=True)
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                self._migrate()
                return self._conn
            except sqlite3.DatabaseError as exc:
                self._conn.close()
                if not isinstance(exc, sqlite3.OperationalError) or _sqlite_code(exc) in (
                    "SQLITE_NOTADB", "SQLITE_CORRUPT"
                ):
                    raise self._unavailable(exc, "read it") from exc
                last = exc  # e.g. no WAL index can be made here: try immutable
            except BaseException:
                self._conn.close()
                raise
        assert last is not None
        raise self._unavailable(last, "open it read-only") from last

    def _unavailable(self, exc: BaseException, doing: str) -> StoreUnavailableError:
        """A :class:`StoreUnavailableError` that explains SQLite error ``exc``."""
        code = _sqlite_code(exc)
        if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return StoreUnavailableError(
                self.path, f"it is damaged or not a Facto run history ({exc})",
                _damaged_fix(self.path, self._explicit),
            )
        if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return StoreUnavailableError(
                self.path, f"cannot {doing}: another process holds it locked ({exc})",
                "try again when the other Facto process is done",
            )
        if code == "SQLITE_FULL":
            return StoreUnavailableError(
                self.path, f"cannot {doing}: the disk is full",
                f"free some space, or {self._fix('a folder on another disk')}",
            )
        return StoreUnavailableError(
            self.path, f"cannot {doing} ({exc})", self._fix("a writable folder")
        )

    # ------------------------------------------------------------- lifecycle

    @property
    def writable(self) -> bool:
        """False when the history was opened read-only (by request or because it must be)."""
        return self._read_only_reason is None

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "" if self.writable else ", read_only=True"
        return f"RunStore({str(self.path)!r}{mode})"

    @contextmanager
    def _write(self, doing: str = "write to it") -> Iterator[sqlite3.Connection]:
        """One short write transaction, committed on exit."""
        if not self.writable:
            raise StoreUnavailableError(
                self.path, f"cannot {doing}: it is open read-only ({self._read_only_reason})",
                f"{self._fix('a writable folder')}, or make {self.path} and its folder writable",
            )
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise self._unavailable(exc, doing) from exc
            except sqlite3.DatabaseError as exc:
                if type(exc) is not sqlite3.DatabaseError:  # IntegrityError etc. pass through
                    raise
                raise self._unavailable(exc, doing) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise self._unavailable(exc, "read it") from exc
            except sqlite3.DatabaseError as exc:
                if type(exc) is not sqlite3.DatabaseError:
                    raise
                raise self._unavailable(exc, "read it") from exc

    def _migrate(self) -> None:
        """Create or upgrade the schema; a current database needs no write lock.

        A read-only store reads an older schema as it is.
        """
        version = self.schema_version
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}; this Facto "
                f"understands up to {SCHEMA_VERSION}"
            )
        if not self.writable:
            if version == 0:
                raise StoreUnavailableError(
                    self.path, f"it holds no run history yet and is read-only ({self._read_only_reason})",
                    self._fix("the folder that holds your runs.db"),
                )
            return
        self._conn.execute("PRAGMA foreign_keys = OFF")  # rebuilding runs must not cascade
        try:
            with self._write("upgrade its schema") as conn:  # re-read: another process may race
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} has schema version {version}; this Facto "
                        f"understands up to {SCHEMA_VERSION}"
                    )
                for statements in _MIGRATIONS[version:]:
                    for sql in statements:
                        conn.execute(sql)
                if version < SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            self._conn.execute("PRAGMA foreign_keys = ON")

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open database."""
        return int(self._read("PRAGMA user_version")[0][0])

    # ---------------------------------------------------------------- writes

    def start_run(
        self, config: Mapping[str, Any] | None, kind: str = "compare", name: str | None = None
    ) -> int:
        """Insert a new 'running' run and return its id."""
        config = dict(config or {})
        now = time.time()
        with self._write("start a run") as conn:
            cur = conn.execute(
                "INSERT INTO runs (name, kind, created_at, updated_at, status, config_json,"
                " host, pid, pid_start, boot_id, pid_ns)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (name or _default_name(config, kind), kind, now, now, _dumps(config),
                 *_this_process().row()),
            )
            return int(cur.lastrowid)

    def log_step(
        self, run_id: int, variant: str, step: int, epoch: int | None, metrics: Mapping[str, Any]
    ) -> None:
        """Record one training-step metric dict."""
        self.log_metrics(run_id, [(variant, "step", step, epoch, metrics)])

    def log_eval(
        self, run_id: int, variant: str, step: int, epoch: int | None, metrics: Mapping[str, Any]
    ) -> None:
        """Record one evaluation metric dict."""
        self.log_metrics(run_id, [(variant, "eval", step, epoch, metrics)])

    def log_metrics(self, run_id: int, rows: Iterable[Any]) -> int:
        """Insert many metric rows in one transaction; returns rows written.

        A row is ``(variant, kind, step, epoch, metrics)`` or a dict with keys
        variant, kind, step, optional epoch and either ``metrics`` (a dict) or
        the metric values inline -- so rows from :meth:`metrics` can be re-logged.
        """
        values = []
        for row in rows:
            variant, kind, step, epoch, metrics = _metric_row(row)
            metrics = {k: v for k, v in metrics.items() if k not in _ROW_KEYS}
            values.append(
                (
                    run_id,
                    str(variant),
                    str(kind),
                    int(step),
                    None if epoch is None else int(epoch),
                    *_typed_values(metrics),
                    _dumps(metrics),
                )
            )
        with self._write("store metrics") as conn:
            self._touch(conn, run_id)
            conn.executemany(
                "INSERT INTO metrics (run_id, variant, kind, step, epoch,"
                " loss, accuracy, act_bytes, data_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        return len(values)

    def log_layers(self, run_id: int, variant: str, layer_bytes: Mapping[str, int]) -> None:
        """Store per-layer stored-activation bytes (re-logging a layer replaces it)."""
        with self._write("store layer bytes") as conn:
            self._touch(conn, run_id)
            conn.executemany(
                "INSERT INTO layers (run_id, variant, layer, bytes) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run_id, variant, layer) DO UPDATE SET bytes = excluded.bytes",
                [(run_id, str(variant), str(k), int(v)) for k, v in layer_bytes.items()],
            )

    def finish_run(
        self,
        run_id: int,
        status: str = "completed",
        summary: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Mark a run finished; a None summary keeps any stored one.

        ``error`` is the reason readers show: the failure for 'failed', why it
        stopped for 'interrupted' (e.g. "stopped by the user"), None otherwise.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"invalid run status {status!r}; expected one of {', '.join(FINAL_STATUSES)}"
            )
        now = time.time()
        summary_json = None if summary is None else _dumps(dict(summary))
        with self._write("finish a run") as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, updated_at = ?, error = ?,"
                " summary_json = COALESCE(?, summary_json),"
                " host = ?, pid = ?, pid_start = ?, boot_id = ?, pid_ns = ? WHERE id = ?",
                (status, now, now, error, summary_json, *_this_process().row(), run_id),
            )
            if cur.rowcount == 0:
                raise RunNotFoundError(run_id)

    def heartbeat(self, run_id: int) -> None:
        """Record that the run's process is alive without storing anything else.

        Every write does this already; call it during long stretches without
        writes (a long evaluation) so other hosts don't presume the run dead.
        """
        with self._write("record a heartbeat") as conn:
            self._touch(conn, run_id)

    def mark_stale_running(self, max_age_s: float | None = None) -> int:
        """Turn 'running' runs into 'interrupted'; returns how many changed.

        With ``max_age_s`` only runs with no write for that many seconds are
        touched; with None every running run is (the caller knows no trainer
        is alive).  ``finished_at`` becomes the run's last write time.  A later
        write to such a run (its trainer was alive after all) makes it
        'running' again.  A read-only store changes nothing and returns 0:
        readers still show runs whose process is gone as 'interrupted'.
        """
        if not self.writable:
            return 0
        sql = (
            "UPDATE runs SET status = 'interrupted', finished_at = updated_at,"
            " error = COALESCE(error, ?) WHERE status = 'running'"
        )
        params: list[Any] = [_STALE_ERROR]
        if max_age_s is not None:
            sql += " AND updated_at < ?"
            params.append(time.time() - max_age_s)
        with self._write("mark stale runs") as conn:
            return conn.execute(sql, params).rowcount

    def set_tags(self, run_id: int, tags: Iterable[str] | str | None) -> None:
        """Replace a run's tags (list of strings or one comma-separated string)."""
        clean = _parse_tags(tags)
        with self._write("set tags") as conn:
            cur = conn.execute(
                "UPDATE runs SET tags = ? WHERE id = ?",
                (_dumps(clean) if clean else None, run_id),
            )
            if cur.rowcount == 0:
                raise RunNotFoundError(run_id)

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics and layers (its id is never given out again)."""
        with self._write("delete a run") as conn:
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise RunNotFoundError(run_id)

    @staticmethod
    def _touch(conn: sqlite3.Connection, run_id: int) -> None:
        """Bump ``updated_at`` (the heartbeat) and record the writing process.

        A run that a reader had concluded was dead comes back to 'running': the
        write proves its process is alive.  Raises if the run is missing.
        """
        stale = "(status = 'interrupted' AND substr(error, 1, ?) = ?)"
        cur = conn.execute(
            "UPDATE runs SET updated_at = ?, host = ?, pid = ?, pid_start = ?, boot_id = ?,"
            f" pid_ns = ?, status = CASE WHEN {stale} THEN 'running' ELSE status END,"
            f" finished_at = CASE WHEN {stale} THEN NULL ELSE finished_at END,"
            f" error = CASE WHEN {stale} THEN NULL ELSE error END WHERE id = ?",
            (time.time(), *_this_process().row(), *(len(_STALE_ERROR), _STALE_ERROR) * 3, run_id),
        )
        if cur.rowcount == 0:
            raise RunNotFoundError(run_id)

    # ----------------------------------------------------------------- reads

    def _records(self, rows: Iterable[sqlite3.Row]) -> list[RunRecord]:
        """Rows -> records, with 'running' rows whose process is gone shown as 'interrupted'.

        A certain verdict (same host, the process is gone) is also stored when
        the store is writable; a presumed one (another host gone quiet) is not.
        """
        now = time.time()
        records, certain = [], []
        for row in rows:
            data = {k: row[k] for k in row.keys()}
            for column in _OWNER_COLUMNS:  # an older schema read as it is (read-only)
                data.setdefault(column, None)
            if data["status"] == "running":
                verdict = _owner_gone(data, now, self.stale_after_s)
                if verdict is not None:
                    reason, sure = verdict
                    data.update(status="interrupted", finished_at=data["updated_at"], error=reason)
                    if sure:
                        certain.append(data)
            records.append(self._record(data))
        if certain and self.writable:
            self._persist_interrupted(certain)
        return records

    def _persist_interrupted(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store 'interrupted' for runs whose process is known to be gone (best effort)."""
        try:
            with self._write("mark a dead run interrupted") as conn:
                for data in rows:  # unchanged since read: no write slipped in meanwhile
                    conn.execute(
                        "UPDATE runs SET status = 'interrupted', finished_at = updated_at,"
                        " error = ? WHERE id = ? AND status = 'running' AND updated_at = ?"
                        " AND pid IS ?",
                        (data["error"], data["id"], data["updated_at"], data["pid"]),
                    )
        except StoreUnavailableError:
            pass  # busy or read-only after all: readers still see the verdict

    @staticmethod
    def _record(data: Mapping[str, Any]) -> RunRecord:
        return RunRecord(
            id=data["id"],
            name=data["name"],
            kind=data["kind"],
            status=data["status"],
            created_at=data["created_at"],
            finished_at=data["finished_at"],
            error=data["error"],
            config=_loads(data["config_json"]) or {},
            summary=_loads(data["summary_json"]),
            tags=tuple(_loads(data["tags"]) or ()),
            updated_at=data["updated_at"],
            host=data["host"],
            pid=data["pid"],
        )

    def list_runs(
        self, status: str | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs newest first, optionally filtered by status and kind.

        The status is the one readers see: a 'running' run whose process is gone
        is listed (and filtered) as 'interrupted'.
        """
        live = status in ("running", "interrupted")  # decided per row below
        sql, params = "SELECT * FROM runs WHERE 1 = 1", []
        if live:
            sql += " AND status IN ('running', 'interrupted')"
        elif status is not None:
            sql += " AND status = ?"
            params.append(status)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None and not live:
            sql += " LIMIT ?"
            params.append(int(limit))
        records = self._records(self._read(sql, params))
        if live:
            records = [r for r in records if r.status == status]
            if limit is not None and int(limit) >= 0:  # like SQL: a negative LIMIT is none
                records = records[: int(limit)]
        return records

    def get_run(self, run_id: int) -> RunRecord:
        """One run; raises :class:`RunNotFoundError` if missing."""
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFoundError(run_id)
        return self._records(rows)[0]

    def metrics(
        self, run_id: int, kind: str | None = None, variant: str | None = None
    ) -> list[dict[str, Any]]:
        """Metric rows ``{variant, kind, step, epoch, **metrics}`` ordered by step.

        Rows with the same step keep the order they were logged in.  An unknown
        run id gives an empty list (cheap for live polling).
        """
        sql = "SELECT variant, kind, step, epoch, data_json FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if variant is not None:
            sql += " AND variant = ?"
            params.append(variant)
        sql += " ORDER BY step, rowid"
        out = []
        for row in self._read(sql, params):
            item: dict[str, Any] = {k: row[k] for k in _ROW_KEYS}
            item.update(json.loads(row["data_json"]))
            out.append(item)
        return out

    def layer_bytes(self, run_id: int) -> dict[str, dict[str, int]]:
        """``{variant: {layer: bytes}}`` in the order layers were first logged."""
        out: dict[str, dict[str, int]] = {}
        for row in self._read(
            "SELECT variant, layer, bytes FROM layers WHERE run_id = ? ORDER BY rowid",
            (run_id,),
        ):
            out.setdefault(row["variant"], {})[row["layer"]] = row["bytes"]
        return out

    def compare_runs(self, run_ids: Iterable[int]) -> list[dict[str, Any]]:
        """One flat row per run, in the order given, all rows with the same keys.

        Columns: id, name, kind, status, created_at, finished_at, then config
        fields, then summary fields.  Nested dicts are flattened with dots
        (``optim.lr``).  A config/summary key is written bare unless it clashes
        -- with a base column, or with a key of the other dict in any of the
        compared runs -- in which case it gets a ``config.``/``summary.`` prefix.
        """
        records = [self.get_run(i) for i in run_ids]
        configs = [_flatten(r.config) for r in records]
        summaries = [_flatten(r.summary or {}) for r in records]
        config_keys = list(dict.fromkeys(k for c in configs for k in c))
        summary_keys = list(dict.fromkeys(k for s in summaries for k in s))
        base = set(_BASE_COLUMNS)
        config_cols = {
            k: f"config.{k}" if k in base or k in summary_keys else k for k in config_keys
        }
        summary_cols = {
            k: f"summary.{k}" if k in base or k in config_cols else k for k in summary_keys
        }
        rows = []
        for record, config, summary in zip(records, configs, summaries):
            row: dict[str, Any] = {c: getattr(record, c) for c in _BASE_COLUMNS}
            row.update({col: config.get(k) for k, col in config_cols.items()})
            row.update({col: summary.get(k) for k, col in summary_cols.items()})
            rows.append(row)
        return rows

    # ---------------------------------------------------------------- export

    def export_csv(self, run_id: int, path_or_file: str | Path | IO[str]) -> int:
        """Write a run's metrics as CSV; returns data rows written.

        Columns: run_id, variant, kind, step, epoch, then every metric key
        (sorted).  Missing values are empty; lists/dicts are JSON text.
        """
        self.get_run(run_id)  # raise for unknown ids
        rows = self.metrics(run_id)
        keys = sorted({k for r in rows for k in r if k not in _ROW_KEYS and k != "run_id"})
        with _open_text(path_or_file) as fh:
            writer = csv.writer(fh)
            writer.writerow(["run_id", *_ROW_KEYS, *keys])
            for r in rows:
                writer.writerow(
                    [run_id, *(_csv_value(r[k]) for k in _ROW_KEYS)]
                    + [_csv_value(r.get(k)) for k in keys]
                )
        return len(rows)

    def export_runs_csv(self, run_ids: Iterable[int], path_or_file: str | Path | IO[str]) -> int:
        """Write :meth:`compare_runs` rows as CSV; returns data rows written."""
        rows = self.compare_runs(run_ids)
        columns = list(rows[0]) if rows else list(_BASE_COLUMNS)
        with _open_text(path_or_file) as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for r in rows:
                writer.writerow([_csv_value(r[c]) for c in columns])
        return len(rows)
