"""What every `facto` subcommand shares: one-line user errors, the RunConfig flags, comma lists,
output paths, the run history to store into, progress on stderr and plain text tables."""
from __future__ import annotations

import argparse
import sys
import time
from typing import IO, Any, Callable, Sequence, TypeVar

from ..config import PRESETS, SETTINGS, RunConfig, parse_int

DEFAULT = " (default: %(default)s)"  # appended to a flag's help
T = TypeVar("T")


class UsageError(Exception):
    """A user mistake on the command line: printed as one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line), not the usage block and exit."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")


def as_usage_error(error: ValueError) -> UsageError:
    """The library's ValueError (it names the value and what is allowed) as the command line's error."""
    return UsageError(str(error))


SQLITE_INT_MAX = 2**63 - 1  # the largest run ID or row limit SQLite stores


def whole_number(what: str, minimum: int | None = None, maximum: int | None = SQLITE_INT_MAX
                 ) -> Callable[[str], int]:
    """An argparse type: an integer written with the digits 0-9, in [minimum, maximum] (None: unbounded;
    the caller checks the range then, as RunConfig does for the values it receives)."""
    def parse(text: str) -> int:
        try:
            value = parse_int(text)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = " and ".join(b for b in ("" if minimum is None else f">= {minimum}",
                                              "" if maximum is None else f"<= {maximum}") if b)
            raise UsageError(f"{what}={text!r} is not allowed: use an integer {bounds + ' ' if bounds else ''}"
                             "written with the digits 0-9")  # passes through argparse: one line, exit 2
        return value

    return parse


def _protected(data_dir: str | None) -> dict:
    """What an output must never overwrite: the run history's files and the data folder."""
    from ..store import default_db_path
    from ..store.files import history_files

    return {"protected_files": history_files(default_db_path()),
            "protected_folders": [data_dir or RunConfig().data_dir]}


def check_output(path: str, flag: str, data_dir: str | None = None) -> None:
    """A one-line error now, before minutes of work, when `path` could not or must not be written later
    (see facto.store.files.check_output_file); `data_dir`: the run's data folder (default ~/.facto/data)."""
    from ..store.files import check_output_file

    check_output_file(path, flag, **_protected(data_dir))


def write_output(path: str, flag: str, write: Callable[[IO], T], data_dir: str | None = None,
                 binary: bool = False) -> T:
    """`write(file)` into `path` whole or not at all, never onto the history or into the data folder;
    a failed write is a one-line error naming `flag` and `path`."""
    from ..store.files import write_output_file

    return write_output_file(path, write, flag, binary=binary, **_protected(data_dir))


# ----------------------------------------------------------------------------- RunConfig flags

def flag(name: str) -> str:
    """'--max-steps' for the field max_steps."""
    return "--" + name.replace("_", "-")


def escape(text: str) -> str:
    """argparse formats help with %: a literal percent sign must be doubled."""
    return text.replace("%", "%%")


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, from its Setting (help, allowed values, default)."""
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset, then apply flags")
    defaults = RunConfig()
    for name, s in SETTINGS.items():
        default = s.to_text(getattr(defaults, name))
        if s.kind == "bool":
            p.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=None,
                           help=escape(f"{s.help} (default {default})"))
            continue
        allowed = s.allowed() if s.kind in ("choice", "dataset") else []
        metavar = "{" + ",".join(map(str, allowed)) + "}" if allowed else s.kind.upper()
        p.add_argument(flag(name), default=None, metavar=metavar,
                       help=escape(f"{s.help} Allowed: {s.describe_allowed()} (default {default})."))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe (a preset first, then each flag given); UsageError if bad."""
    values = dict(PRESETS[args.preset]) if getattr(args, "preset", None) else {}
    try:
        for name, s in SETTINGS.items():
            given = getattr(args, name, None)
            if given is None:
                continue
            values[name] = given if s.kind == "bool" else s.parse_text(name, given)
        config = RunConfig(**values)
        if getattr(args, "data_dir", None) is not None:
            from ..store.files import check_path_names

            check_path_names(config.data_dir, "--data-dir")
        if config.device != "auto":
            from ..engine.devices import resolve_device

            resolve_device(config.device)
    except ValueError as exc:
        raise as_usage_error(exc) from None
    return config


