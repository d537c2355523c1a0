"""Command-line plumbing shared by `facto` and its sub-tools: a user's mistake is one line, exit 2."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


class UsageError(Exception):
    """A user mistake on the command line: printed as one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line), not the usage block and exit."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")


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


def count(n: int, word: str) -> str:
    """'1 run', '3 runs' (the word's plural adds an s)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
