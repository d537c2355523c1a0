"""Command-line plumbing shared by `facto` and its sub-tools: a user's mistake is one line, exit 2."""
from __future__ import annotations

import argparse


class UsageError(Exception):
    """A user mistake on the command line: printed as one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a UsageError (one line), not the usage block and exit."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")
