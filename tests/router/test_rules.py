from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.rules import CompiledRule, ConditionError, Rule, RuleSet
from schemas import Priority
from schemas.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]
DEMO_RULES = REPO / "config" / "rules.yaml"
EVENT = {"id": "e-1", "source": "/jobs", "type": "jobs.match.found", "time": "2024-05-17T09:30:15.123Z",
         "subject": "u-ada", "tenant": "acme"}


def _rule(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "r", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match",
    }
    base.update(overrides)
    return base


def _one(when: str | None) -> CompiledRule:
    (compiled,) = RuleSet.from_data({"rules": [_rule(when=when)]}).for_type("jobs.match.found")
    return compiled


def _config_error(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        RuleSet.from_data(raw, origin="rules.yaml")
    return str(info.value)


# -- the demo file ---------------------------------------------------------------


def test_demo_rules_load() -> None:
    rules = RuleSet.load(DEMO_RULES)
    assert [r.name for r in rules.rules] == [
        "job-match", "application-status", "book-ready", "book-failed", "system-alert",
    ]
    assert rules.channels == {"email", "webhook"}
    assert rules.templates == {"job_match", "application_status", "book_ready", "book_failed", "system_alert"}
    job = rules.rules[0]
    assert job == Rule(
        name="job-match", event_type="jobs.match.found", when="score >= 75",
        channels=("email", "webhook"), template="job_match", priority=Priority.normal,
    )
    assert job.audience == "subject"
    assert rules.rules[-1].priority is Priority.urgent


def test_demo_rules_are_indexed_by_type_in_file_order() -> None:
    rules = RuleSet.load(DEMO_RULES)
    assert [c.rule.name for c in rules.for_type("bookgen.job.completed")] == ["book-ready", "book-failed"]
    assert [c.rule.name for c in rules.for_type("system.alert")] == ["system-alert"]
    assert rules.for_type("no.such.type") == []


def test_demo_book_rules_split_on_status() -> None:
    ready, failed = RuleSet.load(DEMO_RULES).for_type("bookgen.job.completed")
    data = {"status": "completed", "title": "T", "job_id": "j"}
    assert ready.matches(data, EVENT) is True
    assert failed.matches(data, EVENT) is False
    data = {**data, "status": "failed"}
    assert ready.matches(data, EVENT) is False
    assert failed.matches(data, EVENT) is True


def test_demo_application_rule_needs_a_change() -> None:
    (rule,) = RuleSet.load(DEMO_RULES).for_type("applications.status.changed")
    assert rule.matches({"old_status": "applied", "new_status": "interview"}, EVENT) is True
    assert rule.matches({"old_status": "applied", "new_status": "applied"}, EVENT) is False


# -- conditions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "expected"), [(75, True), (75.0, True), (99.5, True), (74.99, False), (0, False)]
)
def test_score_threshold(score: float, expected: bool) -> None:
    assert _one("score >= 75").matches({"score": score}, EVENT) is expected


def test_no_condition_always_matches() -> None:
    compiled = _one(None)
    assert compiled.condition is None
    assert compiled.matches({}, {}) is True


def test_condition_sees_event_attributes() -> None:
    assert _one("event.tenant == 'acme'").matches({}, EVENT) is True
    assert _one("event.tenant == 'acme'").matches({}, {**EVENT, "tenant": "other"}) is False
    assert _one("event.source.startswith('/jobs')").matches({}, EVENT) is True


def test_condition_sees_the_whole_data_as_data() -> None:
    assert _one("data.score > 50 and 'remote' in data.tags").matches(
        {"score": 60, "tags": ["remote"]}, EVENT) is True
    assert _one("data['score'] > 50").matches({"score": 40}, EVENT) is False


def test_condition_result_is_a_bool() -> None:
    assert _one("company").matches({"company": "Acme"}, EVENT) is True
    assert _one("company").matches({"company": ""}, EVENT) is False


def test_condition_with_none_field() -> None:
    rule = _one("location is none or location == 'Berlin'")
    assert rule.matches({"location": None}, EVENT) is True
    assert rule.matches({"location": "Berlin"}, EVENT) is True
    assert rule.matches({"location": "Paris"}, EVENT) is False


def test_data_fields_named_data_or_event_do_not_break_the_condition() -> None:
    # The field names are the event's, not ours: a schema may well have a field called "event".
    data = {"event": "deploy", "data": "x", "score": 80}
    assert _one("score >= 75").matches(data, EVENT) is True
    assert _one("data.event == 'deploy'").matches(data, EVENT) is True
    assert _one("event.tenant == 'acme'").matches(data, EVENT) is True


@pytest.mark.parametrize("when", ["unknown_name >= 75", "unknown_name", "not unknown_name", "data.missing",
                                  "score >= 75 and unknown_name", "event.nope == 1"])
