"""Run by tests/test_activations.py in a fresh process: RSS growth over one forward vs the meter.

Usage: python _rss_probe.py MODEL dense|masks|facto none|BITS BATCH  -> one JSON line.
"""
import gc
import json
import os
import statistics
import sys

import torch

import facto


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    name, variant, bits_text, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    bits = None if bits_text == "none" else int(bits_text)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = facto.create_model(name, 10, 1)
    model = {"dense": lambda m: m, "masks": facto.with_relu_masks,
             "facto": lambda m: facto.factorize(m, 0.5, "core", recompute=True)}[variant](dense)
    model.train()
    x = torch.randn(batch, 1, 32, 32)
    growths, metered = [], 0
    for i in range(6):  # the first forward warms up (thread pools, lazy init) and is not counted
        gc.collect()
        before = rss()
        with facto.saved_activations(bits, model=model) as meter:
            out = model(x)
        after = rss()
        if i:
            growths.append(after - before)
        metered = meter.bytes
        del out, meter
    print(json.dumps({"metered": metered, "rss_growth": statistics.median(growths), "growths": growths}))


if __name__ == "__main__":
    main()
