"""What every `facto` subcommand shares: one-line user errors, the RunConfig flags, comma lists,
output paths, the run history to store into, progress on stderr and plain text tables."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..config import PRESETS, SETTINGS, RunConfig

DEFAULT = " (default: %(default)s)"  # appended to a flag's help


class UsageError(Exception):
    """A user mistake on the command line: printed as one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line), not the usage block and exit."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")


def as_usage_error(error: ValueError) -> UsageError:
    """The library's ValueError (it names the value and what is allowed) as the command line's error."""
    return UsageError(str(error))


def check_output_path(path: str, flag: str) -> None:
    """A UsageError now, before minutes of work, when a file could not be written at `path` later."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder: name a file in it")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{flag} {path} is not writable: name a file in a folder you can write to")


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
        return [int(t) for t in text_list(text, what, example)]
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


def text_table(rows: Sequence[dict], columns: Sequence[str], first_left: bool = False,
               digits: int | None = 2) -> str:
    """Columns aligned right (the first left with `first_left`); floats with `digits` decimals
    (as they are with None), None as '-'."""
    def fmt(v: Any) -> str:
        if isinstance(v, float) and digits is not None:
            return f"{v:.{digits}f}"
        return "-" if v is None else str(v)

    cells = [list(columns)] + [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) if first_left and i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in cells)


def local_time(seconds: float | None) -> str:
    """'2026-11-30 13:37' in this machine's time zone ('' when unknown)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else ""
