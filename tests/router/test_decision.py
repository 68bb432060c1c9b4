from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from router.decision import Decision, Event, event_context, route
from router.recipients import Recipient
from router.rules import ActionError, CompiledRule, ConditionError, RuleSet
from router.state import Claim
from router.templates import Renderer
from schemas import Catalog, CloudEvent, Delivery, Priority, State, Status, delivery_id
from schemas.cloudevents import format_time
from schemas.errors import ConfigError, MissingHeaderError, TemplateError

REPO = Path(__file__).resolve().parents[2]
RULES = RuleSet.load(REPO / "config" / "rules.yaml")
NOW = datetime(2024, 5, 17, 10, 0, 0, tzinfo=UTC)
WHEN = datetime(2024, 5, 17, 9, 30, 15, 123000, tzinfo=UTC)
DEADLINE = timedelta(hours=24)
MINE = Claim("events:0:1", True)

MATCH = {"user_id": "u-ada", "match_id": "m-7", "job_title": "Engineer", "company": "Acme",
         "score": 80.0, "location": "Berlin", "is_remote": False}
ADA = Recipient(
    id="u-ada", name="Ada Lovelace", locale="en", timezone="Europe/London",
    contacts={"email": "ada@example.com", "webhook": "https://hooks.example.com/ada"},
)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(REPO / "config" / "templates")


def _event(ce_type: str = "jobs.match.found", data: Mapping[str, Any] = MATCH, subject: str | None = "u-ada",
           tenant: str = "default") -> Event:
    ce = CloudEvent.new(ce_type, source="/jobs/matcher", subject=subject, id="evt-1", tenant=tenant,
                        time=WHEN)
    return Event(ce=ce, data=data)


def _route(renderer: Renderer, event: Event | None = None, *, rules: Sequence[CompiledRule] | None = None,
           claim: Claim = MINE, recipient: Recipient | None = ADA, problem: str | None = None) -> Decision:
    event = event or _event()
    if rules is None:
        rules = RULES.for_type(event.ce.type)
    return route(event, rules, claim, recipient, renderer, NOW, DEADLINE, problem)


