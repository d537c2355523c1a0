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
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import os
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
    "default_db_path",
]

RUN_KINDS = ("compare", "single", "sweep")  # conventional values; not enforced
RUN_STATUSES = ("running", "completed", "interrupted", "failed")
FINAL_STATUSES = ("completed", "interrupted", "failed")
BUSY_TIMEOUT_S = 10.0

# Metric keys copied into typed columns (first key present wins).
_TYPED_COLUMNS = (
    ("loss", ("loss",)),
    ("accuracy", ("accuracy", "acc")),
    ("act_bytes", ("act_bytes",)),
)
_ROW_KEYS = ("variant", "kind", "step", "epoch")
_NAME_KEYS = ("model", "dataset", "rank", "bits", "update")
_BASE_COLUMNS = ("id", "name", "kind", "status", "created_at", "finished_at")
_STALE_ERROR = "process ended without finishing the run"

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
)
SCHEMA_VERSION = len(_MIGRATIONS)


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


# -------------------------------------------------------------------------- store


class RunStore:
    """SQLite-backed run history; safe to share between threads of one process.

    Every public method takes and returns plain Python types.  One connection
    is shared behind a lock; other processes open their own ``RunStore``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        in_memory = str(self.path) == ":memory:"
        if not in_memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(self.path),
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not in_memory:
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, committed on exit."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        """Create or upgrade the schema; a current database needs no write lock."""
        if self.schema_version == SCHEMA_VERSION:
            return
        with self._write() as conn:  # re-read under the lock: another process may race
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
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO runs (name, kind, created_at, updated_at, status, config_json)"
                " VALUES (?, ?, ?, ?, 'running', ?)",
                (name or _default_name(config, kind), kind, now, now, _dumps(config)),
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
        with self._write() as conn:
            self._touch(conn, run_id)
            conn.executemany(
                "INSERT INTO metrics (run_id, variant, kind, step, epoch,"
                " loss, accuracy, act_bytes, data_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        return len(values)

    def log_layers(self, run_id: int, variant: str, layer_bytes: Mapping[str, int]) -> None:
        """Store per-layer stored-activation bytes (re-logging a layer replaces it)."""
        with self._write() as conn:
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
        """Mark a run finished; a None summary keeps any stored one."""
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"invalid run status {status!r}; expected one of {', '.join(FINAL_STATUSES)}"
            )
        now = time.time()
        summary_json = None if summary is None else _dumps(dict(summary))
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, updated_at = ?, error = ?,"
                " summary_json = COALESCE(?, summary_json) WHERE id = ?",
                (status, now, now, error, summary_json, run_id),
            )
            if cur.rowcount == 0:
                raise RunNotFoundError(run_id)

    def mark_stale_running(self, max_age_s: float | None = None) -> int:
        """Turn 'running' runs into 'interrupted'; returns how many changed.

        With ``max_age_s`` only runs with no write for that many seconds are
        touched; with None every running run is (the caller knows no trainer
        is alive).  ``finished_at`` becomes the run's last write time.
        """
        sql = (
            "UPDATE runs SET status = 'interrupted', finished_at = updated_at,"
            " error = COALESCE(error, ?) WHERE status = 'running'"
        )
        params: list[Any] = [_STALE_ERROR]
        if max_age_s is not None:
            sql += " AND updated_at < ?"
            params.append(time.time() - max_age_s)
        with self._write() as conn:
            return conn.execute(sql, params).rowcount

    def set_tags(self, run_id: int, tags: Iterable[str] | str | None) -> None:
        """Replace a run's tags (list of strings or one comma-separated string)."""
        clean = _parse_tags(tags)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET tags = ? WHERE id = ?",
                (_dumps(clean) if clean else None, run_id),
            )
            if cur.rowcount == 0:
                raise RunNotFoundError(run_id)

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics and layers."""
        with self._write() as conn:
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise RunNotFoundError(run_id)

    @staticmethod
    def _touch(conn: sqlite3.Connection, run_id: int) -> None:
        """Bump ``updated_at`` (the heartbeat); raises if the run is missing."""
        cur = conn.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (time.time(), run_id))
        if cur.rowcount == 0:
            raise RunNotFoundError(run_id)

    # ----------------------------------------------------------------- reads

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"],
            name=row["name"],
            kind=row["kind"],
            status=row["status"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            config=_loads(row["config_json"]) or {},
            summary=_loads(row["summary_json"]),
            tags=tuple(_loads(row["tags"]) or ()),
            updated_at=row["updated_at"],
        )

    def list_runs(
        self, status: str | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs newest first, optionally filtered by status and kind."""
        sql, params = "SELECT * FROM runs WHERE 1 = 1", []
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._record(r) for r in self._read(sql, params)]

    def get_run(self, run_id: int) -> RunRecord:
        """One run; raises :class:`RunNotFoundError` if missing."""
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFoundError(run_id)
        return self._record(rows[0])

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