def setting_list(text: str, name: str) -> list:
    """Comma-separated values of RunConfig field `name`, each validated as its flag would be."""
    try:
        return [SETTINGS[name].parse_text(name, t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise as_usage_error(exc) from None


def text_list(text: str, what: str, example: str) -> list[str]:
    """Comma-separated names (empty items dropped); UsageError when none is left."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"{what}={text!r} is not allowed: name one or more, comma separated, e.g. {example}")
    return items


def int_list(text: str, what: str, example: str) -> list[int]:
    """Comma-separated integers; UsageError naming the flag otherwise."""
    try:
        return [parse_int(t) for t in text_list(text, what, example)]
    except ValueError:
        raise UsageError(f"{what}={text!r} is not allowed: use integers, comma separated, e.g. {example}") from None


# ----------------------------------------------------------------------------- output

def open_history(no_store: bool):
    """The run history to store into (None with --no-store); UsageError when it can't take runs."""
    if no_store:
        return None
    from ..store import RunStore

    store = RunStore()
    if not store.writable:
        raise UsageError(f"the run history {store.path} is read-only, so this run could not be stored: "
                         "pass --no-store to train without storing it, or set FACTO_HOME to a writable folder")
    return store


def progress(message: str, quiet: bool = False) -> None:
    """A progress line on stderr (stdout holds only machine output)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


TABLE_WIDTH = 100  # columns a table fits by default (--wide: no limit)
MIN_WRAP = 10  # a wrapped column keeps at least this many characters per line
MAX_WORD = 20  # and its words whole up to this length


def add_wide_flag(p: argparse.ArgumentParser) -> None:
    """--wide: tables at their full width instead of fitting TABLE_WIDTH columns."""
    p.add_argument("--wide", action="store_true",
                   help=f"print tables at their full width (default: fit {TABLE_WIDTH} columns, long headers and "
                        "texts wrapped)")


def table_width(args: argparse.Namespace) -> int | None:
    """The width tables fit: TABLE_WIDTH, or None (no limit) with --wide."""
    return None if getattr(args, "wide", False) else TABLE_WIDTH


def text_table(rows: Sequence[dict], columns: Sequence[str], first_left: bool = False,
               digits: int | None = 2, width: int | None = TABLE_WIDTH, left: Sequence[str] = (),
               wrap: Sequence[str] = ()) -> str:
    """Rows as aligned columns: right-aligned, except the columns in `left` (and the first with
    `first_left`); floats with `digits` decimals (as they are with None), None as '-'.

    A table wider than `width` characters (None: no limit) is narrowed until it fits, losing
    nothing: long headers wrap at their spaces onto more lines, then the cells of the `wrap`
    columns (texts, never numbers) wrap onto more lines, the widest first, down to MIN_WRAP
    characters (words up to MAX_WORD stay whole), then one space separates the columns. What still does not fit
    is printed as it is."""
    import textwrap

    def fmt(v: Any) -> str:
        if isinstance(v, float) and digits is not None:
            return f"{v:.{digits}f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    values = [max((len(row[i]) for row in cells), default=0) for i in range(len(columns))]
    widths = [max(v, len(c)) for v, c in zip(values, columns)]

    gap = 2  # spaces between columns

    def too_wide() -> bool:
        return width is not None and sum(widths) + gap * (len(widths) - 1) > width

    # 1. headers onto more lines: the column that gains most first, each down to its widest value or word
    narrowest = [max(v, *(len(w) for w in c.split() or [""])) for v, c in zip(values, columns)]
    for i in sorted(range(len(columns)), key=lambda i: narrowest[i] - widths[i]):
        if not too_wide():
            break
        widths[i] = narrowest[i]
    # 2. the cells of the wrap columns onto more lines, one character off the widest at a time
    floors = {i: max(MIN_WRAP, *(len(w) for w in columns[i].split() or [""]),
                     *(min(len(w), MAX_WORD) for row in cells for w in row[i].split()))
              for i, c in enumerate(columns) if c in wrap}
    while too_wide():
        shrinkable = [i for i in floors if widths[i] > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    if too_wide():  # 3. one space between columns
        gap = 1

    def lines(text: str, w: int) -> list[str]:
        if len(text) <= w:
            return [text]
        return textwrap.wrap(text, w, break_on_hyphens=False) or [""]

    def block(texts: list[str], bottom: bool = False) -> list[str]:
        parts = [lines(t, w) for t, w in zip(texts, widths)]
        height = max(len(p) for p in parts)
        parts = [[""] * (height - len(p)) + p if bottom else p + [""] * (height - len(p)) for p in parts]
        aligned = [[t.ljust(w) if columns[i] in left or (i == 0 and first_left) else t.rjust(w) for t in p]
                   for i, (p, w) in enumerate(zip(parts, widths))]
        return [(" " * gap).join(column[k] for column in aligned).rstrip() for k in range(height)]

    out = block(list(columns), bottom=True)  # a wrapped header ends on the line above the values
    for row in cells:
        out += block(row)
    return "\n".join(out)


def local_time(seconds: float | None) -> str:
    """'2026-11-30 13:37' in this machine's time zone ('' when unknown)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else ""
