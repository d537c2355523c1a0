"""`facto ...` / `python -m facto ...`: train, sweep, inspect, plan, runs, bench — headless.

User mistakes (a bad flag value, data not on disk, an unknown run, an unusable FACTO_HOME)
print one line to stderr and exit 2, without a traceback; real bugs keep their traceback.
Machine output (--json, CSV to stdout) is the only thing on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Sequence

from .config import PRESETS, SETTINGS, RunConfig
from .program import check_ctrl_c, ctrl_c_closes, from_ctrl_c
from .usage import OneLineParser, UsageError, check_output_path

MB = 1e6


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix (mapped to one line + exit 2)."""
    from .data import DataNotFoundError
    from .models import ModelInputError
    from .store import RunNotFoundError, StoreUnavailableError

    return (UsageError, DataNotFoundError, ModelInputError, RunNotFoundError, StoreUnavailableError)


# ----------------------------------------------------------------------------- config flags

def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, from its Setting (help, allowed values, default)."""
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset, then apply flags")
    defaults = RunConfig()
    for name, s in SETTINGS.items():
        default = s.to_text(getattr(defaults, name))
        if s.kind == "bool":
            p.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=None,
                           help=_escape(f"{s.help} (default {default})"))
            continue
        allowed = s.allowed() if s.kind in ("choice", "dataset") else []
        metavar = "{" + ",".join(map(str, allowed)) + "}" if allowed else s.kind.upper()
        p.add_argument(flag(name), default=None, metavar=metavar,
                       help=_escape(f"{s.help} Allowed: {s.describe_allowed()} (default {default})."))


def _escape(text: str) -> str:
    """argparse formats help with %: a literal percent sign must be doubled."""
    return text.replace("%", "%%")


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
            from .train import resolve_device

            resolve_device(config.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return config


def _list(text: str, name: str) -> list:
    """Comma-separated values of RunConfig field `name`, each validated."""
    try:
        return [SETTINGS[name].parse_text(name, t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_history(no_store: bool):
    """The run history to store into (None with --no-store); UsageError when it can't take runs."""
    if no_store:
        return None
    from .store import RunStore

    store = RunStore()
    if not store.writable:
        raise UsageError(f"the run history {store.path} is read-only, so this run could not be stored: "
                         "pass --no-store to train without storing it, or set FACTO_HOME to a writable folder")
    return store


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- commands

def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import distributed
    from .events import FailureEvent, StartEvent, StepEvent, SummaryEvent
    from .recorder import record
    from .train import compare, too_short_note

    config = config_from_args(args)
    main_process = not distributed.init_from_env() or distributed.is_main_process()
    store = open_history(args.no_store or not main_process)
    quiet = args.quiet or args.json or not main_process
    bars: dict[str, tqdm] = {}
    summary = None
    events = record(compare(config, variants=tuple(args.variants.split(","))), store)
    try:
        for event in events:
            check_ctrl_c()  # a Ctrl-C whose KeyboardInterrupt a library swallowed
            if isinstance(event, StartEvent):
                where = f" | stored as run #{event.run_id}" if event.run_id is not None else ""
                _progress(f"device: {event.device_name} | {config.model} on {config.dataset} "
                          f"({event.train_size} train / {event.test_size} test) | {event.total_steps} steps"
                          + where, quiet)
                for i, name in enumerate(event.params):
                    bars[name] = tqdm(total=event.total_steps, desc=f"{name:>8}", position=i, leave=True,
                                      disable=quiet, file=sys.stderr)
            elif isinstance(event, StepEvent) and event.variant in bars:
                bars[event.variant].update(1)
                bars[event.variant].set_postfix(loss=f"{event.loss:.3f}", mem=f"{event.act_bytes / MB:.1f}MB")
            elif isinstance(event, FailureEvent):
                print(f"{event.variant} stopped: {event.reason}", file=sys.stderr)
            elif isinstance(event, SummaryEvent):
                summary = event
    except KeyboardInterrupt:
        ctrl_c_closes()
        events.close()
        print("interrupted: the partial run is stored as 'interrupted'", file=sys.stderr)
        return 130
    finally:
        for bar in bars.values():
            bar.close()
        distributed.shutdown()
    if not main_process:
        return 0
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
    else:
        print(format_summary(summary))
    note = (too_short_note(summary.accuracy.get("baseline"), config.max_steps)
            if "facto" in summary.accuracy else None)
    if note:  # a comparison too short to compare
        flags = "--max-steps, --epochs, --max-train" if config.max_steps else "--epochs, --max-train"
        print(f"note: {note} ({flags})", file=sys.stderr)
    return 0 if summary.status != "failed" else 1


