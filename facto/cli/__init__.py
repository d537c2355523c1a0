"""The `facto` command line: one parser tree (`main`), the shared argument plumbing (`args`) and
Ctrl-C handling for the program (`program`)."""
from .main import main

__all__ = ["main"]
