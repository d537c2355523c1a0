"""Fine-tuning from trained weights: learn the digits 0-4, then fine-tune on the digits 5-9 (offline).

    python benchmarks/transfer.py [--models simple_cnn,resnet20] [--seeds 0,1,2] [--rank 1.0] [--markdown | --json]

Per model and seed the dense model warms up once on `digits_0_4` (`warm_start_steps` steps, as a run
with `warm_start_dataset` does it) and its weights go to a temporary state-dict file; every method
then starts from that file (`init=<file>`) and fine-tunes the same steps on `digits_5_9`: dense
fine-tuning (the baseline), Facto training the last factor, the core or all factors (the preset's
rank unless --rank, 4-bit, recompute), and Facto core from random weights (no warm-up) as the
reference a warm-up must beat. A run of the scenario (`facto train` with the same settings) takes the warm-up plus the
dense + Facto core fine-tuning: the `run s` column of the Facto core row.

Columns: test accuracy after fine-tuning (mean ± sd over the seeds), the test accuracy at step 0
(before fine-tuning: the factorized warm-up on the new classes), stored activation bytes of a batch
(the largest step), median seconds per training step, and wall seconds of the fine-tuning.
Prints a markdown table (or `--json`) and the machine it ran on. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from facto.config import PRESETS, RunConfig  # noqa: E402
from facto.engine import distributed  # noqa: E402
from facto.engine.data import load_data  # noqa: E402
from facto.engine.devices import machine, resolve_device  # noqa: E402
from facto.engine.events import EvalEvent, StartEvent, SummaryEvent  # noqa: E402
from facto.engine.gpu_bench import markdown  # noqa: E402
from facto.engine.starting import starting_model  # noqa: E402
from facto.engine.train import compare, evaluate, warm_start  # noqa: E402

# The scenario: what a run of the transfer task sets (the rest are RunConfig's defaults).
SCENARIO = {"lr": RunConfig().lr, **PRESETS["transfer"]}


@dataclass(frozen=True)
class Method:
    """One way to fine-tune: which variant of a run it is, the factor Facto trains, and the start."""

    name: str
    variant: str  # baseline | facto
    update: str = "core"
    trained: bool = True  # from the warm-up's weights (else random weights, no warm-up)


METHODS = (
    Method("dense fine-tuning", "baseline"),
    Method("Facto last (4-bit, recompute)", "facto", "last"),
    Method("Facto core (4-bit, recompute)", "facto", "core"),
    Method("Facto all (4-bit, recompute)", "facto", "all"),
    Method("Facto core from scratch (4-bit, recompute)", "facto", "core", trained=False),
)


@dataclass
class Result:
    """One method on one model: per-seed numbers."""

    model: str
    method: str
    accuracy: list[float] = field(default_factory=list)
    step0: list[float] = field(default_factory=list)  # empty for a start from random weights (not tested)
    act_bytes: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)  # the fine-tuning (compare) end to end
    warmup_seconds: list[float] = field(default_factory=list)
    warmup_accuracy: list[float] = field(default_factory=list)  # the warm-up's test accuracy on its own dataset
    steps: int = 0


@dataclass(frozen=True)
class TableRow:
    """A `Result` as the table shows it."""

    model: str
    method: str
    test_acc_pct: str
    step0_acc_pct: str
    stored_MB: str
    step_ms: str
    finetune_s: str
    run_s: str


def scenario(model: str, seed: int, **overrides) -> RunConfig:
    """The transfer run's config for `model` and `seed` (SCENARIO with `overrides`)."""
    return RunConfig(**{**SCENARIO, "model": model, "seed": seed, **overrides})


def warm_up(config: RunConfig, path: Path) -> tuple[float, float]:
    """Train `config`'s dense model `warm_start_steps` steps on its `warm_start_dataset`, as a run does
    before the handover, and save its state dict to `path`; (seconds it took, its test accuracy % there)."""
    began = time.perf_counter()
    device = distributed.device_for(resolve_device(config.device))
    data = load_data(config.warm_start_dataset, config.data_dir, config.batch_size, download=config.download,
                     seed=config.seed, max_train=config.max_train, max_test=config.max_test)
    model, _ = starting_model(config, data.info.num_classes, data.info.in_channels, device)
    for _ in warm_start(model, config, distributed.shard_loader(data.train_loader, config.seed), device):
        pass
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    seconds = time.perf_counter() - began
    return seconds, evaluate(model, data.test_loader, device)[1]


def method_config(config: RunConfig, method: Method, state_file: Path) -> RunConfig:
    """`config` for fine-tuning with `method`: from the warm-up's file, or from random weights."""
    return config.replace(update=method.update, warm_start_steps=0, warm_start_dataset=None,
                          init=str(state_file) if method.trained else "random")


def fine_tune(config: RunConfig, variants: tuple[str, ...]) -> tuple[StartEvent, dict[str, float], SummaryEvent, float]:
    """Run `compare(config, variants)`: its StartEvent, the step-0 accuracies, the summary, the wall seconds."""
    began = time.perf_counter()
    start, step0, summary = None, {}, None
    for event in compare(config, variants=variants):
        if isinstance(event, StartEvent):
            start = event
        elif isinstance(event, EvalEvent) and event.step == 0:
            step0[event.variant] = event.test_accuracy
        elif isinstance(event, SummaryEvent):
            summary = event
    if start is None or summary is None or summary.failures:
        raise RuntimeError(f"the run {config.label()} did not complete: {summary.failures if summary else 'no summary'}")
    return start, step0, summary, time.perf_counter() - began


