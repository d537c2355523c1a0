"""`facto runs`: the run history (list, show, export, rm)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .args import (UsageError, add_wide_flag, check_output, local_time, table_width, text_table, whole_number,
                   write_output)


def add_parsers(sub) -> None:
    p = sub.add_parser("runs", help="the run history: list | show ID | export ID | rm ID",
                       description="The run history (FACTO_HOME/runs.db, ~/.facto by default). In the list, "
                                   "sweep is the id of the sweep a run belongs to and accuracy % the test accuracy "
                                   "of the baseline, then of Facto.")
    p.add_argument("action", choices=["list", "show", "export", "rm"])
    p.add_argument("id", nargs="?", type=whole_number("ID", 1))
    p.add_argument("--output", "-o", help="CSV file for export (default stdout)")
    p.add_argument("--limit", type=whole_number("--limit", 1), default=50,
                   help="runs list: the newest this many (default 50)")
    p.add_argument("--json", action="store_true", help="runs list: a JSON list for scripts (show is JSON already)")
    add_wide_flag(p)
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from ..store import RunStore

    if args.action == "export" and args.output:
        check_output(args.output, "--output")  # never the history itself, before it is opened
    with RunStore() as store:
        if args.action == "list":
            runs = [{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status,
                     "created_at": r.created_at, "finished_at": r.finished_at,
                     "sweep_id": r.sweep_id, "sweep_point": r.sweep_point, "epochs": r.config.get("epochs"),
                     "saving_pct": (r.summary or {}).get("saving_pct"),
                     "accuracy": (r.summary or {}).get("accuracy") or {}} for r in store.list_runs(limit=args.limit)]
            if args.json:
                print(json.dumps(runs, indent=2))
                return 0
            rows = [{"id": r["id"], "started": local_time(r["created_at"]), "status": r["status"], "name": r["name"],
                     "sweep": sweep_cell(r), "epochs": r["epochs"], "saving %": r["saving_pct"],
                     "accuracy %": accuracy_cell(r["accuracy"])} for r in runs]
            columns = ["id", "started", "status", "name", "sweep", "epochs", "saving %", "accuracy %"]
            print(text_table(rows, columns, digits=1, width=table_width(args), left=("started", "status", "name"),
                             wrap=("name",)) if rows else "no runs stored yet")
        elif args.action == "show":
            r = store.get_run(_need_id(args))
            print(json.dumps(dataclasses.asdict(r), indent=2, default=str))
        elif args.action == "export":
            run_id = _need_id(args)
            store.get_run(run_id)  # an unknown run is said before any file is created
            if args.output:
                n = write_output(args.output, "--output", lambda fh: store.export_csv(run_id, fh))
            else:
                n = store.export_csv(run_id, sys.stdout)
            print(f"{n} rows exported", file=sys.stderr)
        elif args.action == "rm":
            if store.get_run(_need_id(args)).status == "running":  # as the History page decides
                raise UsageError(f"run {args.id} is still running: stop it first (Ctrl-C where it runs, or Stop "
                                 "in the app), then delete it")
            store.delete_run(args.id)
            print(f"run {args.id} deleted", file=sys.stderr)
    return 0


def sweep_cell(run: dict) -> str | None:
    """The sweep a run belongs to: its id; 'yes' for a sweep's run stored without one; None for no sweep."""
    if run["sweep_id"] is not None:
        return str(run["sweep_id"])
    return "yes" if run["kind"] == "sweep" else None


def accuracy_cell(accuracy: dict) -> str | None:
    """'97.0 → 95.1': test accuracy of the baseline, then of Facto (one value: the variant trained)."""
    shown = [v for v in ("baseline", "facto") if v in accuracy]
    if all(accuracy[v] is None for v in shown):
        return None
    return " → ".join("-" if accuracy[v] is None else f"{accuracy[v]:.1f}" for v in shown)


def _need_id(args: argparse.Namespace) -> int:
    if args.id is None:
        raise UsageError(f"runs {args.action} needs a run ID")
    return args.id
