"""facto.engine.recorder with a run history that goes away under a run: the run says so, exit non-zero."""
from __future__ import annotations

import os
import sqlite3

import pytest

from facto.cli.main import main
from facto.store.history import RunStore

TINY_FLAGS = ["--max-train", "64", "--max-test", "32", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
              "--quiet"]


def replace_with_another_history(path: str) -> None:
    other = f"{path}.other"
    sqlite3.connect(other).close()
    os.replace(other, path)


@pytest.mark.parametrize("what, sabotage", [("deleted", os.remove), ("replaced by another file",
                                                                      replace_with_another_history)])
def test_a_run_whose_history_goes_away_says_so_and_fails(tmp_path, monkeypatch, capsys, what, sabotage):
    """runs.db deleted or replaced while a run trained: SQLite went on writing to the old file,
    which nobody can open again, and the run ended "completed", exit 0, stored nowhere."""
    monkeypatch.setenv("FACTO_HOME", str(tmp_path))
    db = tmp_path / "runs.db"
    log_layers = RunStore.log_layers

    def then_sabotage(self, *args, **kwargs):  # right after the run is stored, before its steps
        log_layers(self, *args, **kwargs)
        if db.exists() and not getattr(self, "sabotaged", False):
            self.sabotaged = True
            sabotage(str(db))

    monkeypatch.setattr(RunStore, "log_layers", then_sabotage)
    code = main(["train", *TINY_FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"error: run history {db} cannot be used: it was {what} "), err
