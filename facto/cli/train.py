"""`facto train`, `facto sweep` and `facto inspect`: runs and what a config stores, from RunConfig flags."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .args import (add_config_flags, check_output, config_from_args, open_history, progress, setting_list,
                   text_table, write_output)
from .program import check_ctrl_c, ctrl_c_closes

MB = 1e6


def add_parsers(sub) -> None:
    """train, sweep and inspect."""
    p = sub.add_parser("train", help="train baseline and Facto side by side",
                       description="Train the dense baseline and Facto side by side from the same weights; "
                                   "the run is stored in the history.")
    add_config_flags(p)
    p.add_argument("--variants", default="baseline,facto", choices=["baseline,facto", "baseline", "facto"],
                   metavar="baseline,facto|baseline|facto", help="which variants to train (default both)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (only that on stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-store", action="store_true", help="do not record the run in the history")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="ranks x bits (x update) grid",
                       description="The baseline once, then one short Facto run per rank x bits x update point.")
    add_config_flags(p)
    p.add_argument("--ranks", default="0.25,0.5", help="comma-separated ranks")
    p.add_argument("--bits-list", "--bits-grid", dest="bits_list", default="2,4,8", help="comma-separated bits")
    p.add_argument("--updates", default="core", help="comma-separated update modes")
    p.add_argument("--html", help="write the saving-vs-accuracy chart to this HTML file")
    p.add_argument("--json", action="store_true", help="print the points as JSON (only that on stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--no-store", action="store_true", help="do not record the runs in the history")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("inspect", help="factorization report and per-layer activation bytes",
                       description="What the config's Facto model is and stores for one batch, without training.")
    add_config_flags(p)
    p.add_argument("--json", action="store_true", help="print the report and bytes as JSON (only that on stdout)")
    p.set_defaults(func=cmd_inspect)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..engine import distributed
    from ..engine.events import FailureEvent, StartEvent, StepEvent, SummaryEvent
    from ..engine.recorder import record
    from ..engine.train import compare, too_short_note

    config = config_from_args(args)
    main_process = not distributed.init_from_env() or distributed.is_main_process()
    store = open_history(args.no_store or not main_process)
    quiet = args.quiet or args.json or not main_process
    bars: dict[str, tqdm] = {}
    summary = None
    total_steps = 0
    events = record(compare(config, variants=tuple(args.variants.split(","))), store)
    try:
        for event in events:
            check_ctrl_c()  # a Ctrl-C whose KeyboardInterrupt a library swallowed
            if isinstance(event, StartEvent):
                total_steps = event.total_steps
                where = f" | stored as run #{event.run_id}" if event.run_id is not None else ""
                progress(f"device: {event.device_name} | {config.model} on {config.dataset} "
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
    limit = config.max_steps if config.max_steps == total_steps else None  # the limit, not the epochs, stopped it
    note = too_short_note(summary.accuracy.get("baseline"), limit) if "facto" in summary.accuracy else None
    if note:  # a comparison too short to compare
        flags = "--max-steps, --epochs, --max-train" if limit else "--epochs, --max-train"
        print(f"note: {note} ({flags})", file=sys.stderr)
    return 0 if summary.status != "failed" else 1


def format_summary(s) -> str:
    """Baseline vs Facto as a small table."""
    rows = []
    for v in s.accuracy:
        base = s.act_bytes.get("baseline")
        rows.append({"": v, "accuracy %": s.accuracy[v], "act. memory MB": s.act_bytes[v] / MB,
                     "saving %": f"{100 * (1 - s.act_bytes[v] / base):.1f}" if base else None,
                     "step s": f"{s.step_seconds[v]:.3f}", "params": f"{s.params.get(v, 0):,}"})
    lines = [text_table(rows, ["", "accuracy %", "act. memory MB", "saving %", "step s", "params"])]
    for variant, reason in s.failures.items():
        lines.append(f"{variant} failed: {reason}")
    if s.accuracy_delta is not None:
        lines.append(f"Facto saves {s.saving_pct:.1f} % of activation memory at {s.accuracy_delta:+.2f} "
                     f"points accuracy ({s.status}, {s.wall_seconds:.1f} s)")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..engine.sweep import SweepPoint, SweepTracker, points_table, sweep

    base = config_from_args(args)
    ranks = setting_list(args.ranks, "rank")
    bits, updates = setting_list(args.bits_list, "bits"), setting_list(args.updates, "update")
    if args.html:
        check_output(args.html, "--html", base.data_dir)
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
                progress(f"[{event.index + 1}/{event.total}] {event.variant:8} rank={event.rank!s:<6} "
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
        print(text_table(rows, ["variant", "rank", "bits", "update", "accuracy", "accuracy_delta", "saving_pct",
                                "act_bytes", "step_seconds"]))
    if args.html:
        from .. import plots

        figure = plots.sweep_figure(tracker.points)
        write_output(args.html, "--html", lambda fh: figure.write_html(fh, include_plotlyjs=True), base.data_dir)
        progress(f"chart written to {args.html}", quiet)
    note = tracker.too_short()
    if note:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..memory.analysis import analyse_layers
    from ..method.factorize import format_report

    config = config_from_args(args)
    result = analyse_layers(config)
    weights = (f"weights freshly initialised from seed {config.seed}: the error is large on such noise-like "
               "weights; --warm-start-steps N trains the dense model first, then factorizes it")
    if args.json:
        document = {"config": config.to_dict(), "weights": weights, "report": result.report_rows(),
                    "layers": [{"layer": n, "dense_bytes": d, "facto_bytes": f} for n, d, f in result.rows()],
                    "dense_bytes": result.dense_total, "facto_bytes": result.facto_total,
                    "saving_pct": result.saving_pct}
        print(json.dumps(document, indent=2))
        return 0
    print(format_report(result.report))
    print(f"({weights})")
    rows = [{"layer": n, "dense MB": d / MB, "facto MB": f / MB} for n, d, f in result.rows()]
    rows.append({"layer": "TOTAL", "dense MB": result.dense_total / MB, "facto MB": result.facto_total / MB})
    print(f"\nstored activation bytes for one batch of {config.batch_size} "
          f"(dense fp32 vs Facto, bits={config.bits}):")
    print(text_table(rows, ["layer", "dense MB", "facto MB"]))
    print(f"saving: {result.saving_pct:.1f} %")
    return 0
