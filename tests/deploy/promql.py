"""PromQL helpers for the deploy checks: parse an expression and name its metrics."""

from __future__ import annotations

import re
from types import SimpleNamespace

import promql_parser
from prometheus_client.core import Metric

from consumers.metrics import REGISTRY, inbox_registry

# Series that Prometheus itself writes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def substitute_grafana_variables(expr: str) -> str:
    """Replace ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` as Grafana would.

    Interval variables become durations; the others stand in a regex matcher
    (``=~"$group"``) in our dashboard, where any text parses.
    """
    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return _GRAFANA_DURATIONS.get(name, "placeholder")

    return _GRAFANA_VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects (raises ValueError when it does not parse)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    names.add(m.value)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def exported_metrics() -> list[Metric]:
    """Every metric family the project exports: the consumers' registry and the inbox API's
    (read from a stand-in of the app's state with no stream open)."""
    idle = SimpleNamespace(open_streams=0, max_streams=1, refused_streams=0)
    return [*REGISTRY.collect(), *inbox_registry(idle).collect()]


def registry_series() -> set[str]:
    """Every series name the project's metrics expose, suffixes included."""
    names: set[str] = set()
    for metric in exported_metrics():
        if metric.type == "counter":
            names.add(f"{metric.name}_total")
        elif metric.type == "histogram":
            names.update(f"{metric.name}{s}" for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(metric.name)
    return names
