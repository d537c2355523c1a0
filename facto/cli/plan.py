"""`facto plan`: the largest batch that trains under a memory budget, per variant (Fit my GPU)."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Sequence

from .args import (DEFAULT, TABLE_WIDTH, UsageError, add_wide_flag, as_usage_error, progress, table_width,
                   text_table, whole_number)

if TYPE_CHECKING:
    from ..memory.plan import PlanResult
    from ..memory.verify import VerifyRow

DEFAULT_MODEL = "resnet20"


def add_parsers(sub) -> None:
    from ..config import INT_MAX
    from ..memory.budget import BUDGET_HELP, MiB
    from ..memory.plan import DEFAULT_RESERVE, DEFAULT_VARIANTS, VARIANT_HELP

    p = sub.add_parser("plan", help="largest batch per variant under a memory budget",
                       description="Fit my GPU: the largest batch that trains under a memory budget, per variant.")
    model_help = "registry name, any torchvision classification model, or tv:NAME for torchvision's own layout"
    p.add_argument("model", nargs="?", metavar="MODEL", default=argparse.SUPPRESS,
                   help=f"{model_help} (same as --model)")
    p.add_argument("--model", dest="model_flag", metavar="MODEL", default=DEFAULT_MODEL, help=model_help + DEFAULT)
    p.add_argument("--input", default="3x32x32", help="C x H x W of one sample, e.g. 3x224x224" + DEFAULT)
    p.add_argument("--classes", type=whole_number("--classes", 1, INT_MAX), default=10, help="outputs of the classifier" + DEFAULT)
    p.add_argument("--budget", default="8GB", help=BUDGET_HELP + DEFAULT)
    p.add_argument("--optimizer", default="sgd", help="sgd (momentum) | adam | adamw" + DEFAULT)
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 (autocast)" + DEFAULT)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of: {VARIANT_HELP}" + DEFAULT)
    p.add_argument("--device", default="auto", help="where the probe forwards run: auto | cpu | cuda | cuda:N" + DEFAULT)
    p.add_argument("--reserve", default=f"{DEFAULT_RESERVE // MiB}MiB",
                   help="fixed allocator/workspace reserve inside the budget" + DEFAULT)
    p.add_argument("--verify", action="store_true", help="also measure the real largest batch (needs a GPU)")
    p.add_argument("--process", action="store_true",
                   help="with --device cpu: also predict a CPU training process's resident peak (process MB), "
                        "with big buffers returned (FACTO_RETURN_MEMORY=1)")
    p.add_argument("--json", action="store_true", help="print only a JSON document on stdout")
    add_wide_flag(p)
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..memory.plan import plan
    from ..memory.verify import GPURequiredError, require_gpu, verify

    model = getattr(args, "model", None)
    if model and args.model_flag not in (model, DEFAULT_MODEL):
        raise UsageError(f"facto plan: model={model!r} and --model={args.model_flag!r}: give one")
    from ..memory.budget import parse_budget

    try:
        parse_budget(args.budget, "--budget")  # the flag's own words, before any probing
        parse_budget(args.reserve, "--reserve")
        if args.verify:
            require_gpu()  # before minutes of probing
        result = plan(model or args.model_flag, args.input, args.classes, args.budget, args.optimizer,
                      args.precision, args.variants, args.device, args.reserve, log=progress,
                      process=args.process)
        checks = verify(result, args.device, log=progress) if args.verify else []
    except (ValueError, GPURequiredError) as exc:
        raise as_usage_error(exc) from None
    if args.json:
        document = result.to_dict()
        if args.verify:
            document["verify"] = [c.to_dict() for c in checks]
        print(json.dumps(document, indent=2))
    else:
        print(format_plan(result, checks, table_width(args)))
    return 0


def format_plan(result: PlanResult, checks: Sequence[VerifyRow] = (), width: int | None = TABLE_WIDTH) -> str:
    """The plan as a text table (MB = 10^6 bytes) with what it assumed, in `width` columns (None: no limit).

    Fitted, the table names each variant by its --variants name and a line below says what each is."""
    import textwrap

    from ..memory.budget import GB, GiB, MiB
    from ..memory.plan import table_rows

    def fit(text: str) -> list[str]:
        return [text] if width is None else textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False)

    shape = "x".join(map(str, result.input_shape))
    lines = fit(f"Fit my GPU: {result.model}, input {shape}, {result.num_classes} classes, budget "
                f"{result.budget / GB:.2f} GB ({result.budget / GiB:.2f} GiB), {result.optimizer}, "
                f"{result.precision}; stored bytes measured on {result.device} at batches "
                f"{result.probes[0]} and {result.probes[1]}; reserve {result.reserve / MiB:.0f} MiB")
    rows = table_rows(result)
    if width is not None:  # the --variants names in the table, what each is below it
        for row, r in zip(rows, result.rows):
            row["variant"] = r.variant
    lines += ["", text_table(rows, list(rows[0]), first_left=True, digits=None, width=width)]
    if width is not None:
        lines += [line for r in result.rows for line in fit(f"{r.variant}: {r.label}")]
    measured = {c.variant: c for c in checks}
    for r in result.rows:
        if r.variant in measured:
            c = measured[r.variant]
            outcome = f"measured {c.measured}" if c.error is None else f"failed: {c.error}"
            lines += fit(f"verify {r.variant}: predicted {c.predicted}, {outcome}")
    lines += [line for n in result.notes for line in fit(f"note: {n}")]
    return "\n".join(lines)
