"""docker-compose cannot run here (no Docker engine); keep it consistent with the code instead."""

from __future__ import annotations

import re
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