def test_unknown_name_is_a_condition_error_when_evaluated(when: str) -> None:
    rule = _one(when)  # it parses: names are only known per event
    with pytest.raises(ConditionError) as info:
        rule.matches({"score": 80}, EVENT)
    message = str(info.value)
    assert message.startswith(f"rule r: condition {when!r} failed: ")
    assert "is undefined" in message or "has no attribute" in message
    assert isinstance(info.value, InputError)


def test_type_error_is_a_condition_error() -> None:
    with pytest.raises(ConditionError, match="rule r: condition 'score >= 75' failed"):
        _one("score >= 75").matches({"score": "high"}, EVENT)


def test_arithmetic_error_is_a_condition_error() -> None:
    with pytest.raises(ConditionError, match="division by zero"):
        _one("score / 0 > 1").matches({"score": 1}, EVENT)


@pytest.mark.parametrize("when", ["''.__class__.__mro__", "score.__class__.__subclasses__()"])
def test_sandbox_blocks_unsafe_access_in_conditions(when: str) -> None:
    with pytest.raises(ConditionError, match=r"unsafe|is undefined|has no attribute"):
        _one(when).matches({"score": 1}, EVENT)


# -- loading -------------------------------------------------------------------------


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: a, event_type: t, channels: [email], template: x, priority: low}\n")
    rules = RuleSet.load(path)
    assert rules.rules == (Rule(name="a", event_type="t", channels=("email",), template="x",
                                priority=Priority.low),)


def test_empty_rule_list_is_allowed() -> None:
    rules = RuleSet.from_data({"rules": []})
    assert rules.rules == ()
    assert rules.channels == set()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read rules file .*nope\.yaml: No such file"):
        RuleSet.load(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [\n  - name: {oops\n")
    with pytest.raises(ConfigError, match=f"rules file {path} is not valid YAML"):
        RuleSet.load(path)


@pytest.mark.parametrize(
    "text", ["", "just text", "- a\n- b\n", "other: []\n", "rules: {a: 1}\n", "rules:\n"]
)
def test_missing_rules_list(tmp_path: Path, text: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        RuleSet.load(path)
    assert str(info.value) == f"{path}: expected a mapping with a 'rules' list"


def test_duplicate_names() -> None:
    message = _config_error({"rules": [_rule(name="a"), _rule(name="b"), _rule(name="a"), _rule(name="b"),
                                       _rule(name="c")]})
    assert message == "rule name(s) used twice: a, b"


def test_same_name_with_different_event_types_is_still_a_duplicate() -> None:
    message = _config_error({"rules": [_rule(name="a"), _rule(name="a", event_type="other")]})
    assert message == "rule name(s) used twice: a"


@pytest.mark.parametrize(
    ("bad", "field", "text"),
    [
        ({"channels": []}, "channels", "at least 1 item"),
        ({"channels": ["email", "webhook", "email"]}, "channels", "a channel is listed twice"),
        ({"channels": ["Email"]}, "channels", "channel name 'Email' is not valid"),
        ({"channels": "email"}, "channels", "valid tuple"),
        ({"when": "score >="}, "when", "condition 'score >=' does not parse"),
        ({"when": "score >= 75 }}"}, "when", "does not parse"),
        ({"name": "Job Match"}, "name", "'Job Match' must be lower-case"),
        ({"template": "../etc"}, "template", "'../etc' must be lower-case"),
        ({"priority": "asap"}, "priority", "'low', 'normal', 'high' or 'urgent'"),
        ({"audience": "everyone"}, "audience", "'subject'"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_invalid_rule_names_position_and_field(bad: dict[str, Any], field: str, text: str) -> None:
    message = _config_error({"rules": [_rule(name="ok"), _rule(**{"name": "second", **bad})]})
    assert message.startswith(f"rules.yaml: rule #2: {field}: ")
    assert text in message


@pytest.mark.parametrize("missing", ["name", "event_type", "channels", "template"])
def test_missing_required_field(missing: str) -> None:
    rule = _rule()
    del rule[missing]
    assert _config_error({"rules": [rule]}) == f"rules.yaml: rule #1: {missing}: Field required"


def test_entry_that_is_not_a_mapping() -> None:
    message = _config_error({"rules": [_rule(), "job-match"]})
    assert message.startswith("rules.yaml: rule #2: (entry): ")


def test_load_reports_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: a, event_type: t, channels: [], template: x}\n")
    with pytest.raises(ConfigError, match=f"^{path}: rule #1: channels: "):
        RuleSet.load(path)


def test_rule_is_frozen() -> None:
    rule = RuleSet.from_data({"rules": [_rule()]}).rules[0]
    with pytest.raises(ValueError, match="frozen"):
        rule.name = "other"  # type: ignore[misc]
