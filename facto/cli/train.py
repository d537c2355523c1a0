"""`facto train`, `facto sweep` and `facto inspect`: runs and what a config stores, from RunConfig flags."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .args import (TABLE_WIDTH, UsageError, add_config_flags, add_wide_flag, check_output, config_from_args,
                   open_history, setting_list, table_width, text_table, write_output)
from .program import check_ctrl_c, ctrl_c_closes, from_ctrl_c
from .progress import NotedStore, RunProgress, kept_message

MB = 1e6


def add_parsers(sub) -> None:
    """train, sweep and inspect."""
    p = sub.add_parser("train", help="train baseline and Facto side by side",
                       description="Train the dense baseline and Facto side by side from the same weights; "
                                   "the run is stored in the history.")
    add_config_flags(p)
    p.add_argument("--variants", default="baseline,facto", choices=["baseline,facto", "baseline", "facto"],
                   metavar="baseline,facto|baseline|facto", help="which variants to train (default both)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (only that on stdout; progress "
                                                       "stays on stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr (bars on a terminal, lines elsewhere)")
    p.add_argument("--no-store", action="store_true", help="do not record the run in the history")
    add_wide_flag(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="ranks x bits (x update) grid",
                       description="The baseline once, then one short Facto run per rank x bits x update point.")
    add_config_flags(p)
    p.add_argument("--ranks", default="0.25,0.5", help="comma-separated ranks")
    p.add_argument("--bits-list", "--bits-grid", dest="bits_list", default="2,4,8", help="comma-separated bits")
    p.add_argument("--updates", default="core", help="comma-separated update modes")
    p.add_argument("--html", help="write the saving-vs-accuracy chart to this HTML file")
    p.add_argument("--json", action="store_true", help="print the points as JSON (only that on stdout; progress "
                                                       "stays on stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--no-store", action="store_true", help="do not record the runs in the history")
    add_wide_flag(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("inspect", help="factorization report, spectra, accuracy before training, activation bytes",
                       description="What the config's Facto model is and stores for one batch, without training; "
                                   "each layer's spectrum and energy kept and the test accuracy before training for "
                                   "the chosen weights (--init; default: the latest completed run of the model on "
                                   "the dataset, else fresh weights).")
    add_config_flags(p)
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy before training (no data loaded)")
    p.add_argument("--json", action="store_true", help="print the report and bytes as JSON (only that on stdout)")
    add_wide_flag(p)
    p.set_defaults(func=cmd_inspect)


def cmd_train(args: argparse.Namespace) -> int:
    """Train, drawing the run on stderr; the summary (a table, or JSON with --json) on stdout."""
    from ..engine import distributed

    progress: RunProgress | None = None
    store: NotedStore | None = None
    events = None
    try:
        from ..engine.events import ModelsEvent, StartEvent, SummaryEvent
        from ..engine.recorder import record
        from ..engine.train import compare, too_short_note

        config = config_from_args(args)
        main_process = not distributed.init_from_env() or distributed.is_main_process()
        history = open_history(args.no_store or not main_process)
        store = NotedStore(history) if history is not None else None
        progress = RunProgress(quiet=args.quiet or not main_process)
        summary = start = None
        kept: dict[str, int] = {}
        kept_error: str | None = None
        total_steps = 0
        events = record(compare(config, variants=tuple(args.variants.split(","))), store)
        for event in started(events):
            check_ctrl_c()  # a Ctrl-C whose KeyboardInterrupt a library swallowed
            if isinstance(event, StartEvent):
                start, total_steps = event, event.total_steps
                where = f" | stored as run #{event.run_id}" if event.run_id is not None else ""
                progress.say(f"device: {event.device_name} | {config.model} on {config.dataset} "
                             f"({event.train_size} train / {event.test_size} test) | {event.total_steps} steps"
                             + where)
                for line in init_lines(event):
                    progress.say(line)
            elif isinstance(event, ModelsEvent):
                kept, kept_error = dict(event.kept), event.error
                if kept_error:  # the run is stored; only its models are lost
                    progress.line(f"note: {kept_error}")
            progress.add(event)
            if isinstance(event, SummaryEvent):
                summary = event
        progress.close()
        distributed.shutdown()  # every rank leaves the group together, before rank 0 writes its results
        if not main_process:
            return 0
        if args.json:
            print(json.dumps({**dataclasses.asdict(summary), "init": start.init if start else None,
                              "handover": start.handover if start else None, "kept_models": kept,
                              "kept_models_error": kept_error}, indent=2))
        else:
            print(format_summary(summary, table_width(args)))
            if kept:
                print(kept_line(kept, summary.run_id))
        limit = config.max_steps if config.max_steps == total_steps else None  # the limit, not the epochs, stopped it
        note = too_short_note(summary.accuracy.get("baseline"), limit) if "facto" in summary.accuracy else None
        if note:  # a comparison too short to compare
            flags = "--max-steps, --epochs, --max-train" if limit else "--epochs, --max-train"
            print(f"note: {note} ({flags})", file=sys.stderr)
        return 0 if summary.status != "failed" else 1
    except BaseException as error:
        if not from_ctrl_c(error):
            raise
        ctrl_c_closes()
        if events is not None:
            events.close()  # stores the run as interrupted with every step so far
        said = kept_message(store, args.no_store)
        if progress is not None:
            progress.line(said)  # above the bars, which `finally` closes
        else:
            print(said, file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
        distributed.shutdown()


def started(events):
    """`events`, with a start that does not fit (InitError: a missing, unreadable or mismatched
    `--init`) turned into the command line's one-line error; it comes before anything is stored."""
    from ..engine.starting import InitError

    try:
        yield from events
    except InitError as error:
        raise init_usage_error(error) from None


