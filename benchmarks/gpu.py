"""The GPU benchmark in one command: step time vs dense, kernel launches, peak memory, largest batch
under a memory cap, meter vs allocator, the app's default comparison, compress/restore throughput.

    python benchmarks/gpu.py --out gpu_results          # on a CUDA machine
    python benchmarks/gpu.py --small --skip maxbatch    # what runs without a GPU (CPU, small models)

The same as `facto gpu-bench`, then benchmarks/kernels.py. Every table says the machine it ran on; cells that need CUDA say n/a where there is none.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

from facto.cli import main as facto  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    code = facto(["gpu-bench", "--markdown", *argv])  # through the CLI: a bad flag is one line, exit 2
    if code or "kernels" in ",".join(a for a in argv if not a.startswith("--")) or "--small" in argv:
        return code
    import kernels  # benchmarks/kernels.py

    print("\n## Compress and restore throughput (fp32 maps)\n")
    return kernels.main([])


if __name__ == "__main__":
    raise SystemExit(main())
