"""Method comparison benchmark (dense, checkpointing, ActNN-style compression, Facto, Facto + recompute).

    python benchmarks/compare.py [--models simple_cnn,resnet20] [--seeds 0,1,2] [--json] [--html chart.html]

Same as `facto bench`. Prints a markdown table and the machine it ran on.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facto.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "--markdown", *sys.argv[1:]]))  # through the CLI: a bad flag is one line, exit 2