def _rules(**rule: Any) -> list[CompiledRule]:
    base = {"name": "r", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match"}
    return RuleSet.from_data({"rules": [{**base, **rule}]}).for_type("jobs.match.found")


def _only_status(decision: Decision) -> Status:
    assert decision.deliveries == []
    (status,) = decision.statuses
    assert (status.event_id, status.event_source) == ("evt-1", "/jobs/matcher")
    return status


# -- outcomes without deliveries ----------------------------------------------------------


def test_deduplicated_when_the_claim_is_not_mine(renderer: Renderer) -> None:
    status = _only_status(_route(renderer, claim=Claim("events:3:42", False)))
    assert status.state is State.deduplicated
    assert status.reason == "duplicate_event"
    assert status.detail == "already claimed by events:3:42"
    assert status.delivery_id is None


def test_deduplicated_before_anything_else_is_looked_at(renderer: Renderer) -> None:
    # Neither the missing subject nor the unknown recipient matter for a duplicate.
    event = _event(subject=None)
    status = _only_status(_route(renderer, event, claim=Claim("x:0:0", False), recipient=None))
    assert status.state is State.deduplicated


def test_no_rule(renderer: Renderer) -> None:
    status = _only_status(_route(renderer, _event("orders.placed", data={}), rules=[]))
    assert status.state is State.skipped
    assert status.reason == "no_rule"
    assert status.detail == "no rule for event type orders.placed"
    assert status.event_type == "orders.placed"


def test_condition_false(renderer: Renderer) -> None:
    status = _only_status(_route(renderer, _event(data={**MATCH, "score": 74.9})))
    assert status.state is State.skipped
    assert status.reason == "condition_false"
    assert status.detail == "no condition matched (job-match)"


def test_condition_false_lists_every_rule(renderer: Renderer) -> None:
    data = {"job_id": "j", "title": "T", "status": "running"}
    status = _only_status(_route(renderer, _event("bookgen.job.completed", data=data)))
    assert status.detail == "no condition matched (book-ready, book-failed)"


def test_condition_that_cannot_be_evaluated_propagates(renderer: Renderer) -> None:
    data = {k: v for k, v in MATCH.items() if k != "score"}
    with pytest.raises(ConditionError, match="rule job-match"):
        _route(renderer, _event(data=data))


def test_missing_subject_with_a_matching_rule(renderer: Renderer) -> None:
    with pytest.raises(MissingHeaderError) as info:
        _route(renderer, _event(subject=None))
    assert str(info.value) == "rule(s) job-match address the event's subject but ce_subject is missing"


def test_missing_subject_without_a_matching_rule_is_just_skipped(renderer: Renderer) -> None:
    status = _only_status(_route(renderer, _event(subject=None, data={**MATCH, "score": 1})))
    assert status.reason == "condition_false"


def test_unknown_recipient(renderer: Renderer) -> None:
    status = _only_status(_route(renderer, _event(tenant="acme"), recipient=None))
    assert status.state is State.skipped
    assert status.reason == "unknown_recipient"
    assert status.detail == "no recipient 'u-ada' in tenant 'acme'"
    assert status.recipient_id == "u-ada"


def test_recipient_problem(renderer: Renderer) -> None:
    problem = "stored recipient document is invalid: Invalid JSON"
    status = _only_status(_route(renderer, recipient=None, problem=problem))
    assert status.state is State.skipped
    assert status.reason == "recipient_invalid"
    assert status.detail == problem
    assert status.recipient_id == "u-ada"


def test_opt_out_skips_that_channel_only(renderer: Renderer) -> None:
    grace = ADA.model_copy(update={"id": "u-grace", "opt_out": frozenset({"webhook"})})
    decision = _route(renderer, _event(subject="u-grace"), recipient=grace)
    assert [d.channel for d in decision.deliveries] == ["email"]
    skipped = [s for s in decision.statuses if s.state is State.skipped]
    (opt_out,) = skipped
    assert opt_out.reason == "opt_out"
    assert opt_out.detail == "recipient opted out of webhook"
    assert (opt_out.channel, opt_out.recipient_id, opt_out.rule) == ("webhook", "u-grace", "job-match")
    assert opt_out.delivery_id is None
    routed = [s for s in decision.statuses if s.state is State.routed]
    assert [s.channel for s in routed] == ["email"]


def test_no_address_skips_that_channel_only(renderer: Renderer) -> None:
    kurt = Recipient(id="u-kurt", contacts={"email": "kurt@example.com"})
    decision = _route(renderer, _event(subject="u-kurt"), recipient=kurt)
    assert [d.channel for d in decision.deliveries] == ["email"]
    (skipped,) = [s for s in decision.statuses if s.state is State.skipped]
    assert skipped.reason == "no_address"
    assert skipped.detail == "no webhook contact point"
    assert skipped.channel == "webhook"


def test_every_channel_skipped_gives_no_delivery(renderer: Renderer) -> None:
    nobody = Recipient(id="u-ada", opt_out=frozenset({"email"}))
    decision = _route(renderer, recipient=nobody)
    assert decision.deliveries == []
    assert [(s.channel, s.reason) for s in decision.statuses] == [
        ("email", "opt_out"), ("webhook", "no_address"),
    ]


# -- routed --------------------------------------------------------------------------------


def test_routed_deliveries(renderer: Renderer) -> None:
    decision = _route(renderer)
    email, webhook = decision.deliveries
    assert email.channel == "email"
    assert webhook.channel == "webhook"
    for d, address in ((email, "ada@example.com"), (webhook, "https://hooks.example.com/ada")):
        assert d.delivery_id == delivery_id("/jobs/matcher", "evt-1", "job-match", "u-ada", d.channel)
        assert d.address == address
        assert (d.event_id, d.event_source, d.event_type, d.event_time) == (
            "evt-1", "/jobs/matcher", "jobs.match.found", WHEN,
        )
        assert (d.tenant, d.rule, d.recipient_id, d.locale, d.priority) == (
            "default", "job-match", "u-ada", "en", Priority.normal,
        )
        assert d.subject == "New match: Engineer at Acme (80%)"
        assert d.text.startswith("Hello Ada Lovelace,\n\nWe found a job that fits you: Engineer at Acme.")
        assert d.created_at == NOW
        assert d.deadline == NOW + DEADLINE
        assert d.attempt == 0
    assert email.html is not None
    assert "<strong>Engineer</strong>" in email.html
    assert webhook.html is None
    assert email.payload is None
    assert webhook.payload is not None


def test_one_routed_status_per_delivery(renderer: Renderer) -> None:
    decision = _route(renderer)
    assert decision.statuses == [Status.for_delivery(d, State.routed, at=NOW) for d in decision.deliveries]
    assert {s.delivery_id for s in decision.statuses} == {d.delivery_id for d in decision.deliveries}


def test_routing_is_deterministic(renderer: Renderer) -> None:
    assert _route(renderer) == _route(renderer)
    ids = [d.delivery_id for d in _route(renderer).deliveries]
    other = Event(ce=CloudEvent.new("jobs.match.found", source="/jobs/matcher", subject="u-ada", id="evt-2",
                                    time=WHEN), data=MATCH)
    assert set(ids).isdisjoint(d.delivery_id for d in _route(renderer, other).deliveries)


def test_webhook_payload_has_the_documented_fields(renderer: Renderer) -> None:
    data = {**MATCH, "location": None}
    webhook = _route(renderer, _event(data=data, tenant="acme")).deliveries[1]
    assert webhook.payload is not None
    body = json.loads(webhook.payload)
    assert body == {
        "id": webhook.delivery_id,
        "type": "jobs.match.found",
        "source": "/jobs/matcher",
        "event_id": "evt-1",
        "time": "2024-05-17T09:30:15.123Z",
        "tenant": "acme",
        "recipient": "u-ada",
        "rule": "job-match",
        "priority": "normal",
        "title": webhook.subject,
        "text": webhook.text,
        "data": data,
    }
    assert ", " not in webhook.payload.split('"data"')[0]  # compact separators


def test_webhook_payload_keeps_non_ascii_and_encodes_avro_only_values(renderer: Renderer) -> None:
    rules = _rules(channels=["webhook"])
    data = {**MATCH, "company": "Bäckerei Müller", "seen": datetime(2024, 1, 1, tzinfo=UTC),
            "logo": b"\x89PNG\x00", "price": Decimal("12.50")}
    (webhook,) = _route(renderer, _event(data=data), rules=rules).deliveries
    assert webhook.payload is not None
    assert "Bäckerei Müller" in webhook.payload
    sent = json.loads(webhook.payload)["data"]
    assert sent["seen"] == format_time(datetime(2024, 1, 1, tzinfo=UTC))
    assert base64.b64decode(sent["logo"]) == b"\x89PNG\x00"
    assert sent["price"] == "12.50"


def test_non_email_channels_get_the_payload_and_no_html(renderer: Renderer) -> None:
    rules = _rules(channels=["slack", "email"])
    ada = ADA.model_copy(update={"contacts": {**ADA.contacts, "slack": "#jobs"}})
    slack, email = _route(renderer, rules=rules, recipient=ada).deliveries
    assert (slack.channel, slack.address, slack.html) == ("slack", "#jobs", None)
    assert slack.payload is not None
    assert json.loads(slack.payload)["id"] == slack.delivery_id
    assert email.html is not None
    assert email.payload is None


def test_priority_and_deadline_come_from_the_rule_and_the_clock(renderer: Renderer) -> None:
    data = {"severity": "critical", "component": "db", "message": "down"}
    oncall = Recipient(id="oncall", contacts={"email": "oncall@example.com"})
    event = _event("system.alert", data=data, subject="oncall")
    decision = route(event, RULES.for_type("system.alert"), MINE, oncall, renderer, NOW, timedelta(minutes=5))
    (email,) = decision.deliveries
    assert email.priority is Priority.urgent
    assert email.deadline == NOW + timedelta(minutes=5)
    assert email.subject == "[CRITICAL] db: down"


def test_several_matching_rules_each_deliver(renderer: Renderer) -> None:
    rules = RuleSet.from_data({"rules": [
        {"name": "a", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match"},
        {"name": "b", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match",
         "when": "score > 90"},
        {"name": "c", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match",
         "priority": "high"},
    ]}).for_type("jobs.match.found")
    decision = _route(renderer, rules=rules)
    assert [(d.rule, d.priority) for d in decision.deliveries] == [
        ("a", Priority.normal), ("c", Priority.high),
    ]
    assert len({d.delivery_id for d in decision.deliveries}) == 2


def test_deliveries_survive_the_wire(renderer: Renderer) -> None:
    catalog = Catalog.load()
    for d in _route(renderer).deliveries:
        assert Delivery.decode(catalog, d.encode(catalog)) == d


# -- templates and locales ------------------------------------------------------------------


def test_template_error_propagates(renderer: Renderer) -> None:
    data = {k: v for k, v in MATCH.items() if k != "company"}
    with pytest.raises(TemplateError, match=r"template job_match/subject\.j2: .*'company'"):
        _route(renderer, _event(data=data))


def test_unknown_template_propagates(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match=r"template 'nope' has no subject\.j2"):
        _route(renderer, rules=_rules(template="nope"))


def test_german_template_for_de_at(renderer: Renderer) -> None:
    kurt = Recipient(id="u-kurt", name="Kurt Gödel", locale="de-AT", contacts={"email": "kurt@example.com"})
    (email,) = _route(renderer, _event(subject="u-kurt"), recipient=kurt).deliveries
    assert email.locale == "de-AT"
    assert email.subject == "Neuer Treffer: Engineer bei Acme (80 %)"
    assert email.text.startswith("Hallo Kurt Gödel,")
    assert email.html is not None  # no German html part: the default one


def test_recipient_name_defaults_to_the_id(renderer: Renderer) -> None:
    anon = Recipient(id="u-anon", contacts={"email": "a@example.com"})
    (email,) = _route(renderer, _event(subject="u-anon"), recipient=anon).deliveries
    assert email.text.startswith("Hello u-anon,")


def test_template_context(tmp_path: Path) -> None:
    folder = tmp_path / "ctx"
    folder.mkdir()
    (folder / "subject.j2").write_text("{{ rule.name }} {{ rule.priority }} {{ recipient.timezone }}")
    (folder / "text.j2").write_text(
        "{{ event.id }}|{{ event.source }}|{{ event.type }}|{{ event.time }}|{{ event.subject }}|"
        "{{ event.tenant }}|{{ recipient.id }}|{{ recipient.name }}|{{ recipient.locale }}|{{ data.score }}"
    )
    (email,) = _route(Renderer(tmp_path), rules=_rules(template="ctx", priority="high")).deliveries
    assert email.subject == "r high Europe/London"
    assert email.text == (
        "evt-1|/jobs/matcher|jobs.match.found|2024-05-17T09:30:15.123Z|u-ada|default|"
        "u-ada|Ada Lovelace|en|80.0\n"
    )


def test_event_context() -> None:
    ce = CloudEvent.new("t", source="/s", subject=None, id="i", tenant="acme", time=WHEN)
    assert event_context(ce) == {"id": "i", "source": "/s", "type": "t", "time": "2024-05-17T09:30:15.123Z",
                                 "subject": None, "tenant": "acme"}


# -- the in-app action link --------------------------------------------------------------


def test_the_rule_action_link_goes_with_the_in_app_delivery_only(renderer: Renderer) -> None:
    ada = ADA.model_copy(update={"contacts": {**ADA.contacts, "inapp": "on"}})
    rules = _rules(channels=["inapp", "email"],
                   action={"url": "https://jobs.example.com/matches/{{ match_id }}", "label": "View {{ job_title }}"})
    inapp, email = _route(renderer, rules=rules, recipient=ada).deliveries
    assert inapp.metadata == {"action_url": "https://jobs.example.com/matches/m-7", "action_label": "View Engineer"}
    assert email.metadata == {}


def test_an_action_without_label_gives_only_the_url(renderer: Renderer) -> None:
    ada = ADA.model_copy(update={"contacts": {**ADA.contacts, "inapp": "on"}})
    (inapp,) = _route(renderer, rules=_rules(channels=["inapp"], action={"url": "/matches/{{ match_id }}"}),
                      recipient=ada).deliveries
    assert inapp.metadata == {"action_url": "/matches/m-7"}


def test_an_action_that_cannot_render_names_the_rule(renderer: Renderer) -> None:
    ada = ADA.model_copy(update={"contacts": {**ADA.contacts, "inapp": "on"}})
    rules = _rules(channels=["inapp"], action={"url": "/jobs/{{ no_such_field }}"})
    with pytest.raises(ActionError, match=r"rule r: action failed: .*no_such_field"):
        _route(renderer, rules=rules, recipient=ada)
    with pytest.raises(ActionError, match="rendered empty"):
        _route(renderer, rules=_rules(channels=["inapp"], action={"url": "{{ '' }}"}), recipient=ada)


def test_an_action_template_that_does_not_parse_fails_at_load() -> None:
    with pytest.raises(ConfigError, match=r"action template .* does not parse"):
        _rules(channels=["inapp"], action={"url": "/jobs/{{ match_id"})
