"""The docs name every setting and every metric the code has."""

from __future__ import annotations

from pathlib import Path

from consumers.settings import Settings
from tests.deploy.promql import exported_metrics

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TIDINGS_{name.upper()}`" not in text]
    assert missing == []


def test_every_metric_is_documented() -> None:
    text = (DOCS / "operations.md").read_text()
    names = set()
    for metric in exported_metrics():
        suffix = "_total" if metric.type == "counter" else ""
        names.add(metric.name + suffix)
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert missing == []
    assert len(names) >= 9
