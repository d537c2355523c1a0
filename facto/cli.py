"""`python -m facto ...`: train, sweep, inspect, runs, bench — headless, for scripts and CI.

User mistakes print one line to stderr and exit 2, without a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from .factorize import rank_from_text as parse_rank
from .train import PRESETS, RunConfig

MB = 1e6


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        raise UsageError(f"{self.prog}: {message}")


def parse_bits(text: str) -> int | None:
    """'none' / 'fp32' -> None, else an int (validated later by RunConfig)."""
    if text.lower() in ("none", "fp32", "off"):
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"bits={text!r} is not allowed: use none, 1..8 or 16") from None


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "0") else int(text)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (defaults come from a preset or RunConfig)."""
    d = RunConfig()
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset, then apply flags")
    p.add_argument("--model", help=f"model name (default {d.model})")
    p.add_argument("--dataset", help=f"dataset (default {d.dataset})")
    p.add_argument("--rank", type=parse_rank, help="fraction, int, energy:F or vbmf (default %s)" % d.rank)
    p.add_argument("--update", help="first|core|last|all|cycle (default %s)" % d.update)
    p.add_argument("--bits", type=parse_bits, default=argparse.SUPPRESS, help="none, 1..8 or 16 (default %s)" % d.bits)
    p.add_argument("--block", type=int, help=f"values per quantization block (default {d.block})")
    p.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute BN inputs in backward instead of storing them")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--max-steps", type=_optional_int, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"default {d.lr}")
    p.add_argument("--optimizer", help=f"adam|adamw|sgd (default {d.optimizer})")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--schedule", help=f"onecycle|cosine|constant (default {d.schedule})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--device", help="auto|cpu|cuda|mps (default auto)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (0: each epoch)")
    p.add_argument("--warm-start-steps", type=int, help="train dense N steps, then factorize that model")
    p.add_argument("--cycle-every", type=int, help="with --update cycle: switch factor every N steps (0: each epoch)")
    p.add_argument("--data-dir", help=f"where torchvision datasets live (default {d.data_dir})")
    p.add_argument("--download", action="store_true", default=None, help="download the dataset if missing")
    p.add_argument("--max-train", type=_optional_int, help="use a fixed subset of N training images")
    p.add_argument("--max-test", type=_optional_int, help="use a fixed subset of N test images")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values = dict(PRESETS[args.preset]) if args.preset else {}
    for f in dataclasses.fields(RunConfig):
        v = getattr(args, f.name, None) if f.name != "bits" else getattr(args, "bits", "unset")
        if f.name == "bits":
            if v != "unset":
                values["bits"] = v
        elif v is not None:
            values[f.name] = v
    return RunConfig(**values)


# ----------------------------------------------------------------------------- commands

def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .store import RunStore
    from .train import StartEvent, StepEvent, SummaryEvent, compare

    from . import distributed

    config = config_from_args(args)
    main_process = not distributed.init_from_env() or distributed.is_main_process()
    store = None if (args.no_store or not main_process) else RunStore()
    quiet = args.quiet or not main_process
    bars: dict[str, tqdm] = {}
    summary = None
    events = compare(config, store=store, variants=tuple(args.variants.split(",")))
    try:
        for event in events:
            if isinstance(event, StartEvent):
                if not args.json and main_process:
                    print(f"device: {event.device_name} | {config.model} on {config.dataset} "
                          f"({event.train_size} train / {event.test_size} test) | {event.total_steps} steps",
                          file=sys.stderr)
                for i, name in enumerate(event.params):
                    bars[name] = tqdm(total=event.total_steps, desc=f"{name:>8}", position=i, leave=True,
                                      disable=args.json or quiet, file=sys.stderr)
            elif isinstance(event, StepEvent) and event.variant in bars:
                bars[event.variant].update(1)
                bars[event.variant].set_postfix(loss=f"{event.loss:.3f}", mem=f"{event.act_bytes / MB:.1f}MB")
            elif isinstance(event, SummaryEvent):
                summary = event
    except KeyboardInterrupt:
        events.close()
        print("interrupted: the partial run is stored as 'interrupted'", file=sys.stderr)
        return 130
    finally:
        for bar in bars.values():
            bar.close()
    if not main_process:
        return 0
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
    else:
        print(format_summary(summary))
    return 0


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
    if s.accuracy_delta is not None:
        lines.append(f"Facto saves {s.saving_pct:.1f} % of activation memory at {s.accuracy_delta:+.2f} "
                     f"points accuracy ({s.status}, {s.wall_seconds:.1f} s)")
    return "\n".join(lines)


def _split(text: str, parse) -> list:
    return [parse(t) for t in text.split(",") if t.strip()]


