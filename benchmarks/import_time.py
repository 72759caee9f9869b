"""Print how long ``import coiled_lab`` takes in a fresh interpreter (target <= 0.25 s).

Usage: python benchmarks/import_time.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

SNIPPET = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def measure(module: str, repeat: int) -> list[float]:
    return [
        float(subprocess.run([sys.executable, "-c", SNIPPET.format(module=module)],
                             capture_output=True, text=True, check=True).stdout)
        for _ in range(repeat)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"{'import':<22}{'median':>10}{'min':>10}{'max':>10}")
    for module in ("coiled_lab", "coiled_lab.magic", "distributed"):
        times = measure(module, args.repeat)
        print(f"{module:<22}{statistics.median(times):>9.3f}s{min(times):>9.3f}s{max(times):>9.3f}s")
    print("target: import coiled_lab <= 0.250 s (median)")


if __name__ == "__main__":
    main()
