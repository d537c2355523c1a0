"""`facto runs`: the run history (list, show, export, rm) and the trained models kept with it."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys

from .args import (UsageError, add_wide_flag, check_output, local_time, table_width, text_table, whole_number,
                   write_output)


MODEL_VARIANTS = ("baseline", "facto")  # as facto.store.kept keeps them (not imported: the parser stays light)


def add_parsers(sub) -> None:
    p = sub.add_parser("runs", help="the run history: list | show ID | export ID | rm ID",
                       description="The run history (FACTO_HOME/runs.db, ~/.facto by default). In the list, "
                                   "sweep is the id of the sweep a run belongs to, accuracy % the test accuracy "
                                   "of the baseline, then of Facto, and kept MB the size of the trained models "
                                   "kept with the run (FACTO_HOME/models; runs export ID --model FILE copies one).")
    p.add_argument("action", choices=["list", "show", "export", "rm"])
    p.add_argument("id", nargs="?", type=whole_number("ID", 1))
    p.add_argument("--output", "-o", help="CSV file for export (default stdout, unless --model is given)")
    p.add_argument("--model", metavar="FILE", help="runs export: copy the run's kept trained model (a plain state "
                                                   "dict of the original architecture) to FILE")
    p.add_argument("--variant", choices=MODEL_VARIANTS, help="runs export --model: which model (default facto, "
                                                              "or the only one the run kept)")
    p.add_argument("--limit", type=whole_number("--limit", 1), default=50,
                   help="runs list: the newest this many (default 50)")
    p.add_argument("--json", action="store_true", help="runs list: a JSON list for scripts (show is JSON already)")
    add_wide_flag(p)
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from ..store import RunStore

    if args.action != "export" and (args.model or args.variant):
        raise UsageError(f"--model and --variant are for runs export, not runs {args.action}")
    if args.variant and not args.model:
        raise UsageError("--variant picks the model runs export --model FILE copies: name the FILE")
    if args.action == "export" and args.output:
        check_output(args.output, "--output")  # never the history itself, before it is opened
    if args.action == "export" and args.model:
        check_output(args.model, "--model")
    with RunStore() as store:
        if args.action == "list":
            listed = store.list_runs(limit=args.limit)
            runs = [{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status,
                     "created_at": r.created_at, "finished_at": r.finished_at,
                     "sweep_id": r.sweep_id, "sweep_point": r.sweep_point, "epochs": r.config.get("epochs"),
                     "saving_pct": (r.summary or {}).get("saving_pct"),
                     "accuracy": (r.summary or {}).get("accuracy") or {},
                     "kept_bytes": {v: m.bytes for v, m in store.kept_models(r.id).items()}} for r in listed]
            if args.json:
                print(json.dumps(runs, indent=2))
                return 0
            rows = [{"id": r["id"], "started": local_time(r["created_at"]), "status": r["status"], "name": r["name"],
                     "sweep": sweep_cell(r), "epochs": r["epochs"], "saving %": r["saving_pct"],
                     "accuracy %": accuracy_cell(r["accuracy"]),
                     "kept MB": sum(r["kept_bytes"].values()) / MB if r["kept_bytes"] else None} for r in runs]
            columns = ["id", "started", "status", "name", "sweep", "epochs", "saving %", "accuracy %", "kept MB"]
            print(text_table(rows, columns, digits=1, width=table_width(args), left=("started", "status", "name"),
                             wrap=("name",)) if rows else "no runs stored yet")
            if rows and any(r["kept_bytes"] for r in runs):
                total = sum(sum(r["kept_bytes"].values()) for r in runs)
                print(f"kept models of these runs: {total / MB:.1f} MB in {_folder(store)}", file=sys.stderr)
        elif args.action == "show":
            r = store.get_run(_need_id(args))
            kept = store.kept_models(r.id)
            shown = dataclasses.asdict(r)
            shown["kept_models"] = {v: {"file": str(m.path), "bytes": m.bytes} for v, m in kept.items()}
            if not kept:
                shown["kept_models_note"] = none_kept(r)
            print(json.dumps(shown, indent=2, default=str))
        elif args.action == "export":
            run_id = _need_id(args)
            run = store.get_run(run_id)  # an unknown run is said before any file is created
            if args.model:
                model = _chosen_model(run, store.kept_models(run_id), args.variant)
                _refuse_kept_file(args.model, _folder(store))
                copied = write_output(args.model, "--model", lambda fh: _copy(model.path, fh), binary=True)
                print(f"run {run_id}'s {model.variant} model ({copied / MB:.2f} MB) written to {args.model}",
                      file=sys.stderr)
                if not args.output:
                    return 0
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


MB = 1e6


def none_kept(run) -> str:
    """'no models kept: ...' with why (facto.store.kept.why_none_kept)."""
    from ..store.kept import why_none_kept

    return "no models kept: " + why_none_kept(run)


def _chosen_model(run, kept: dict, variant: str | None):
    """The kept model `runs export --model` copies; UsageError saying why there is none."""
    if not kept:
        raise UsageError(f"run {run.id} has no model to export: {none_kept(run).removeprefix('no models kept: ')}")
    if variant is None:
        variant = "facto" if "facto" in kept else next(iter(kept))
    if variant not in kept:
        failures = (run.summary or {}).get("failures") or {}
        trained = list((run.summary or {}).get("steps") or {})
        why = (f"its {variant} variant failed ({failures[variant]})" if variant in failures else
               f"it trained {' and '.join(trained)} only" if trained and variant not in trained else
               none_kept(run).removeprefix("no models kept: "))
        raise UsageError(f"run {run.id} kept no {variant} model: {why}; it kept {', '.join(kept)} "
                         f"(--variant {next(iter(kept))})")
    return kept[variant]


def _refuse_kept_file(path: str, folder) -> None:
    """UsageError when `path` lies in the history's models folder (a kept file must not be replaced)."""
    from ..store.files import inside_folder

    if inside_folder(os.path.expanduser(path), folder):
        raise UsageError(f"--model {path} is not allowed: it is inside the run history's models folder {folder}; "
                         "name a file elsewhere")


def _copy(source, fh) -> int:
    """Copy file `source` into the open binary file `fh`; the bytes copied."""
    with open(source, "rb") as src:
        shutil.copyfileobj(src, fh)
        return src.tell()


def _folder(store) -> str:
    from ..store.kept import models_folder

    return str(models_folder(store.path))


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