def cmd_sweep(args: argparse.Namespace) -> int:
    from .store import RunStore
    from .sweep import SweepPoint, points_table, sweep

    base = config_from_args(args)
    store = None if args.no_store else RunStore()
    points = []
    for event in sweep(base, _split(args.ranks, parse_rank), _split(args.bits_list, parse_bits),
                       _split(args.updates, str), store=store):
        if isinstance(event, SweepPoint):
            points.append(event)
            acc = "-" if event.accuracy is None else f"{event.accuracy:.2f}"
            print(f"[{event.index + 1}/{event.total}] {event.variant:8} rank={event.rank!s:<6} "
                  f"bits={event.bits!s:<4} update={event.update:<5} acc={acc}% "
                  f"mem={event.act_bytes / MB:.2f}MB saving={event.saving_pct:.1f}%", flush=True)
    rows = points_table(points)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, ["variant", "rank", "bits", "update", "accuracy", "accuracy_delta", "saving_pct",
                            "act_bytes", "step_seconds"]))
    if args.html:
        from . import plots

        plots.sweep_figure(points).write_html(args.html, include_plotlyjs=True)
        print(f"chart written to {args.html}", file=sys.stderr)
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
    import torch

    from .data import dataset_info
    from .factorize import describe, factorize, format_report
    from .models import create_model
    from .train import layer_bytes

    config = config_from_args(args)
    info = dataset_info(config.dataset)
    torch.manual_seed(config.seed)
    dense = create_model(config.model, info.num_classes, info.in_channels)
    extra = {"recompute": True} if config.recompute else {}
    facto_model = factorize(dense, rank=config.rank, update="core" if config.update == "cycle" else config.update,
                            **extra)
    print(format_report(describe(facto_model)))
    x = torch.randn(config.batch_size, info.in_channels, info.image_size, info.image_size)
    dense_bytes = layer_bytes(dense, x, None, config.block)
    facto_bytes = layer_bytes(facto_model, x, config.bits, config.block)
    names = list(dict.fromkeys([*dense_bytes, *facto_bytes]))
    rows = [{"layer": n, "dense MB": dense_bytes.get(n, 0) / MB, "facto MB": facto_bytes.get(n, 0) / MB}
            for n in names]
    total_d, total_f = sum(dense_bytes.values()), sum(facto_bytes.values())
    rows.append({"layer": "TOTAL", "dense MB": total_d / MB, "facto MB": total_f / MB})
    print(f"\nstored activation bytes for one batch of {config.batch_size} "
          f"(dense fp32 vs Facto, bits={config.bits}):")
    print(_table(rows, ["layer", "dense MB", "facto MB"]))
    print(f"saving: {100 * (1 - total_f / total_d):.1f} %")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .store import RunStore

    with RunStore() as store:
        if args.action == "list":
            rows = [{"id": r.id, "status": r.status, "name": r.name,
                     "saving %": (r.summary or {}).get("saving_pct"),
                     "facto acc": ((r.summary or {}).get("accuracy") or {}).get("facto"),
                     "baseline acc": ((r.summary or {}).get("accuracy") or {}).get("baseline")}
                    for r in store.list_runs(limit=args.limit)]
            print(_table(rows, ["id", "status", "name", "saving %", "baseline acc", "facto acc"]) if rows
                  else "no runs stored yet")
        elif args.action == "show":
            r = store.get_run(_need_id(args))
            print(json.dumps(dataclasses.asdict(r), indent=2, default=str))
        elif args.action == "export":
            n = store.export_csv(_need_id(args), args.output or sys.stdout)
            print(f"{n} rows exported", file=sys.stderr)
        elif args.action == "rm":
            store.delete_run(_need_id(args))
            print(f"run {args.id} deleted", file=sys.stderr)
    return 0


def _need_id(args) -> int:
    if args.id is None:
        raise UsageError(f"runs {args.action} needs a run ID")
    return args.id


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m facto", description="Facto: memory-efficient CNN training.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train baseline and Facto side by side")
    add_config_flags(p)
    p.add_argument("--variants", default="baseline,facto", choices=["baseline,facto", "baseline", "facto"])
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-store", action="store_true", help="do not record the run in the history")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sweep", help="ranks x bits (x update) grid")
    add_config_flags(p)
    p.add_argument("--ranks", default="0.25,0.5", help="comma-separated ranks")
    p.add_argument("--bits-list", "--bits-grid", dest="bits_list", default="2,4,8", help="comma-separated bits")
    p.add_argument("--updates", default="core", help="comma-separated update modes")
    p.add_argument("--html", help="write the saving-vs-accuracy chart to this HTML file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-store", action="store_true")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("inspect", help="factorization report and per-layer activation bytes")
    add_config_flags(p)
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("runs", help="the run history: list | show ID | export ID | rm ID")
    p.add_argument("action", choices=["list", "show", "export", "rm"])
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--output", "-o", help="CSV file for export (default stdout)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_runs)
    sub.add_parser("bench", help="the method comparison benchmark (see python -m facto bench --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:  # its own parser: every flag passes through
            from .bench import main as bench_main

            return bench_main(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, ValueError) as exc:  # includes DataNotFoundError, RunNotFoundError
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
