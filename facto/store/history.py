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
fix; a valid history that cannot be written opens read-only.  A history file deleted
or replaced while a store has it open is noticed at the store's next write, which
raises :class:`StoreUnavailableError` instead of writing into a file nobody can open.

Beside it in facto.store: owner (owners), files (file errors), rows (JSON/CSV), schema (tables).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .files import (
    READ_ONLY_CODES,
    StoreUnavailableError,
    check_location,
    fix_location,
    not_writable,
    sqlite_code,
    sqlite_unavailable,
)
from . import kept
from .owner import OWNER_COLUMNS, STALE_ERROR, owner_gone, this_process
from .rows import (
    BASE_COLUMNS,
    ROW_KEYS,
    default_name,
    dumps,
    flatten,
    loads,
    metric_row,
    parse_tags,
    typed_values,
    write_metrics_csv,
    write_runs_csv,
)
from .schema import MIGRATIONS, SCHEMA_VERSION

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
SWEEP_COLUMNS = ("sweep_id", "sweep_point")  # of a run that belongs to a sweep (schema 3 on)
STALE_AFTER_S = 900.0  # a run owned by another host is presumed dead after this long without a write


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
    sweep_id: int | None = None  # the sweep this run belongs to (None: no sweep)
    sweep_point: int | None = None  # its point in the sweep: 0 the dense baseline, 1.. a Facto setting

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


