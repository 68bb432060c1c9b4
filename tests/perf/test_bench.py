"""The benchmark harness runs end to end at its smallest scale (a smoke test: no speed is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.integration


def test_bench_quick_scale_writes_every_result(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(HERE / "bench.py"), "--scale", "quick", "--kafka", kafka_bootstrap,
         "--redis", redis_url, "--out", str(out), "--keep-logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "latest.json").read_text())
    results = {r["name"]: r for r in doc["results"]}
    assert sorted(results) == ["B1", "B2", "B3", "B4", "B5", "B6"]
    # every figure is a measurement, never missing; every target carries its measured value
    for r in results.values():
        assert r["figures"], r["name"]
        for value in r["figures"].values():
            assert value is not None, r
        for target in r["targets"].values():
            assert isinstance(target["measured"], float | int) and isinstance(target["met"], bool)
    assert results["B1"]["figures"]["events"] == 2000
    assert results["B1"]["figures"]["floor_per_s"] > 0
    assert results["B4"]["figures"]["received"] == 300
    assert results["B5"]["figures"]["router_mb"] > 10
    md = (out / "latest.md").read_text()
    assert "| B1 router throughput" in md and "quick scale" in md
    assert "B6" in proc.stdout  # the table printed at the end
    assert list(out.glob("bench-*.json")) and list(out.glob("bench-*.md"))


def test_timing_is_per_item_when_an_item_is_several_records() -> None:
    # The router writes two deliveries per event: 400 records in 2 s are 100 events a second.
    spec = importlib.util.spec_from_file_location("tidings_bench", HERE / "bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while the class is built
    spec.loader.exec_module(bench)
    Timing = bench.Timing

    t = Timing(started_at=0.0, first_at=1.0, first_count=100, done_at=3.0, total=500, cpu=0.4, per=2)
    assert t.rate() == 100.0
    assert t.cpu_us_per_item() == 2000.0
    single = Timing(started_at=0.0, first_at=1.0, first_count=100, done_at=3.0, total=500, cpu=0.4)
    assert single.rate() == 200.0
    assert single.cpu_us_per_item() == 1000.0
