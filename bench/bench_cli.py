"""How long `repdisp --help` takes, next to a bare Python start-up.

    python bench/bench_cli.py [--repeats 9]

Each repeat starts a fresh process (`python -m repdisp --help`, `python -m repdisp measure
--help`, `python -c pass`), interleaved so that machine load hits all alike; the median wall
time of each is printed with its ratio to `python -c pass`. The goal is `repdisp --help` under
0.5 s: the parser is built without importing torch, scipy, transformers or matplotlib. The
load average is printed because absolute times depend on it; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "repdisp --help": [sys.executable, "-m", "repdisp", "--help"],
    "repdisp measure --help": [sys.executable, "-m", "repdisp", "measure", "--help"],
    "import repdisp.cli": [sys.executable, "-c", "import repdisp.cli"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9, help="runs of each command (default: 9)")
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, cmd in CASES.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.repeats} interleaved runs each; load average {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'command':<26}{'median s':>10}{'x python -c pass':>18}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<26}{med:>10.3f}{med / base:>18.2f}")


if __name__ == "__main__":
    main()
