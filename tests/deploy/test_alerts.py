"""Alert rules: promtool checks and unit-tests them; they name real metrics, each has a runbook
section and a firing test case, and the Prometheus Operator copy says the same."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import PROMETHEUS_SERIES, metric_names, registry_series

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
OPERATOR_RULE = REPO / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    return found


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests are sensitive: a lag floor raised above the test data makes them fail."""
    (tmp_path / "alerts.yml").write_text(RULES.read_text().replace("> 1000", "> 1000000"))
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "TidingsLagGrowing" in out.stdout + out.stderr


def test_the_alerts_the_issue_asks_for_exist() -> None:
    names = {r["alert"] for r in rules()}
    assert names == {"TidingsConsumerDown", "TidingsNotScraped", "TidingsLagGrowing", "TidingsDeadLetters",
                     "TidingsDeliveryFailureRatioHigh", "TidingsEndToEndLatencyHigh", "TidingsCircuitBreakerOpen",
                     "TidingsInboxStreamsRefused"}


@pytest.mark.parametrize("rule", rules(), ids=[r["alert"] for r in rules()])
def test_every_alert_names_known_metrics_and_has_a_runbook_and_a_firing_test(rule: dict[str, Any]) -> None:
    unknown = metric_names(rule["expr"]) - registry_series() - PROMETHEUS_SERIES
    assert not unknown, f"{sorted(unknown)} not in consumers/metrics.py"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    anchor = rule["alert"].lower()
    assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{anchor}"
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)}
    assert anchor in headings, f"docs/runbook.md has no section for {rule['alert']}"
    fires = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])
             if case["alertname"] == rule["alert"] and case["exp_alerts"]]
    quiet = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])
             if case["alertname"] == rule["alert"] and not case["exp_alerts"]]
    assert fires and quiet, f"{rule['alert']} needs a case where it fires and one where it does not"


def test_the_prometheus_operator_rule_holds_the_same_groups() -> None:
    resource = yaml.safe_load(OPERATOR_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}