def init_usage_error(error: ValueError) -> UsageError:
    """An InitError as the command line's error, naming the flag."""
    text = str(error)
    return UsageError(text if text.startswith("init=") else f"--init: {text}")


def check_start(config) -> None:
    """UsageError when the config's starting weights (`--init`) cannot be used, as a run checks them."""
    from ..engine.data import dataset_info
    from ..engine.starting import InitError, check_init

    info = dataset_info(config.start_dataset)
    try:
        check_init(config, info.num_classes, info.in_channels)
    except InitError as error:
        raise init_usage_error(error) from None


def init_lines(start) -> list[str]:
    """What a run started from (unless random weights), how a warm-up on another dataset was handed
    over, and how Facto was fitted to those weights: 'started from run 12 (baseline): 8 tensors loaded'."""
    lines = []
    if start.init and (start.init.get("loaded") or start.init.get("adapted")):
        lines.append(start.init["line"])
    if start.handover:
        lines.append(start.handover["line"])
    if start.calibration:
        lines.append(start.calibration["line"])
    return lines


def kept_line(kept: dict[str, int], run_id: int | None) -> str:
    """'models kept with run 3: baseline 0.30 MB, facto 0.30 MB (facto runs export 3 --model FILE)'."""
    sizes = ", ".join(f"{v} {b / MB:.2f} MB" for v, b in kept.items())
    return f"models kept with run {run_id}: {sizes} (facto runs export {run_id} --model FILE)"


