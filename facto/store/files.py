"""Where the run history file lives, what is wrong with it, and the files written beside it.

:func:`check_location` looks at a path before SQLite opens it, :func:`not_writable`
says why a history must open read-only, and :func:`sqlite_unavailable` turns an
SQLite error into a :class:`StoreUnavailableError` with a one-line fix.
:func:`check_output_file` and :func:`write_output_file` are the one way an output
(an export, a chart, a report) is written: never onto the history or into the data
folder, and whole or not at all.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import IO, Callable, Iterable, TypeVar

__all__ = [
    "HISTORY_SUFFIXES",
    "FilePathError",
    "READ_ONLY_CODES",
    "StoreUnavailableError",
    "check_location",
    "check_output_file",
    "check_path_names",
    "history_files",
    "write_output_file",
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


# ----------------------------------------------------------------------------- output files

HISTORY_SUFFIXES = ("", "-wal", "-shm", "-journal")  # the database and SQLite's files beside it
DEFAULT_NAME_MAX = 255  # bytes in one path component where the file system does not say
DEFAULT_PATH_MAX = 4096  # bytes in a whole path where the file system does not say
T = TypeVar("T")


class FilePathError(ValueError):
    """A path that must not or cannot be used (written, named); the message is one line naming it."""


def history_files(db_path: str | Path) -> tuple[Path, ...]:
    """The run history's database and the journal files SQLite keeps next to it."""
    db = Path(db_path)
    return tuple(db.with_name(db.name + suffix) for suffix in HISTORY_SUFFIXES)


def _nearest_folder(path: Path) -> Path:
    """The closest existing folder at or above ``path`` (for the file system's limits)."""
    for folder in (path, *path.parents):
        try:
            if folder.is_dir():
                return folder
        except OSError:
            continue
    return Path(os.sep)


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(folder, name)
    except (AttributeError, OSError, ValueError):
        return default
    return value if value and value > 0 else default


def check_path_names(path: str | Path, what: str) -> Path:
    """``path`` (``~`` expanded) if the file system can name it, else :class:`FilePathError`.

    Each part of the path must fit in NAME_MAX bytes and the whole in PATH_MAX bytes
    (as ``os.pathconf`` tells for the nearest existing folder, else 255 and 4096).
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise FilePathError(f"{what} {text!r} is not allowed: a file name cannot hold a NUL character")
    target = Path(text).expanduser()
    folder = _nearest_folder(Path(os.path.abspath(target)))
    name_max = _limit(folder, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    for part in target.parts:
        size = len(os.fsencode(part))
        if size > name_max and part != os.sep:
            raise FilePathError(f"{what} {_short(text)} is not allowed: the name {_short(part)} is {size} "
                                  f"bytes long and this file system allows at most {name_max} per name")
    path_max = _limit(folder, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    size = len(os.fsencode(os.path.abspath(target)))
    if size >= path_max:
        raise FilePathError(f"{what} {_short(text)} is not allowed: the path is {size} bytes long and this "
                              f"file system allows paths shorter than {path_max}")
    return target


def _short(text: str, keep: int = 100) -> str:
    """A name longer than any usual path (over 203 characters) cut to its start and end, so the error
    stays one readable line; shorter paths are shown whole."""
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}...{text[-keep:]}"


def _same_file(a: str, b: Path) -> bool:
    """Whether path ``a`` (links followed) is file ``b``: the same resolved path or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def inside_folder(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` (links followed) lies in ``folder`` or is it."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    try:
        return os.path.commonpath([real, top]) == top
    except ValueError:  # different drives
        return False


def check_output_file(path: str | Path, what: str, protected_files: Iterable[str | Path] = (),
                      protected_folders: Iterable[str | Path] = ()) -> Path:
    """``path`` if an output can be written there later, else :class:`FilePathError` naming it.

    Refused: a name the file system cannot hold, a folder, a missing or read-only folder, a
    read-only file, any of ``protected_files`` (the run history and its journals: see
    :func:`history_files`), reached by a link or another name included, and anything inside
    ``protected_folders`` (the data folder). Only looks: nothing is created.
    """
    target = check_path_names(path, what)
    shown = _short(os.fspath(path))
    for protected in protected_files:
        protected = Path(protected).expanduser()
        if _same_file(str(target), protected):
            raise FilePathError(f"{what} {shown} is not allowed: it is the run history's file {protected}; "
                                  "name another file")
    for folder in protected_folders:
        folder = Path(folder).expanduser()
        if inside_folder(str(target), folder):
            raise FilePathError(f"{what} {shown} is not allowed: it is inside the data folder {folder}; "
                                  "name a file elsewhere")
    try:
        if target.is_dir():
            raise FilePathError(f"{what} {shown} is a folder: name a file in it")
        real = Path(os.path.realpath(target))
        if not real.parent.is_dir():
            raise FilePathError(f"{what} {shown}: the folder {_short(str(Path(os.fspath(path)).parent))} "
                                "does not exist")
        if real.exists() and not stat.S_ISREG(real.stat().st_mode):
            writable = os.access(real, os.W_OK)  # a device or a pipe: written in place
        else:
            writable = os.access(real.parent, os.W_OK | os.X_OK) and (not real.exists() or os.access(real, os.W_OK))
    except OSError as exc:
        raise FilePathError(f"{what} {shown} cannot be written: {exc.strerror or exc}") from None
    if not writable:
        raise FilePathError(f"{what} {shown} is not writable: name a file in a folder you can write to")
    return target


def write_output_file(path: str | Path, write: Callable[[IO], T], what: str, *, binary: bool = False,
                      protected_files: Iterable[str | Path] = (),
                      protected_folders: Iterable[str | Path] = ()) -> T:
    """Call ``write(file)`` to fill ``path``; return what it returns.

    Checked as :func:`check_output_file` first. A regular file (links followed) is written to a
    temporary name in its folder and renamed into place, so a failed write (a full disk) leaves
    the old file whole and no partial one; a device or pipe (/dev/null) is written in place. An
    OSError becomes an :class:`FilePathError` naming the path.
    """
    target = check_output_file(path, what, protected_files, protected_folders)
    shown = _short(os.fspath(path))
    real = Path(os.path.realpath(target))
    mode, encoding = ("wb", None) if binary else ("w", "utf-8")
    try:
        if real.exists() and not stat.S_ISREG(real.stat().st_mode):
            with open(real, mode, encoding=encoding, newline=None if binary else "") as fh:
                return write(fh)
        return _write_then_rename(real, write, mode, encoding)
    except OSError as exc:
        raise FilePathError(f"cannot write {what} {shown}: {exc.strerror or exc}") from None


def _write_then_rename(real: Path, write: Callable[[IO], T], mode: str, encoding: str | None) -> T:
    """Write ``real`` through a temporary file beside it, then ``os.replace`` it into place."""
    keep_mode = stat.S_IMODE(real.stat().st_mode) if real.exists() else None
    while True:
        temp = real.with_name(f".facto-{secrets.token_hex(4)}.tmp")  # short: any allowed name still fits
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=None if encoding is None else "") as fh:
            result = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_mode is not None:
            os.chmod(temp, keep_mode)
        os.replace(temp, real)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    return result
