#!/usr/bin/env python3
"""Profile the router's hot path with pyinstrument on real Kafka and Redis.

Pre-loads N demo events (as bench B1 does), runs the router consumer in this
process under the profiler until every delivery is on its topic, and prints
the call tree (``--html FILE`` writes pyinstrument's HTML view as well).

Usage: .venv/bin/python tests/perf/profile_router.py [N] [--kafka HOST:PORT] [--redis URL]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from pyinstrument import Profiler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import REPO, SCALES, Bench

from consumers.app import build_router


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int, nargs="?", default=20_000)
    p.add_argument("--kafka", default="127.0.0.1:9092")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/6")
    p.add_argument("--html")
    args = p.parse_args()
    SCALES["profile"] = {**SCALES["full"], "b1": args.n}
    bench = Bench(argparse.Namespace(scale="profile"), args.kafka, args.redis, Path("/tmp"))
    settings = bench.settings("prof")
    from consumers.topics import create_topics

    create_topics(settings, ["email", "webhook"])
    bench.recipients("http://127.0.0.1:9/unused")
    bench.produce_all(bench.producer(), bench.events(settings.input_topic, args.n))
    router = build_router(settings.model_copy(update={"rules": REPO / "config" / "rules.yaml"}))
    outs = [settings.deliver_topic("email"), settings.deliver_topic("webhook")]
    profiler = Profiler(interval=0.0005)
    timings = []

    def watch() -> None:
        timings.append(bench.wait_count(outs, 2 * args.n, [], every=0.2, per=2))
        router.request_stop()

    # pyinstrument samples the thread that starts it: the router runs here, the watcher aside
    watcher = threading.Thread(target=watch, daemon=True)
    started = time.perf_counter()
    watcher.start()
    profiler.start(target_description="router")
    router.run(health_port=-1)
    profiler.stop()
    watcher.join()
    print(f"{args.n} events in {time.perf_counter() - started:.1f} s, "
          f"{timings[0].rate():,.0f} events/s while profiled")
    print(profiler.output_text(unicode=False, color=False, show_all=False))
    if args.html:
        Path(args.html).write_text(profiler.output_html())
    bench.meta.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
