"""`facto bench` (the methods compared on one machine) and `facto gpu-bench` (what a GPU user feels)."""
from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .args import (DEFAULT, TABLE_WIDTH, UsageError, add_wide_flag, check_output, int_list, progress, table_width,
                   text_list, text_table, whole_number, write_output)


def add_parsers(sub) -> None:
    from ..config import INT_MAX, RunConfig

    p = sub.add_parser("bench", help="the method comparison benchmark",
                       description="Dense, checkpointing, compression only (ActNN-style), Facto and Facto + "
                                   "recompute on the same model, data and seeds: stored bytes, step time, accuracy.")
    p.add_argument("--models", default="simple_cnn,resnet20", help="comma list of models" + DEFAULT)
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds" + DEFAULT)
    p.add_argument("--epochs", type=whole_number("--epochs", maximum=None), default=RunConfig().epochs,
                   help="training epochs per seed" + DEFAULT)
    p.add_argument("--batch", type=whole_number("--batch", maximum=None), default=64,
                   help="batch for memory and step time" + DEFAULT)
    p.add_argument("--rank", default="0.5", help="rank of the Facto methods, as in facto train" + DEFAULT)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps" + DEFAULT)
    p.add_argument("--no-train", action="store_true", help="memory and speed only")
    p.add_argument("--json", action="store_true", help="print only a JSON document on stdout")
    p.add_argument("--html", help="write the saving-vs-accuracy chart here")
    p.add_argument("--max-batch-gb", type=float, default=None,
                   help="also measure the largest batch that trains under this memory cap (GB; needs CUDA): "
                        "torchvision resnet18 and resnet50 at 3x224x224")
    add_table_flags(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gpu-bench", help="step time, kernel launches and peak memory on a GPU",
                       description="What a GPU user feels: step time vs dense, kernel launches per step, peak "
                                   "memory, the largest batch under a memory cap, the app's default comparison. "
                                   "Without CUDA it runs small and says n/a where a GPU is needed.")
    p.add_argument("--max-batch-gb", type=float, default=4.0, help="memory cap for the largest-batch search" + DEFAULT)
    p.add_argument("--rounds", type=whole_number("--rounds", 1, INT_MAX), default=10,
                   help="timed steps per variant (median)" + DEFAULT)
    p.add_argument("--small", action="store_true", help="small models and batches (what runs without a GPU)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: steps,maxbatch,app")
    p.add_argument("--out", help="also write the tables (markdown) and rows (JSON) into this folder")
    p.add_argument("--json", action="store_true", help="print only a JSON document on stdout")
    add_table_flags(p)
    p.set_defaults(func=cmd_gpu_bench)


def add_table_flags(p: argparse.ArgumentParser) -> None:
    """--wide, and --markdown for the tables as markdown (as docs/benchmarks.md shows them)."""
    add_wide_flag(p)
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown, at their full width")


