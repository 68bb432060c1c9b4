#!/usr/bin/env python3
"""CPU cost of the same Python work done back to back and in bursts between short sleeps.

A consumer at a low or moderate rate works in bursts: a batch, then a wait on the broker
(a fetch, a flush). This measures what one unit of plain Python work (JSON encode and
decode, string joins: no I/O, no allocation that outlives the unit) costs in CPU time of
the thread, run continuously and with a sleep of GAP ms after each unit. On the 2-core
development machine the bursty figure is well above the continuous one; docs/performance.md
(B4) has the numbers and what they mean for the consumers.

Usage: .venv/bin/python tests/perf/burst_cpu.py [UNITS] [GAP_MS ...]
"""

from __future__ import annotations

import json
import sys
import time


def unit() -> None:
    doc = {"ids": list(range(50)), "text": "x" * 200, "nested": {"score": 1.5}}
    for _ in range(20):
        json.loads(json.dumps(doc))
        "".join(str(i) for i in range(100))


def cpu_per_unit(units: int, gap: float) -> float:
    """Microseconds of this thread's CPU per unit, counting the units only (not the sleeps)."""
    spent = 0.0
    for _ in range(units):
        started = time.thread_time()
        unit()
        spent += time.thread_time() - started
        if gap:
            time.sleep(gap)
    return spent / units * 1e6


def main(argv: list[str]) -> int:
    units = int(argv[0]) if argv else 1000
    gaps = [float(g) / 1000 for g in argv[1:]] or [0.0, 0.001, 0.005, 0.02]
    cpu_per_unit(200, 0.0)  # warm up
    for _ in range(2):  # two rounds: the first figure of a round is not special
        for gap in gaps:
            print(f"gap {gap * 1000:5.1f} ms: {cpu_per_unit(units, gap):8.1f} us CPU per unit", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
