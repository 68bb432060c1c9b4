"""The docs name every setting and every metric the code has."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from consumers.metrics import REGISTRY, inbox_registry
from consumers.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TIDINGS_{name.upper()}`" not in text]
    assert missing == []


def test_every_metric_is_documented() -> None:
    text = (DOCS / "operations.md").read_text()
    names = set()
    inbox = SimpleNamespace(open_streams=0, max_streams=1, refused_streams=0)  # the inbox app's state
    for metric in [*REGISTRY.collect(), *inbox_registry(inbox).collect()]:
        suffix = "_total" if metric.type == "counter" else ""
        names.add(metric.name + suffix)
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert missing == []
    assert len(names) >= 9