def rows_table(rows, width: int | None = TABLE_WIDTH) -> str:
    """Dataclass rows as a text table in `width` columns (None: no limit): a column per field ('_' read as a
    space), None as n/a, floats to 3 significant digits (whole above 100), text columns left and wrapped."""
    from dataclasses import asdict

    if not rows:
        return "(no rows)"
    data = [asdict(r) for r in rows]
    names = {c: c.replace("_", " ") for c in data[0]}

    def cell(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return v

    text = [names[c] for c in names if any(isinstance(d[c], str) for d in data)]
    return text_table([{names[c]: cell(v) for c, v in d.items()} for d in data], list(names.values()), width=width,
                      left=text, wrap=text)


def _checked_bench_args(args: argparse.Namespace):
    """(models, seeds, device): every value a user can get wrong is refused before any work."""
    import torch

    from ..config import RunConfig
    from ..engine.devices import resolve_device

    models = text_list(args.models, "--models", "simple_cnn,resnet20")
    seeds = int_list(args.seeds, "--seeds", "0,1,2")
    try:
        for model in models:  # RunConfig checks each model, the rank, epochs, batch and device as facto train does
            RunConfig(model=model, rank=args.rank, epochs=args.epochs, batch_size=args.batch, device=args.device)
        for seed in seeds:
            RunConfig(seed=seed)
        device = resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.html:
        check_output(args.html, "--html")
    if args.max_batch_gb is not None:
        if not args.max_batch_gb > 0:
            raise UsageError(f"--max-batch-gb={args.max_batch_gb:g} is not allowed: use a number of GB > 0")
        if not torch.cuda.is_available():
            raise UsageError("--max-batch-gb needs a CUDA GPU and this machine has none: leave it out")
    return models, seeds, device


def cmd_bench(args: argparse.Namespace) -> int:
    from ..compress.backend import path_name
    from ..config import count
    from ..engine.bench import bench_model, chart, markdown
    from ..engine.devices import machine

    models, seeds, device = _checked_bench_args(args)
    log = (lambda msg: None) if args.json else progress
    log(f"machine: {machine()}; device {device} (compression: {path_name(device)}); digits, "
        f"{count(args.epochs, 'epoch')}, seeds {seeds}, batch {args.batch}")
    rows = []
    for name in models:
        rows += bench_model(name, seeds, args.epochs, args.batch, device, args.rank, not args.no_train, log)
    capped = []
    if args.max_batch_gb:
        from ..engine.gpu_bench import max_batch_table

        capped = max_batch_table(args.max_batch_gb, log=log)
    if args.json:
        document = {"machine": machine(), "compression": path_name(device), "rows": [asdict(r) for r in rows]}
        if args.max_batch_gb:
            document["max_batch"] = [asdict(r) for r in capped]
        print(json.dumps(document, indent=2))
    elif args.markdown:
        print(markdown(rows))
    else:
        print(bench_table(rows, table_width(args)))
    if args.html:
        figure = chart(rows)
        write_output(args.html, "--html", lambda fh: figure.write_html(fh, include_plotlyjs=True))
    if args.max_batch_gb and not args.json:
        from ..engine.gpu_bench import markdown as table

        print(f"\nlargest batch that trains in {args.max_batch_gb:g} GB (SGD, 2 steps per try):")
        print(table(capped) if args.markdown else rows_table(capped, table_width(args)))
    return 0


def bench_table(rows, width: int | None = TABLE_WIDTH) -> str:
    """The methods benchmark's rows (`facto.engine.bench.Row`) as a text table in `width` columns."""
    table = [{"model": r.model, "method": r.method, "stored MB": f"{r.stored_mb:.2f}",
              "saving %": f"{r.saving_pct:.1f}", "peak CUDA MB": "n/a" if r.peak_cuda_mb is None else
              f"{r.peak_cuda_mb:.1f}", "process step MB": "n/a" if r.process_step_mb is None else
              f"{r.process_step_mb:.1f}", "step time vs dense": f"{r.step_time_rel:.2f}x",
              "test acc % (mean ± sd)": None if r.accuracy_mean is None else
              f"{r.accuracy_mean:.2f} ± {r.accuracy_std:.2f}"} for r in rows]
    return text_table(table, list(table[0]) if table else ["model", "method"], width=width,
                      left=("model", "method"), wrap=("method",))


def cmd_gpu_bench(args: argparse.Namespace) -> int:
    import torch

    from ..engine.devices import machine
    from ..engine.gpu_bench import CASES, SMALL_CASES, app_default_seconds, markdown, max_batch_table, step_table

    skip = set(text_list(args.skip, "--skip", "maxbatch,app")) if args.skip.strip() else set()
    unknown = skip - {"steps", "maxbatch", "app"}
    if unknown:
        raise UsageError(f"--skip={args.skip!r} is not allowed: name parts among steps, maxbatch, app")
    if args.out:
        out_files = _checked_out_folder(args.out)
    cuda = torch.cuda.is_available()
    small = args.small or not cuda
    log = (lambda msg: None) if args.json else progress
    results: dict = {"machine": machine()}
    sections: list[tuple[str, Any]] = []  # (title, rows or one line of text)
    if "steps" not in skip:
        log("step time, launches, peak, meter vs allocator ...")
        rows = step_table(SMALL_CASES if small else CASES, rounds=args.rounds, log=log)
        results["steps"] = [asdict(r) for r in rows]
        sections.append(("Step time, kernel launches and memory per step", rows))
    if "maxbatch" not in skip:
        log(f"largest batch under {args.max_batch_gb:g} GB ...")
        rows = max_batch_table(args.max_batch_gb, log=log)
        results["max_batch"] = [asdict(r) for r in rows]
        sections.append((f"Largest batch that trains in {args.max_batch_gb:g} GB (SGD, 2 steps per try), "
                         "measured and as `facto plan` predicted it", rows))
    if "app" not in skip:
        log("default app comparison ...")
        seconds = app_default_seconds()
        results["app_default_seconds"] = seconds
        sections.append(("The app's default comparison, end to end", f"{seconds:.1f} s on {'CUDA' if cuda else 'CPU'}"))
    text = "\n".join([f"machine: {machine()}", ""] + [
        line for title, body in sections
        for line in (f"## {title}", "", body if isinstance(body, str) else markdown(body), "")])  # the --out file
    if args.json:
        print(json.dumps(results, indent=2))
    elif args.markdown:
        print(text)
    else:
        width = table_width(args)
        fit = (lambda line: [line]) if width is None else (lambda line: textwrap.wrap(line, width) or [""])
        shown = [*fit(f"machine: {machine()}"), ""]
        for title, body in sections:
            shown += [*fit(title + ":"), body if isinstance(body, str) else rows_table(body, width), ""]
        print("\n".join(shown))
    if args.out:
        try:
            Path(args.out).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot make the folder --out {args.out}: {exc.strerror or exc}") from None
        write_output(out_files[0], "--out", lambda fh: fh.write(text))
        write_output(out_files[1], "--out", lambda fh: fh.write(json.dumps(results, indent=2)))
    return 0


def _checked_out_folder(out: str) -> tuple[str, str]:
    """The two files gpu-bench writes into folder `out`, refused now if they could not be written."""
    from ..store.files import check_path_names

    folder = check_path_names(out, "--out")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {out} is a file: name a folder (it is made if missing)")
    files = (str(folder / "gpu_bench.md"), str(folder / "gpu_bench.json"))
    if folder.is_dir():
        for path in files:
            check_output(path, "--out")
    return files