def format_summary(s, width: int | None = TABLE_WIDTH) -> str:
    """Baseline vs Facto as a small table (in `width` columns; None: no limit)."""
    rows = []
    for v in s.accuracy:
        base = s.act_bytes.get("baseline")
        rows.append({"": v, "accuracy %": s.accuracy[v], "act. memory MB": s.act_bytes[v] / MB,
                     "saving %": f"{100 * (1 - s.act_bytes[v] / base):.1f}" if base else None,
                     "step s": f"{s.step_seconds[v]:.3f}", "params": f"{s.params.get(v, 0):,}"})
    lines = [text_table(rows, ["", "accuracy %", "act. memory MB", "saving %", "step s", "params"], width=width)]
    for variant, reason in s.failures.items():
        lines.append(f"{variant} failed: {reason}")
    if s.accuracy_delta is not None:
        lines.append(f"Facto saves {s.saving_pct:.1f} % of activation memory at {s.accuracy_delta:+.2f} "
                     f"points accuracy ({s.status}, {s.wall_seconds:.1f} s)")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    """The grid, a line per finished point on stderr; the points (a table, or JSON with --json) on stdout."""
    progress: RunProgress | None = None
    store: NotedStore | None = None
    events = None
    tracker = None
    try:
        from ..engine.events import PhaseEvent
        from ..engine.sweep import SweepPoint, SweepStart, SweepTracker, points_table, sweep

        base = config_from_args(args)
        check_start(base)  # a start that does not fit is said before the sweep is stored
        ranks = setting_list(args.ranks, "rank")
        bits, updates = setting_list(args.bits_list, "bits"), setting_list(args.updates, "update")
        if args.html:
            check_output(args.html, "--html", base.data_dir)
        history = open_history(args.no_store)
        store = NotedStore(history) if history is not None else None
        progress = RunProgress(quiet=args.quiet, phases=False, leave=False)
        tracker = SweepTracker()  # the finished points, and whether they are too short to rank
        events = sweep(base, ranks, bits, updates, store=store)
        for event in events:
            check_ctrl_c()  # a Ctrl-C whose KeyboardInterrupt a library swallowed
            tracker.add(event)
            if isinstance(event, SweepStart):
                where = f"sweep #{event.sweep_id}" if event.sweep_id is not None else "sweep (not stored)"
                progress.say(f"{where}: {event.total} runs, the baseline and {event.total - 1} Facto settings")
            elif isinstance(event, PhaseEvent) and event.phase == "loading":  # a run of the grid begins
                progress.prefix = f"[{len(tracker.points) + 1}/{tracker.total}] "
            elif isinstance(event, SweepPoint):
                progress.say(point_line(event))
            progress.add(event)
        progress.close()
        progress.prefix = ""  # the sweep's own lines
        rows = points_table(tracker.points)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(text_table(rows, ["variant", "rank", "bits", "update", "accuracy", "accuracy_delta", "saving_pct",
                                    "act_bytes", "step_seconds"], width=table_width(args)))
        if args.html:
            from .. import plots

            figure = plots.sweep_figure(tracker.points)
            write_output(args.html, "--html", lambda fh: figure.write_html(fh, include_plotlyjs=True),
                         base.data_dir)
            progress.say(f"chart written to {args.html}")
        note = tracker.too_short()
        if note:
            print(f"note: {note}", file=sys.stderr)
        return 0
    except BaseException as error:
        if not from_ctrl_c(error):
            raise
        ctrl_c_closes()
        if events is not None:
            events.close()  # the run in progress is stored as interrupted
        done = f" after {len(tracker.points)} of {tracker.total} points" if tracker and tracker.total else ""
        said = kept_message(store, args.no_store, head="interrupted" + done)
        if progress is not None:
            progress.line(said)  # above the bars, which `finally` closes
        else:
            print(said, file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()


def point_line(point) -> str:
    """'baseline (dense fp32): acc=97.00% mem=1.23MB' / 'facto rank=0.5 bits=4 update=core: acc=... saving=...'."""
    acc = "-" if point.accuracy is None else f"{point.accuracy:.2f}"
    if point.variant == "baseline":
        return f"baseline (dense fp32): acc={acc}% mem={point.act_bytes / MB:.2f}MB"
    return (f"facto rank={point.rank} bits={point.bits} update={point.update}: acc={acc}% "
            f"mem={point.act_bytes / MB:.2f}MB saving={point.saving_pct:.1f}%")


def cmd_inspect(args: argparse.Namespace) -> int:
    import textwrap

    from ..engine.inspect_weights import FRESH_NOTE, inspect_weights
    from ..memory.analysis import analyse_layers

    config = config_from_args(args)
    result = analyse_layers(config)
    weights = inspect_weights(config, accuracy=not args.no_accuracy)  # an InitError: one line (facto.cli.main)
    fresh_words = f"fresh weights from seed {config.seed}"
    report_note = (f"the report's error column: {fresh_words}; the spectra below: {weights.weights.source}"
                   if weights.weights.trained else
                   f"{fresh_words}: the error is large on such noise-like weights; --init run:ID (or a finished run "
                   "of this model on this dataset in the history) inspects trained ones")
    if args.json:
        document = {"config": config.to_dict(), "weights": report_note, "report": result.report_rows(),
                    "layers": [{"layer": n, "dense_bytes": d, "facto_bytes": f} for n, d, f in result.rows()],
                    "dense_bytes": result.dense_total, "facto_bytes": result.facto_total,
                    "saving_pct": result.saving_pct, "spectrum": weights.to_dict()}
        print(json.dumps(document, indent=2))
        return 0
    width = table_width(args)

    def say(text: str) -> None:
        print("\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) if width else text)

    print(report_table(result.report, width))
    say(f"({report_note})")
    print()
    say(f"energy kept per factorized layer (share of squared singular values; out/in: one unfolding, both: the "
        f"factorized weight) for {weights.weights.source}" + ("" if weights.weights.trained else ":"))
    print(energy_table(weights, width))
    if not args.no_accuracy:
        print()
        say(accuracy_line(weights))
        print(text_table(accuracy_rows(weights), ["model", "test accuracy %"], width=width, left=("model",)))
    if not weights.weights.trained:
        say(f"note: {FRESH_NOTE}")
    rows = [{"layer": n, "dense MB": d / MB, "facto MB": f / MB} for n, d, f in result.rows()]
    rows.append({"layer": "TOTAL", "dense MB": result.dense_total / MB, "facto MB": result.facto_total / MB})
    print(f"\nstored activation bytes for one batch of {config.batch_size} "
          f"(dense fp32 vs Facto, bits={config.bits}):")
    print(text_table(rows, ["layer", "dense MB", "facto MB"], width=width, left=("layer",), wrap=("layer",)))
    print(f"saving: {result.saving_pct:.1f} %")
    return 0


def energy_table(inspection, width: int | None = TABLE_WIDTH) -> str:
    """Per factorized layer: ranks and energy kept (%), the chosen weights' and fresh ones'."""
    trained = inspection.weights.trained
    rows = [{"layer": r["layer"], "shape": r["shape"], "ranks": r["ranks"], "out %": 100 * r["energy_out"],
             "in %": 100 * r["energy_in"], "both %": 100 * r["energy"],
             "fresh both %": None if r["fresh_energy"] is None else 100 * r["fresh_energy"]}
            for r in inspection.energy_rows()]
    columns = ["layer", "shape", "ranks", "out %", "in %", "both %"] + (["fresh both %"] if trained else [])
    if not rows:
        return "no layer is factorized"
    return text_table(rows, columns, width=width, digits=1, left=("layer", "shape", "ranks"), wrap=("layer",))


def accuracy_line(inspection) -> str:
    """What the accuracy table measures."""
    return (f"test accuracy before any training ({inspection.test_size} test images, {inspection.config.dataset}); "
            f"BatchNorm statistics re-estimated on {inspection.calibration_batches} training batches, weights "
            "unchanged:")


def accuracy_rows(inspection) -> list[dict]:
    """Dense, factorized as is, after BatchNorm re-estimation (and after the refit) as table rows."""
    names = {"dense": "dense", "factorized": "factorized, as is", "bn": "factorized, BN re-estimated",
             "refit": "factorized, last factors refitted + BN"}
    return [{"model": names[k], "test accuracy %": v} for k, v in inspection.accuracy.items()]


def report_table(report, width: int | None = TABLE_WIDTH) -> str:
    """The factorization report (`facto.method.factorize.describe`) as a table in `width` columns,
    then how many layers were factorized."""
    rows = [{"layer": r.name, "kind": r.kind, "shape": "x".join(map(str, r.weight_shape)),
             "ranks": "" if r.ranks is None else f"{r.ranks[0]},{r.ranks[1]}",
             "params": f"{r.params_before}->{r.params_after}", "train": r.trainable_params,
             "error": "" if r.rel_error is None else f"{r.rel_error:.3f}", "note": r.reason or ""} for r in report]
    table = text_table(rows, ["layer", "kind", "shape", "ranks", "params", "train", "error", "note"], width=width,
                       left=("layer", "kind", "shape", "ranks", "note"), wrap=("note", "layer"))
    n = sum(r.kind == "factorized" for r in report)
    return table + "\n" + (f"{n} of {len(report)} layers factorized" if n else
                           "nothing was factorized: every layer stays dense")
