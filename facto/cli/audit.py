"""`facto audit`: the meter next to two independent measurements (a storage walk and process memory)."""
from __future__ import annotations

import argparse
import json


def add_parsers(sub) -> None:
    p = sub.add_parser("audit", help="check the meter against a storage walk and process memory",
                       description="The meter's stored bytes next to an independent walk of the storages autograd "
                                   "keeps (every registered model) and next to the resident memory a fresh process "
                                   "gains (resnet20). A few minutes on a CPU.")
    p.add_argument("--json", action="store_true", help="print only a JSON document on stdout")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..engine.devices import machine
    from ..memory.audit import meter_vs_rss, meter_vs_walk

    walk, rss = meter_vs_walk(), meter_vs_rss()
    if args.json:
        print(json.dumps({"machine": machine(), "meter_vs_walk": walk, "meter_vs_rss": rss}, indent=2))
        return 0
    print(f"machine: {machine()}\n")
    print("Meter vs an independent walk of the storages autograd keeps (bits=None, batch 8, 3x32x32, "
          "rank 0.5, core, recompute):\n")
    print("| model | meter MB | storage walk MB | difference |\n|---|---|---|---|")
    for r in walk:
        metered, walked = r["meter_bytes"], r["walk_bytes"]
        print(f"| {r['model']} | {metered / 1e6:.3f} | {walked / 1e6:.3f} | "
              f"{100 * (metered - walked) / walked:+.2f} % |")
    print("\nMeter vs process memory (RSS growth over one forward, graph kept; resnet20, batch 256, 1x32x32, "
          "median of 5 forwards in a fresh process):\n")
    print("| variant | meter MB | RSS growth MB | meter / RSS |\n|---|---|---|---|")
    for r in rss:
        print(f"| {r['variant']} | {r['metered'] / 1e6:.2f} | {r['rss_growth'] / 1e6:.2f} | "
              f"{r['metered'] / r['rss_growth']:.2f} |")
    return 0
