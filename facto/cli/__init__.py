"""The `facto` command line: one parser tree (`main`), the shared argument plumbing (`args`) and
Ctrl-C handling for the program (`program`, imported first: a Ctrl-C while the rest loads ends
with one line)."""
from .program import quiet_start_up as _quiet_start_up

with _quiet_start_up():
    from .main import main

__all__ = ["main"]
