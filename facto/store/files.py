"""Where the run history file lives and, in plain words, what is wrong with it.

:func:`check_location` looks at a path before SQLite opens it, :func:`not_writable`
says why a history must open read-only, and :func:`sqlite_unavailable` turns an
SQLite error into a :class:`StoreUnavailableError` with a one-line fix.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "READ_ONLY_CODES",
    "StoreUnavailableError",
    "check_location",
    "fix_location",
    "not_writable",
    "sqlite_code",
    "sqlite_unavailable",
]

_SQLITE_MAGIC = b"SQLite format 3\x00"
READ_ONLY_CODES = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")


class StoreUnavailableError(ValueError):
    """The run history cannot be opened or written; the message says where and how to fix it."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        text = f"run history {path} cannot be used: {problem}. To fix: {fix}."
        super().__init__(" ".join(text.split()))  # always one line
        self.path = Path(path)
        self.problem = problem
        self.fix = fix


def fix_location(explicit: bool, what: str = "another folder") -> str:
    """Point to ``what``: by passing a path if one was passed, else through FACTO_HOME."""
    return f"pass a path in {what}" if explicit else f"set FACTO_HOME to {what}"


def check_location(path: Path, explicit: bool, read_only: bool) -> None:
    """Raise :class:`StoreUnavailableError` if ``path`` cannot hold a run history.

    Only looks (stat, reads 16 bytes) and creates missing folders; never touches
    an existing file.
    """
    where = fix_location(explicit)
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
            fix_location(explicit, "a folder you can read"),
        ) from exc
    if exists:
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise StoreUnavailableError(
                path, f"cannot read it ({exc.strerror or exc})",
                f"make it readable, or {fix_location(explicit, 'another folder')}",
            ) from exc
        if head and head != _SQLITE_MAGIC:  # an empty file is a valid new database
            raise StoreUnavailableError(
                path, "it is not an SQLite database", _damaged_fix(path, explicit)
            )
        return
    if read_only:
        raise StoreUnavailableError(
            path, "there is no run history there (opened read-only)",
            f"{fix_location(explicit, 'the folder that holds your runs.db')}",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(
            path, f"cannot create the folder {path.parent} ({exc.strerror or exc})",
            fix_location(explicit, "a writable folder"),
        ) from exc


def _damaged_fix(path: Path, explicit: bool) -> str:
    return (
        f"move {path} aside (e.g. rename it to {path.name}.bad) to start a new history,"
        f" or {fix_location(explicit)}"
    )


def not_writable(path: Path) -> str | None:
    """Why ``path`` (or its folder, where SQLite keeps its WAL files) can't be written."""
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"the folder {path.parent} is read-only"
    return None


def sqlite_code(exc: BaseException) -> str:
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


def sqlite_unavailable(
    path: Path, explicit: bool, exc: BaseException, doing: str
) -> StoreUnavailableError:
    """A :class:`StoreUnavailableError` that explains SQLite error ``exc``."""
    code = sqlite_code(exc)
    if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return StoreUnavailableError(
            path, f"it is damaged or not a Facto run history ({exc})",
            _damaged_fix(path, explicit),
        )
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StoreUnavailableError(
            path, f"cannot {doing}: another process holds it locked ({exc})",
            "try again when the other Facto process is done",
        )
    if code == "SQLITE_FULL":
        return StoreUnavailableError(
            path, f"cannot {doing}: the disk is full",
            f"free some space, or {fix_location(explicit, 'a folder on another disk')}",
        )
    return StoreUnavailableError(
        path, f"cannot {doing} ({exc})", fix_location(explicit, "a writable folder")
    )
