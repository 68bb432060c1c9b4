"""The Grafana dashboard loads, its ids are unique, and every query parses and names real metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import PROMETHEUS_SERIES, metric_names, registry_series, substitute_grafana_variables

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "tidings.json"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def expressions() -> list[tuple[str, str]]:
    out = []
    for p in panels(dashboard()["panels"]):
        for t in p.get("targets", []):
            out.append((f"{p['title']} / {t['refId']}", t["expr"]))
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(metric, label) is Grafana's, not PromQL: check the metric part.
            metric = query.removeprefix("label_values(").split(",")[0]
            out.append((f"variable {var['name']}", metric))
    return out


def test_dashboard_loads_with_unique_panel_ids_and_a_uid() -> None:
    d = dashboard()
    assert d["uid"] == "tidings-overview"
    ids = [p["id"] for p in panels(d["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert all(isinstance(i, int) for i in ids)
    for p in panels(d["panels"]):
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{p['title']}: refIds repeat"
    names = [v["name"] for v in d["templating"]["list"]]
    assert len(names) == len(set(names))


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for p in panels(dashboard()["panels"]):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=[w for w, _ in expressions()])
def test_every_expression_parses_and_names_only_known_metrics(where: str, expr: str) -> None:
    names = metric_names(substitute_grafana_variables(expr))
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - registry_series() - PROMETHEUS_SERIES
    assert not unknown, f"{where}: {sorted(unknown)} not in consumers/metrics.py"


def test_the_dashboard_covers_what_operators_watch() -> None:
    named = set().union(*(metric_names(substitute_grafana_variables(e)) for _, e in expressions()))
    for series in ("tidings_consumer_lag", "tidings_events_consumed_total", "tidings_deliveries_total",
                   "tidings_send_latency_seconds_bucket", "tidings_end_to_end_latency_seconds_bucket",
                   "tidings_retries_total", "tidings_dlq_records_total", "tidings_suppressions_total",
                   "tidings_circuit_breakers_open", "tidings_held_deliveries"):
        assert series in named, f"no panel shows {series}"
    text = DASHBOARD.read_text()
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text


def test_substitution_covers_grafana_forms() -> None:
    expr = 'rate(x{a=~"$group", b=~"${channel}", c=~"${channel:regex}", d="[[old]]"}[$__rate_interval])'
    assert substitute_grafana_variables(expr) == (
        'rate(x{a=~"placeholder", b=~"placeholder", c=~"placeholder", d="placeholder"}[5m])')
    with pytest.raises(ValueError, match=r".+"):
        metric_names("sum(rate(x[5m])")


def test_provisioning_points_at_the_dashboard_folder() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "tidings.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert path == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"