def format_summary(s) -> str:
    """Baseline vs Facto as a small table."""
    rows = [("", "accuracy %", "act. memory MB", "saving %", "step s", "params")]
    for v in s.accuracy:
        acc = "-" if s.accuracy[v] is None else f"{s.accuracy[v]:.2f}"
        base = s.act_bytes.get("baseline")
        saving = f"{100 * (1 - s.act_bytes[v] / base):.1f}" if base else "-"
        rows.append((v, acc, f"{s.act_bytes[v] / MB:.2f}", saving, f"{s.step_seconds[v]:.3f}",
                     f"{s.params.get(v, 0):,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    for variant, reason in s.failures.items():
        lines.append(f"{variant} failed: {reason}")
    if s.accuracy_delta is not None:
        lines.append(f"Facto saves {s.saving_pct:.1f} % of activation memory at {s.accuracy_delta:+.2f} "
                     f"points accuracy ({s.status}, {s.wall_seconds:.1f} s)")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepPoint, SweepTracker, points_table, sweep

    base = config_from_args(args)
    ranks, bits, updates = _list(args.ranks, "rank"), _list(args.bits_list, "bits"), _list(args.updates, "update")
    if args.html:
        check_output_path(args.html, "--html")
    store = open_history(args.no_store)
    quiet = args.quiet or args.json
    tracker = SweepTracker()  # the finished points, and whether they are too short to rank
    events = sweep(base, ranks, bits, updates, store=store)
    try:
        for event in events:
            check_ctrl_c()  # a Ctrl-C whose KeyboardInterrupt a library swallowed
            tracker.add(event)
            if isinstance(event, SweepPoint):
                acc = "-" if event.accuracy is None else f"{event.accuracy:.2f}"
                _progress(f"[{event.index + 1}/{event.total}] {event.variant:8} rank={event.rank!s:<6} "
                          f"bits={event.bits!s:<4} update={event.update:<5} acc={acc}% "
                          f"mem={event.act_bytes / MB:.2f}MB saving={event.saving_pct:.1f}%", quiet)
    except KeyboardInterrupt:
        ctrl_c_closes()
        events.close()
        print(f"interrupted after {len(tracker.points)} points: finished runs are stored, the current one as "
              "'interrupted'", file=sys.stderr)
        return 130
    rows = points_table(tracker.points)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, ["variant", "rank", "bits", "update", "accuracy", "accuracy_delta", "saving_pct",
                            "act_bytes", "step_seconds"]))
    if args.html:
        from . import plots

        plots.sweep_figure(tracker.points).write_html(args.html, include_plotlyjs=True)
        _progress(f"chart written to {args.html}", quiet)
    note = tracker.too_short()
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}"
        return "-" if v is None else str(v)

    cells = [columns] + [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .analysis import analyse_layers
    from .factorize import format_report

    config = config_from_args(args)
    result = analyse_layers(config)
    print(format_report(result.report))
    print(f"(weights freshly initialised from seed {config.seed}: the error is large on such noise-like weights; "
          "--warm-start-steps N trains the dense model first, then factorizes it)")
    rows = [{"layer": n, "dense MB": d / MB, "facto MB": f / MB} for n, d, f in result.rows()]
    rows.append({"layer": "TOTAL", "dense MB": result.dense_total / MB, "facto MB": result.facto_total / MB})
    print(f"\nstored activation bytes for one batch of {config.batch_size} "
          f"(dense fp32 vs Facto, bits={config.bits}):")
    print(_table(rows, ["layer", "dense MB", "facto MB"]))
    print(f"saving: {result.saving_pct:.1f} %")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .store import RunStore

    if args.limit < 1:
        raise UsageError(f"--limit={args.limit} is not allowed: use an integer >= 1")
    with RunStore() as store:
        if args.action == "list":
            runs = [{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status,
                     "created_at": r.created_at, "finished_at": r.finished_at,
                     "saving_pct": (r.summary or {}).get("saving_pct"),
                     "accuracy": (r.summary or {}).get("accuracy") or {}} for r in store.list_runs(limit=args.limit)]
            if args.json:
                print(json.dumps(runs, indent=2))
                return 0
            rows = [{"id": r["id"], "started": _local_time(r["created_at"]), "status": r["status"], "name": r["name"],
                     "saving %": r["saving_pct"], "baseline acc": r["accuracy"].get("baseline"),
                     "facto acc": r["accuracy"].get("facto")} for r in runs]
            print(_table(rows, ["id", "started", "status", "name", "saving %", "baseline acc", "facto acc"])
                  if rows else "no runs stored yet")
        elif args.action == "show":
            r = store.get_run(_need_id(args))
            print(json.dumps(dataclasses.asdict(r), indent=2, default=str))
        elif args.action == "export":
            run_id = _need_id(args)
            store.get_run(run_id)  # an unknown run is said before any file is created
            if args.output:
                try:
                    with open(args.output, "w", newline="", encoding="utf-8") as fh:
                        n = store.export_csv(run_id, fh)
                except OSError as exc:  # a missing folder, a folder, no permission
                    raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
            else:
                n = store.export_csv(run_id, sys.stdout)
            print(f"{n} rows exported", file=sys.stderr)
        elif args.action == "rm":
            store.delete_run(_need_id(args))
            print(f"run {args.id} deleted", file=sys.stderr)
    return 0


def _local_time(seconds: float | None) -> str:
    """'2026-11-30 13:37' in this machine's time zone ('' when unknown)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else ""


def _need_id(args) -> int:
    if args.id is None:
        raise UsageError(f"runs {args.action} needs a run ID")
    return args.id


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="facto", description="Facto: memory-efficient CNN training.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("train", help="train baseline and Facto side by side")
    add_config_flags(p)
    p.add_argument("--variants", default="baseline,facto", choices=["baseline,facto", "baseline", "facto"],
                   metavar="baseline,facto|baseline|facto", help="which variants to train (default both)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (only that on stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-store", action="store_true", help="do not record the run in the history")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sweep", help="ranks x bits (x update) grid")
    add_config_flags(p)
    p.add_argument("--ranks", default="0.25,0.5", help="comma-separated ranks")
    p.add_argument("--bits-list", "--bits-grid", dest="bits_list", default="2,4,8", help="comma-separated bits")
    p.add_argument("--updates", default="core", help="comma-separated update modes")
    p.add_argument("--html", help="write the saving-vs-accuracy chart to this HTML file")
    p.add_argument("--json", action="store_true", help="print the points as JSON (only that on stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--no-store", action="store_true", help="do not record the runs in the history")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("inspect", help="factorization report and per-layer activation bytes")
    add_config_flags(p)
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("runs", help="the run history: list | show ID | export ID | rm ID")
    p.add_argument("action", choices=["list", "show", "export", "rm"])
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--output", "-o", help="CSV file for export (default stdout)")
    p.add_argument("--limit", type=int, default=50, help="runs list: the newest this many (default 50)")
    p.add_argument("--json", action="store_true", help="runs list: a JSON list for scripts (show is JSON already)")
    p.set_defaults(func=cmd_runs)
    sub.add_parser("bench", help="the method comparison benchmark (see facto bench --help)")
    sub.add_parser("plan", help="largest batch per variant under a memory budget (see facto plan --help)")
    return parser


def _delegate(argv: list[str]) -> int | None:
    """`bench` and `plan` have their own parsers: every flag passes through."""
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["plan"]:
        from .plan import main as plan_main

        return plan_main(argv[1:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """The `facto` program (argv None: the command line) or one command from Python (a list)."""
    return _run(list(sys.argv[1:] if argv is None else argv))


def _run(argv: list[str]) -> int:
    try:
        code = _delegate(argv)
        if code is not None:
            return code
        args = build_parser().parse_args(argv)
        return args.func(args)
    except _user_errors() as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # during start-up: nothing was stored yet
        ctrl_c_closes()
        print("interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # a lazy import interrupted by Ctrl-C (a C extension turns it into this)
        if not from_ctrl_c(exc):
            raise
        ctrl_c_closes()
        print("interrupted", file=sys.stderr)
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
