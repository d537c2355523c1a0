"""`facto ...` / `python -m facto ...`: one parser tree for every subcommand, headless.

train, sweep and inspect (`facto.cli.train`), runs (`facto.cli.runs`), plan (`facto.cli.plan`),
bench and gpu-bench (`facto.cli.bench`), audit (`facto.cli.audit`). User mistakes (a bad flag
value, data not on disk, an unknown run, an unusable FACTO_HOME) print one line to stderr and
exit 2, without a traceback; real bugs keep their traceback. Machine output (--json, CSV to
stdout) is the only thing on stdout; progress goes to stderr. A Ctrl-C ends with one line saying
what was stored (exit 130).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import audit, bench, plan, runs, train
from .args import OneLineParser, UsageError
from .program import NOTHING_STORED, ctrl_c_closes, from_ctrl_c

COMMANDS = (train, runs, plan, bench, audit)  # each adds its subcommands to the tree


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix (mapped to one line + exit 2)."""
    from ..engine.data import DataNotFoundError
    from ..engine.models import ModelInputError
    from ..engine.starting import InitError
    from ..engine.train import RunTooLongError
    from ..store import RunNotFoundError, StoreUnavailableError
    from ..store.files import FilePathError

    return (UsageError, DataNotFoundError, ModelInputError, RunNotFoundError, StoreUnavailableError, FilePathError,
            RunTooLongError, InitError)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: `facto`, its --version, and every subcommand."""
    from .. import __version__

    parser = OneLineParser(prog="facto", description="Facto: memory-efficient CNN training you can see.")
    parser.add_argument("--version", action="version", version=f"facto {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `facto` program (argv None: the command line) or one command from Python (a list)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:
            raise UsageError(f"facto {args.command}: unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except _user_errors() as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a command stored anything (train and sweep say what they stored)
        ctrl_c_closes()
        print(NOTHING_STORED, file=sys.stderr)
        return 130
    except ImportError as exc:  # a lazy import interrupted by Ctrl-C (a C extension turns it into this)
        if not from_ctrl_c(exc):
            raise
        ctrl_c_closes()
        print(NOTHING_STORED, file=sys.stderr)
        return 130
    except BrokenPipeError:  # `facto runs export 1 | head -1`: the reader left, not an error
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at devnull so Python's exit flush doesn't fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
