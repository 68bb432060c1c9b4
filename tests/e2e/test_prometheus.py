"""Debian's Prometheus scrapes a running pipeline: real `tidings` processes, the project's alert rules.

Three processes (`tidings router`, `tidings deliver email`, `tidings deliver webhook`)
run on real Kafka, Redis, SMTP and HTTP, each serving /metrics on its own port. A
Prometheus server on a loopback port scrapes them every second with the same job and
`component` labels as the PodMonitor, evaluates deploy/prometheus/alerts.yml every
second, and the test reads everything back through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from pydantic import SecretStr

from devstack import infra

from .conftest import Pipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = {"router": ["router"], "deliver-email": ["deliver", "email"], "deliver-webhook": ["deliver", "webhook"]}
USERS = [f"u-prom-{i}" for i in range(5)]


class PrometheusServer:
    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: apt-get install prometheus (.ci/run installs it)"
        shutil.copy(REPO / "deploy" / "prometheus" / "alerts.yml", workdir / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "tidings", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"component": name}} for name, port in targets.items()
            ]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = infra.free_port()
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait(lambda: self._ready(), 60, "Prometheus to start")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def firing(self, name: str) -> list[dict[str, str]]:
        return [a["labels"] for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def process_env(pipeline: Pipeline, port: int) -> dict[str, str]:
    """The pipeline fixture's settings as TIDINGS_* variables, with this process's metrics port."""
    s = pipeline.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    for name in s.model_fields_set:
        value = getattr(s, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"TIDINGS_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    env.update({"TIDINGS_METRICS_HOST": "127.0.0.1", "TIDINGS_METRICS_PORT": str(port)})
    return env


@pytest.fixture
def processes(pipeline: Pipeline, tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {name: infra.free_port() for name in COMPONENTS}
    procs = []
    for name, args in COMPONENTS.items():
        log = (tmp_path / f"{name}.log").open("w")
        procs.append((subprocess.Popen([sys.executable, "-m", "consumers.cli", *args], cwd=REPO,
                                       env=process_env(pipeline, ports[name]), stdout=log,
                                       stderr=subprocess.STDOUT), log))
    try:
        yield ports
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture
def prometheus(processes: dict[str, int], tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path, processes)
    try:
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_the_pipeline_fires_on_a_dead_letter_and_sees_lag_return_to_zero(
        pipeline: Pipeline, prometheus: PrometheusServer) -> None:
    settings = pipeline.settings
    pipeline.recipients(*({"id": u, "name": u, "contacts": {"email": f"{u}@example.com",
                                                            "webhook": pipeline.web.url(f"/hooks/{u}")}}
                          for u in USERS))
    wait(lambda: prometheus.value('count(up{job="tidings"} == 1)') == len(COMPONENTS), 90,
         "every process scraped and up")
    assert prometheus.firing("TidingsDeadLetters") == []

    for n, user in enumerate(USERS * 4):
        pipeline.pub().publish("jobs.match.found", {"user_id": user, "match_id": f"m-{n}", "job_title": "Tester",
                                                    "company": "Loopback Ltd", "score": 90.0},
                               subject=user, source="tests/e2e/prometheus", id=f"prom-{n}")
    pipeline.pub().flush()
    total = len(USERS) * 4
    pipeline.smtp.wait_for(total, timeout=90)
    pipeline.web.wait_for(total, timeout=90)

    # the tidings_ metrics of every process arrive in Prometheus, with the scrape labels
    wait(lambda: prometheus.value('sum(tidings_deliveries_total{outcome="delivered"})') == 2 * total, 60,
         "every delivery counted")
    by_channel = {r["metric"]["channel"]: float(r["value"][1]) for r in prometheus.query(
        'sum by (channel) (tidings_deliveries_total{job="tidings", outcome="delivered"})')}
    assert by_channel == {"email": total, "webhook": total}
    consumed = prometheus.query(f'tidings_events_consumed_total{{topic="{settings.input_topic}"}}')
    assert [r["metric"]["component"] for r in consumed] == ["router"]
    assert prometheus.value(f'sum(tidings_events_consumed_total{{topic="{settings.input_topic}"}})') == total
    assert prometheus.query("tidings_send_latency_seconds_bucket")

    # a record the router cannot read is dead-lettered, and the alert fires for it
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.input_topic, value=b"not avro", key=b"u-prom-0")
    assert producer.flush(30) == 0
    wait(lambda: bool(prometheus.firing("TidingsDeadLetters")), 60, "TidingsDeadLetters to fire")
    (alert,) = prometheus.firing("TidingsDeadLetters")
    assert alert["topic"] == settings.router_dlq_topic and alert["severity"] == "warning"
    assert alert["reason"] in {"MissingHeaderError", "DecodeError"}
    assert prometheus.firing("TidingsConsumerDown") == [] and prometheus.firing("TidingsNotScraped") == []

    # lag: one series per partition per group, all back to zero once the run is done
    groups = {settings.group("router"), settings.group("deliver-email"), settings.group("deliver-webhook")}

    def caught_up() -> bool:
        series = prometheus.query("tidings_consumer_lag")
        return {r["metric"]["group"] for r in series} == groups and len(series) >= 2 * len(groups) and \
            all(float(r["value"][1]) == 0 for r in series)

    wait(caught_up, 60, "lag of every group back to zero")
    assert prometheus.value("max(tidings_consumer_lag)") == 0

    # labels stay bounded: no recipient, address or id in any label value
    series = prometheus.api("series", **{"match[]": '{__name__=~"tidings_.+"}'})
    assert len(series) > 20
    values = {v for s in series for k, v in s.items() if k not in ("__name__", "instance")}
    leaked = {v for v in values if any(u in v for u in USERS) or "@" in v or "prom-" in v}
    assert leaked == set()
