"""The chaos suite under pytest: every scenario of devstack/chaos.py on private servers.

``make chaos`` runs the full sizes (20,000 events for the router kills, 5,000
for the others); ``make chaos-ci`` (run by ``.ci/run``) runs each scenario with
``TIDINGS_CHAOS_EVENTS`` events (400). Both write ``report.json`` and
``report.md`` to ``TIDINGS_CHAOS_REPORT_DIR`` (default ``.local/chaos``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.chaos import REPO, SCENARIOS, Environment, Result, Scenario, run_scenario, write_reports

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
REPORT_DIR = Path(os.environ.get("TIDINGS_CHAOS_REPORT_DIR", REPO / ".local" / "chaos"))
RESULTS: list[Result] = []
STARTED = datetime.now(UTC).isoformat(timespec="seconds")


def events_for(scenario: Scenario) -> int:
    wanted = os.environ.get("TIDINGS_CHAOS_EVENTS", "400")
    return scenario.full_events if wanted == "full" else int(wanted)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    with Environment(tmp_path_factory.mktemp("chaos")) as environment:
        yield environment


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_loses_nothing(env: Environment, scenario: Scenario) -> None:
    events = events_for(scenario)
    result = run_scenario(env, scenario, events, REPORT_DIR / "logs")
    RESULTS.append(result)
    write_reports(RESULTS, REPORT_DIR, {
        "started": STARTED,
        "command": f"pytest -m chaos (TIDINGS_CHAOS_EVENTS={os.environ.get('TIDINGS_CHAOS_EVENTS', '400')})",
        "machine": f"{os.uname().nodename} ({os.cpu_count()} cpu)"})
    assert result.expected > 0
    assert result.lost == 0, result
    assert result.dlq_records == result.dlq_expected, result
    # Duplicates are allowed only in the documented window (a consumer killed between the
    # provider's acceptance and the sent mark), and each one must be explained that way.
    assert result.duplicates == result.duplicates_explained, result
    if "kill" not in scenario.name:
        assert result.duplicates == 0, result
    assert not result.notes, result
