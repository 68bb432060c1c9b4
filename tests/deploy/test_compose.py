"""docker-compose cannot run here (no Docker engine); keep it consistent with the code instead."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from consumers.cli import parser
from consumers.settings import Settings
from devstack.infra import kafka_version

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def test_kafka_image_matches_the_local_broker_version() -> None:
    assert compose()["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version()}"


def test_every_tidings_setting_in_compose_exists() -> None:
    fields = {f"TIDINGS_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose()["services"].items():
        for key in (service.get("environment") or {}):
            if key.startswith("TIDINGS_"):
                assert key in fields, f"{name}: {key} is not a setting"


def test_every_tidings_command_parses() -> None:
    for service in compose()["services"].values():
        command = service.get("command")
        if service.get("image") == "tidings:dev" and command:
            parser().parse_args(command)  # raises SystemExit on an unknown command
    services = compose()["services"]
    assert services["router"]["command"] == ["router"]
    assert {tuple(s["command"]) for s in services.values() if s.get("command", [""])[0] == "deliver"} == {
        ("deliver", "email"), ("deliver", "webhook")}


def test_dockerfile_runs_as_non_root_with_the_tidings_entry_point() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", text, re.M)
    assert 'ENTRYPOINT ["tidings"]' in text
    assert text.count("FROM ") == 2  # multi-stage


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by stage."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_is_slim_pinned_and_copies_every_package() -> None:
    build, final = dockerfile_stages()
    for stage in (build, final):
        base = stage[0].split()[1]
        assert base.startswith("python:3.") and base.endswith("-slim"), base
    assert not any(i.startswith("ADD ") for i in build + final), "COPY, never ADD (no remote fetch at build)"
    for instr in build + final:
        if "pip install" in instr or "pip wheel" in instr:
            assert "--no-cache-dir" in instr, instr
    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {i.split()[1] for i in build if i.startswith("COPY ")}
    assert set(packages) <= copied, f"packages not copied into the build stage: {set(packages) - copied}"
    for src in copied:
        assert (DEPLOY.parent / src).exists(), src
    # the final stage installs wheels only, drops root before the entry point, and runs `tidings`
    assert any(i.startswith("COPY --from=build") for i in final)
    user = next(n for n, i in enumerate(final) if i.startswith("USER "))
    entry = next(n for n, i in enumerate(final) if i.startswith("ENTRYPOINT "))
    assert user < entry and final[user] != "USER root" and final[user] != "USER 0"
    assert pyproject["project"]["scripts"]["tidings"] == "consumers.cli:main"
    ignored = (DEPLOY.parent / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


def tidings_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items()
            if s.get("image") == "tidings:dev" and s.get("command", [""])[0] in ("router", "deliver")}


def test_prometheus_scrapes_every_tidings_process_with_a_component_label() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tidings")
    scraped = {t: sc["labels"]["component"] for sc in job["static_configs"] for t in sc["targets"]}
    services = tidings_services()
    port = compose()["x-tidings"]["environment"]["TIDINGS_METRICS_PORT"]
    assert scraped == {f"{name}:{port}": name for name in services}
    assert config["rule_files"] == ["alerts.yml"]


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    out = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_and_grafana_mount_files_that_exist() -> None:
    services = compose()["services"]
    mounts: dict[str, str] = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            mounts[target] = source
    assert mounts["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    assert mounts["/var/lib/grafana/dashboards/tidings.json"] == "./grafana/tidings.json"
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "tidings.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    assert {"kafka", "redis", "mailpit", "prometheus", "grafana", "router"} <= set(services)
