"""How run data becomes rows of the run history, and rows become CSV.

JSON text for configs and metrics (Paths, enums, numpy/torch scalars included),
the typed metric columns, flattened config keys, default run names, tags, and
the CSV writers behind ``RunStore.export_csv`` and ``RunStore.export_runs_csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "BASE_COLUMNS",
    "ROW_KEYS",
    "default_name",
    "dumps",
    "flatten",
    "loads",
    "metric_row",
    "parse_tags",
    "typed_values",
    "write_metrics_csv",
    "write_runs_csv",
]

# Metric keys copied into typed columns (first key present wins).
_TYPED_COLUMNS = (
    ("loss", ("loss",)),
    ("accuracy", ("accuracy", "acc")),
    ("act_bytes", ("act_bytes",)),
)
ROW_KEYS = ("variant", "kind", "step", "epoch")  # the columns of a metric row before its values
_NAME_KEYS = ("model", "dataset", "rank", "bits", "update")
BASE_COLUMNS = ("id", "name", "kind", "status", "created_at", "finished_at")  # of a compared run


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


def dumps(obj: Any) -> str:
    """JSON text for ``obj``; values and keys JSON cannot hold become plain ones."""
    try:
        return json.dumps(obj, default=_json_default)
    except TypeError:  # e.g. dict keys that are Paths or tuples
        return json.dumps(_stringify_keys(obj), default=_json_default)


def loads(text: str | None) -> Any:
    """Decoded JSON column; None stays None."""
    return None if text is None else json.loads(text)


# ------------------------------------------------------------------------ values


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


def typed_values(metrics: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """(loss, accuracy, act_bytes) pulled from a metric dict."""
    out: list[Any] = []
    for column, keys in _TYPED_COLUMNS:
        value = next((_number(metrics[k]) for k in keys if k in metrics), None)
        if column == "act_bytes" and value is not None:
            value = int(value) if value == value and abs(value) != float("inf") else None
        out.append(value)
    return out[0], out[1], out[2]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys (``{"a": {"b": 1}}`` -> ``a.b``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _label(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return ",".join(_label(v) for v in value)
    return str(value)


def default_name(config: Mapping[str, Any], kind: str) -> str:
    """Readable run name from model/dataset/rank/bits/update in ``config``."""
    flat = flatten(config)
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


def parse_tags(tags: Iterable[str] | str | None) -> list[str]:
    """Tags from a list or one comma-separated string: stripped, no blanks, no repeats."""
    if tags is None:
        return []
    items = tags.split(",") if isinstance(tags, str) else [str(t) for t in tags]
    return list(dict.fromkeys(t.strip() for t in items if t.strip()))


def metric_row(row: Any) -> tuple[str, str, int, int | None, Mapping[str, Any]]:
    """Normalise one ``log_metrics`` row to (variant, kind, step, epoch, metrics)."""
    if isinstance(row, Mapping):
        if isinstance(row.get("metrics"), Mapping):
            metrics = row["metrics"]
        else:
            metrics = {k: v for k, v in row.items() if k not in ROW_KEYS}
        return row["variant"], row["kind"], row["step"], row.get("epoch"), metrics
    variant, kind, step, epoch, metrics = row
    return variant, kind, step, epoch, metrics


# --------------------------------------------------------------------------- CSV


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return dumps(value)
    return value


@contextmanager
def _open_text(path_or_file: str | Path | IO[str]) -> Iterator[IO[str]]:
    if isinstance(path_or_file, (str, Path)):
        with open(path_or_file, "w", newline="", encoding="utf-8") as fh:
            yield fh
    else:
        yield path_or_file


def write_metrics_csv(
    run_id: int, rows: Sequence[Mapping[str, Any]], path_or_file: str | Path | IO[str]
) -> int:
    """Write one run's metric rows as CSV; returns data rows written.

    Columns: run_id, variant, kind, step, epoch, then every metric key
    (sorted).  Missing values are empty; lists/dicts are JSON text.
    """
    keys = sorted({k for r in rows for k in r if k not in ROW_KEYS and k != "run_id"})
    with _open_text(path_or_file) as fh:
        writer = csv.writer(fh)
        writer.writerow(["run_id", *ROW_KEYS, *keys])
        for r in rows:
            writer.writerow(
                [run_id, *(_csv_value(r[k]) for k in ROW_KEYS)]
                + [_csv_value(r.get(k)) for k in keys]
            )
    return len(rows)


def write_runs_csv(rows: Sequence[Mapping[str, Any]], path_or_file: str | Path | IO[str]) -> int:
    """Write compared-run rows (all with the same keys) as CSV; returns data rows written."""
    columns = list(rows[0]) if rows else list(BASE_COLUMNS)
    with _open_text(path_or_file) as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_value(r[c]) for c in columns])
    return len(rows)