def _file_identity(path: str) -> tuple[str, int, int] | None:
    """(path, device, inode) of the file at `path` (None: nothing there)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_dev, st.st_ino


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
        self._file: tuple[str, int, int] | None = None  # (absolute path, device, inode) written to
        self.stale_after_s = float(stale_after_s)
        self._explicit = explicit
        self._lock = threading.RLock()
        self._read_only_reason: str | None = "opened with read_only=True" if read_only else None
        if str(self.path) == ":memory:":
            if read_only:
                raise ValueError("read_only=True needs a database file, not ':memory:'")
            self._conn = self._open_rw(in_memory=True)
            return
        check_location(self.path, explicit, read_only)
        if self._read_only_reason is None:
            reason = not_writable(self.path)
            if reason is not None and not self.path.exists():
                raise StoreUnavailableError(
                    self.path, f"cannot create it: {reason}", self._fix("a writable folder")
                )
            self._read_only_reason = reason
        if self._read_only_reason is None:
            try:
                self._conn = self._open_rw()
                self._file = _file_identity(os.path.abspath(self.path))
                return
            except (sqlite3.Error, StoreUnavailableError) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreUnavailableError) else exc
                if not (
                    self.path.exists()
                    and isinstance(cause, sqlite3.OperationalError)
                    and sqlite_code(cause) in READ_ONLY_CODES
                ):
                    if isinstance(exc, StoreUnavailableError):
                        raise
                    raise self._unavailable(exc, "open it") from exc
                self._read_only_reason = f"it cannot be written: {cause}"
        self._conn = self._open_ro()

    def _fix(self, what: str = "another folder") -> str:
        return fix_location(self._explicit, what)

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
                if sqlite_code(exc) not in ("SQLITE_BUSY", "SQLITE_LOCKED") or (
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
                if not isinstance(exc, sqlite3.OperationalError) or sqlite_code(exc) in (
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
        return sqlite_unavailable(self.path, self._explicit, exc, doing)

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
            self._check_same_file(doing)
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

    def _check_same_file(self, doing: str) -> None:
        """StoreUnavailableError when the file this store writes to is no longer at its path
        (deleted, or replaced by another file): SQLite would go on writing to the old file,
        which nobody can open again, and the writes would be lost without a word."""
        if self._file is None:
            return
        where, device, inode = self._file
        now = _file_identity(where)
        if now is not None and now[1:] == (device, inode):
            return
        what = "deleted" if now is None else "replaced by another file"
        raise StoreUnavailableError(
            self.path,
            f"it was {what} while this process had it open, so it cannot {doing} and what it wrote"
            " since it opened the file is not in the history",
            f"leave {self.path.name} in place while runs train, and start again: a new run or command"
            " opens the file that is there now",
        )

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
                for statements in MIGRATIONS[version:]:
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
        self,
        config: Mapping[str, Any] | None,
        kind: str = "compare",
        name: str | None = None,
        sweep_id: int | None = None,
        sweep_point: int | None = None,
    ) -> int:
        """Insert a new 'running' run and return its id.

        ``sweep_id`` (from :meth:`start_sweep`) and ``sweep_point`` (0: the sweep's
        dense baseline, 1..n: its Facto settings) mark a run of a sweep.
        """
        config = dict(config or {})
        now = time.time()
        with self._write("start a run") as conn:
            cur = conn.execute(
                "INSERT INTO runs (name, kind, created_at, updated_at, status, config_json,"
                " host, pid, pid_start, boot_id, pid_ns, sweep_id, sweep_point)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (name or default_name(config, kind), kind, now, now, dumps(config),
                 *this_process().row(), sweep_id, sweep_point),
            )
            return int(cur.lastrowid)

    def start_sweep(self, points: int, config: Mapping[str, Any] | None = None) -> int:
        """Record a new sweep of ``points`` runs (its baseline included) and return its id.

        Ids are never given out again; the sweep's runs name it in :meth:`start_run`.
        """
        with self._write("start a sweep") as conn:
            cur = conn.execute(
                "INSERT INTO sweeps (created_at, points, config_json) VALUES (?, ?, ?)",
                (time.time(), int(points), dumps(dict(config or {}))),
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
            variant, kind, step, epoch, metrics = metric_row(row)
            metrics = {k: v for k, v in metrics.items() if k not in ROW_KEYS}
            values.append(
                (
                    run_id,
                    str(variant),
                    str(kind),
                    int(step),
                    None if epoch is None else int(epoch),
                    *typed_values(metrics),
                    dumps(metrics),
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
        summary_json = None if summary is None else dumps(dict(summary))
        with self._write("finish a run") as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, updated_at = ?, error = ?,"
                " summary_json = COALESCE(?, summary_json),"
                " host = ?, pid = ?, pid_start = ?, boot_id = ?, pid_ns = ? WHERE id = ?",
                (status, now, now, error, summary_json, *this_process().row(), run_id),
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
        params: list[Any] = [STALE_ERROR]
        if max_age_s is not None:
            sql += " AND updated_at < ?"
            params.append(time.time() - max_age_s)
        with self._write("mark stale runs") as conn:
            return conn.execute(sql, params).rowcount

    def set_tags(self, run_id: int, tags: Iterable[str] | str | None) -> None:
        """Replace a run's tags (list of strings or one comma-separated string)."""
        clean = parse_tags(tags)
        with self._write("set tags") as conn:
            cur = conn.execute(
                "UPDATE runs SET tags = ? WHERE id = ?",
                (dumps(clean) if clean else None, run_id),
            )
            if cur.rowcount == 0:
                raise RunNotFoundError(run_id)

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics, layers and kept models (its id is never given out again)."""
        with self._write("delete a run") as conn:
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise RunNotFoundError(run_id)
        kept.delete(self.path, run_id)

    # ----------------------------------------------------------------- kept models

    def keep_models(self, run_id: int, states: Mapping[str, Mapping]) -> dict[str, kept.KeptModel]:
        """Keep run `run_id`'s trained models (variant -> state dict) in the history's `models` folder."""
        self.get_run(run_id)
        if not self.writable:
            raise StoreUnavailableError(self.path, "cannot keep models: the history is read-only",
                                        self._fix("a writable folder"))
        return kept.keep(self.path, run_id, states)

    def kept_models(self, run_id: int) -> dict[str, kept.KeptModel]:
        """Run `run_id`'s kept model files by variant (baseline, facto); empty when none were kept."""
        return kept.kept(self.path, run_id)

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
            (time.time(), *this_process().row(), *(len(STALE_ERROR), STALE_ERROR) * 3, run_id),
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
            for column in (*OWNER_COLUMNS, *SWEEP_COLUMNS):  # an older schema read as it is (read-only)
                data.setdefault(column, None)
            if data["status"] == "running":
                verdict = owner_gone(data, now, self.stale_after_s)
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
            config=loads(data["config_json"]) or {},
            summary=loads(data["summary_json"]),
            tags=tuple(loads(data["tags"]) or ()),
            updated_at=data["updated_at"],
            host=data["host"],
            pid=data["pid"],
            sweep_id=data["sweep_id"],
            sweep_point=data["sweep_point"],
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
            item: dict[str, Any] = {k: row[k] for k in ROW_KEYS}
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
        configs = [flatten(r.config) for r in records]
        summaries = [flatten(r.summary or {}) for r in records]
        config_keys = list(dict.fromkeys(k for c in configs for k in c))
        summary_keys = list(dict.fromkeys(k for s in summaries for k in s))
        base = set(BASE_COLUMNS)
        config_cols = {
            k: f"config.{k}" if k in base or k in summary_keys else k for k in config_keys
        }
        summary_cols = {
            k: f"summary.{k}" if k in base or k in config_cols else k for k in summary_keys
        }
        rows = []
        for record, config, summary in zip(records, configs, summaries):
            row: dict[str, Any] = {c: getattr(record, c) for c in BASE_COLUMNS}
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
        return write_metrics_csv(run_id, self.metrics(run_id), path_or_file)

    def export_runs_csv(self, run_ids: Iterable[int], path_or_file: str | Path | IO[str]) -> int:
        """Write :meth:`compare_runs` rows as CSV; returns data rows written."""
        return write_runs_csv(self.compare_runs(run_ids), path_or_file)