def bench_model(model: str, seeds: Sequence[int], overrides: dict | None = None,
                log: Callable[[str], None] = print) -> list[Result]:
    """Every method of METHODS on `model`, one warm-up per seed shared by the methods that start from it."""
    results = {m.name: Result(model, m.name) for m in METHODS}
    dense, core = METHODS[0], METHODS[2]
    for seed in seeds:
        config = scenario(model, seed, **(overrides or {}))
        with tempfile.TemporaryDirectory() as folder:
            state_file = Path(folder) / f"warmup_{model}_{seed}.pt"
            warm_seconds, warm_accuracy = warm_up(config, state_file)
            log(f"  {model} | seed {seed} | warm-up: {config.warm_start_steps} steps on "
                f"{config.warm_start_dataset}, {warm_seconds:.1f} s, test accuracy there {warm_accuracy:.2f} %")
            for method in METHODS:
                if method is dense:
                    continue  # trained beside Facto core, as a run of the scenario trains the two
                pair = method is core
                variants = ("baseline", "facto") if pair else ("facto",)
                start, step0, summary, wall = fine_tune(method_config(config, method, state_file), variants)
                for m in ((dense, method) if pair else (method,)):
                    r = results[m.name]
                    r.accuracy.append(summary.accuracy[m.variant])
                    if m.variant in step0:
                        r.step0.append(step0[m.variant])
                    r.act_bytes.append(summary.act_bytes[m.variant])
                    r.step_seconds.append(summary.step_seconds[m.variant])
                    r.wall_seconds.append(wall)
                    r.warmup_seconds.append(warm_seconds if m.trained else 0.0)
                    r.warmup_accuracy.append(warm_accuracy)
                    r.steps = summary.steps[m.variant]
                    log(f"  {model} | seed {seed} | {m.name}: step 0 "
                        f"{step0.get(m.variant, float('nan')):.2f} %, after {r.steps} steps "
                        f"{r.accuracy[-1]:.2f} % ({wall:.1f} s)")
                if method.trained and start.init and not start.init.get("loaded"):
                    raise RuntimeError(f"{method.name}: nothing was loaded from the warm-up ({start.init})")
    return list(results.values())


def _mean_sd(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def table_rows(results: Sequence[Result]) -> list[TableRow]:
    """The results as display rows (means over seeds; ± the population sd)."""
    rows = []
    for r in results:
        run = [w + u for w, u in zip(r.wall_seconds, r.warmup_seconds)] if r.method == METHODS[2].name else []
        rows.append(TableRow(r.model, r.method, _mean_sd(r.accuracy), _mean_sd(r.step0),
                             f"{statistics.mean(r.act_bytes) / 1e6:.2f}",
                             f"{1e3 * statistics.median(r.step_seconds):.0f}",
                             f"{statistics.mean(r.wall_seconds):.1f}",
                             f"{statistics.mean(run):.1f}" if run else "-"))
    return rows


COLUMNS = {"model": "model", "method": "method", "test_acc_pct": "test acc % (mean ± sd)",
           "step0_acc_pct": "step-0 acc %", "stored_MB": "stored MB", "step_ms": "step ms",
           "finetune_s": "fine-tune s", "run_s": "run s"}


def render(results: Sequence[Result]) -> str:
    """The markdown table, its header named as COLUMNS says."""
    lines = markdown(table_rows(results)).splitlines()
    lines[0] = "| " + " | ".join(COLUMNS.values()) + " |"
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="simple_cnn,resnet20", help="comma list of models (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default: %(default)s)")
    p.add_argument("--warm-start-steps", type=int, default=SCENARIO["warm_start_steps"],
                   help="warm-up steps on digits_0_4 (default: %(default)s)")
    p.add_argument("--rank", default=str(SCENARIO["rank"]),
                   help="Facto's rank: a fraction of full rank, an integer, or energy:F (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=SCENARIO["epochs"], help="fine-tuning epochs (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="fine-tuning step limit (default: none)")
    p.add_argument("--lr", type=float, default=SCENARIO["lr"], help="learning rate (default: %(default)s)")
    p.add_argument("--schedule", default=SCENARIO["schedule"], help="lr schedule (default: %(default)s)")
    p.add_argument("--max-train", type=int, default=None, help="train images per dataset (default: all)")
    p.add_argument("--max-test", type=int, default=None, help="test images per dataset (default: all)")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | mps (default: %(default)s)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--markdown", action="store_true", help="print a markdown table (the default)")
    out.add_argument("--json", action="store_true", help="print only a JSON document on stdout")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with command-line `argv`; print the table (or JSON) on stdout, progress on stderr."""
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = dict(rank=args.rank, warm_start_steps=args.warm_start_steps, epochs=args.epochs, max_steps=args.max_steps,
                     lr=args.lr, schedule=args.schedule, max_train=args.max_train, max_test=args.max_test,
                     device=args.device)
    for model in models:
        scenario(model, seeds[0], **overrides)  # a bad value is refused before any training
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = []
    for model in models:
        results += bench_model(model, seeds, overrides, log)
    settings = {k: v for k, v in scenario(models[0], seeds[0], **overrides).to_dict().items()
                if k in (*SCENARIO, "batch_size", "optimizer", "max_steps", "max_train", "max_test")}
    if args.json:
        print(json.dumps({"machine": machine(), "settings": settings, "seeds": seeds,
                          "results": [asdict(r) for r in results]}, indent=2))
        return 0
    print(f"machine: {machine()}\n")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + f"; seeds {seeds}\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
