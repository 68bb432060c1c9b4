"""The routing features of the pure decision, fed plain values (no Redis, no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from router import keys
from router.caps import CapBook, counters
from router.decision import Decision, Event, add_needs, route
from router.dedup import content_digest, digest
from router.quiet_hours import QuietHours
from router.recipients import Recipient
from router.rules import CompiledRule, RuleSet
from router.state import Claim, Needs, View
from router.templates import Renderer
from schemas import CloudEvent, Priority, State
from schemas.models import event_key

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 17, 10, 0, tzinfo=UTC)
DEADLINE = timedelta(hours=24)
MINE = Claim("events:0:1", True)
DATA = {"user_id": "u-ada", "match_id": "m-7", "job_title": "Engineer", "company": "Acme", "score": 80.0,
        "location": "Berlin", "is_remote": False}
ADA = Recipient(id="u-ada", locale="en", timezone="Europe/London",
                contacts={"email": "ada@example.com", "webhook": "https://hooks.example.com/ada"})
OWNER = event_key("/jobs", "evt-1")


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(REPO / "config" / "templates")


def _ruleset(caps: list[dict[str, Any]] | None = None, **rule: Any) -> RuleSet:
    base = {"name": "r", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match"}
    return RuleSet.from_data({"rules": [{**base, **rule}], "caps": caps or []})


def _rules(**rule: Any) -> list[CompiledRule]:
    return _ruleset(**rule).for_type("jobs.match.found")


def _event(deliver_at: datetime | None = None, **data: Any) -> Event:
    ce = CloudEvent.new("jobs.match.found", source="/jobs", subject="u-ada", id="evt-1", time=NOW)
    return Event(ce=ce, data={**DATA, **data}, category="jobs", deliver_at=deliver_at)


def _decide(renderer: Renderer, rules: list[CompiledRule], view: View | None = None, *,
            recipient: Recipient = ADA, event: Event | None = None, now: datetime = NOW,
            ruleset: RuleSet | None = None) -> Decision:
    return route(event or _event(), rules, MINE, recipient, renderer, now, DEADLINE, view=view or View(),
                 limits=ruleset.caps if ruleset else ())


def _outcomes(decision: Decision) -> list[tuple[str, str | None, str | None]]:
    return [(s.state.value, s.reason, s.channel) for s in decision.statuses]


# -- preferences --------------------------------------------------------------------------


def test_a_user_preference_turns_a_channel_off(renderer: Renderer) -> None:
    view = View(prefs={keys.prefs("default", "u-ada"): {"email/category:jobs": "off"}})
    decision = _decide(renderer, _rules(channels=["email", "webhook"]), view)
    assert _outcomes(decision) == [("skipped", "preference", "email"), ("routed", None, "webhook")]
    assert decision.statuses[0].detail == "turned off by user email/category:jobs"


def test_tenant_and_global_defaults_apply_when_the_user_says_nothing(renderer: Renderer) -> None:
    view = View(prefs={keys.tenant_prefs(keys.GLOBAL): {"*/type:jobs.match.found": "off"}})
    assert _outcomes(_decide(renderer, _rules(), view)) == [("skipped", "preference", "email")]
    view.prefs[keys.tenant_prefs("default")] = {"email/*": "on"}
    assert _outcomes(_decide(renderer, _rules(), view)) == [("routed", None, "email")]
    view.prefs[keys.prefs("default", "u-ada")] = {"*/*": "off"}
    assert _outcomes(_decide(renderer, _rules(), view)) == [("skipped", "preference", "email")]


def test_required_rules_ignore_preferences_and_opt_outs(renderer: Renderer) -> None:
    view = View(prefs={keys.prefs("default", "u-ada"): {"*/*": "off"}})
    opted = ADA.model_copy(update={"opt_out": frozenset({"email"})})
    decision = _decide(renderer, _rules(required=True), view, recipient=opted)
    assert _outcomes(decision) == [("routed", None, "email")]


def test_rule_category_overrides_the_schema_category(renderer: Renderer) -> None:
    view = View(prefs={keys.prefs("default", "u-ada"): {"email/category:security": "off"}})
    assert _outcomes(_decide(renderer, _rules(), view)) == [("routed", None, "email")]
    assert _outcomes(_decide(renderer, _rules(category="security"), view)) == [("skipped", "preference", "email")]


# -- audience -------------------------------------------------------------------------------


def test_subscribers_rules_are_left_for_the_fan_out(renderer: Renderer) -> None:
    ruleset = RuleSet.from_data({"rules": [
        {"name": "direct", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match"},
        {"name": "fans", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match",
         "audience": "subscribers", "topic": "company:{{ data.company }}"},
    ]})
    rules = ruleset.for_type("jobs.match.found")
    decision = _decide(renderer, rules)
    assert [r.rule.name for r in decision.fanouts] == ["fans"]
    assert [d.rule for d in decision.deliveries] == ["direct"]
    assert rules[1].topic(DATA, {}) == "company:Acme"
    assert rules[0].topic(DATA, {}) == "jobs.match.found"


def test_a_subscribers_only_event_needs_no_subject(renderer: Renderer) -> None:
    rules = _rules(audience="subscribers")
    ce = CloudEvent.new("jobs.match.found", source="/jobs", id="evt-1", time=NOW)
    decision = route(Event(ce=ce, data=DATA), rules, MINE, None, renderer, NOW, DEADLINE)
    assert decision.statuses == [] and len(decision.fanouts) == 1


def test_topic_only_with_subscribers() -> None:
    with pytest.raises(Exception, match="topic applies to audience: subscribers"):
        _rules(topic="x")


# -- dedup strategies ----------------------------------------------------------------------


def _claim_key(rule: str, key: str) -> str:
    return keys.dedup("default", "u-ada", rule, digest(key))


def test_key_window_needs_a_claim_and_suppresses_when_someone_else_holds_it(renderer: Renderer) -> None:
    rules = _rules(channels=["email", "webhook"],
                   dedup={"strategy": "key_window", "key": "{{ event.subject }}:{{ data.match_id }}",
                          "window": "24h"})
    needs = Needs()
    add_needs(needs, _event(), rules[0], "default", "u-ada", (), NOW)
    ckey = _claim_key("r", "u-ada:m-7")
    assert needs.claims == {(ckey, OWNER): 86400}
    mine = View(claims={(ckey, OWNER): Claim(OWNER, True)})
    assert [s.state for s in _decide(renderer, rules, mine).statuses] == [State.routed, State.routed]
    other = View(claims={(ckey, OWNER): Claim("abc", False)})
    decision = _decide(renderer, rules, other)
    assert _outcomes(decision) == [("deduplicated", "dedup_window", "email"),
                                   ("deduplicated", "dedup_window", "webhook")]
    assert "'u-ada:m-7' already used by event abc" in (decision.statuses[0].detail or "")


def test_once_ever_claims_without_expiry(renderer: Renderer) -> None:
    rules = _rules(dedup={"strategy": "once_ever", "key": "{{ data.match_id }}"})
    needs = Needs()
    add_needs(needs, _event(), rules[0], "default", "u-ada", (), NOW)
    assert needs.claims == {(_claim_key("r", "m-7"), OWNER): None}
    view = View(claims={(_claim_key("r", "m-7"), OWNER): Claim("earlier", False)})
    assert _outcomes(_decide(renderer, rules, view)) == [("deduplicated", "once_ever", "email")]


def test_content_change_sends_only_new_content(renderer: Renderer) -> None:
    rules = _rules(dedup={"strategy": "content_change", "key": "{{ data.match_id }}", "resend_after": "7d"})
    ckey = keys.content("default", "u-ada", "r", "email", digest("m-7"))
    first = _decide(renderer, rules, View(content={ckey: None}))
    assert _outcomes(first) == [("routed", None, "email")]
    [(key, value, ttl)] = first.content
    (d,) = first.deliveries
    assert (key, value, ttl) == (ckey, content_digest(d.subject, d.text, d.html), 7 * 86400)
    same = _decide(renderer, rules, View(content={ckey: value}))
    assert _outcomes(same) == [("deduplicated", "content_unchanged", "email")] and same.content == []
    changed = _decide(renderer, rules, View(content={ckey: value}), event=_event(job_title="Architect"))
    assert _outcomes(changed) == [("routed", None, "email")]


# -- frequency caps ------------------------------------------------------------------------

CAPS = [{"channel": "email", "per_hour": 2}]


def test_caps_count_across_rules_and_drop_over_the_cap(renderer: Renderer) -> None:
    ruleset = RuleSet.from_data({"caps": CAPS, "rules": [
        {"name": f"r{i}", "event_type": "jobs.match.found", "channels": ["email"], "template": "job_match"}
        for i in range(3)]})
    decision = _decide(renderer, ruleset.for_type("jobs.match.found"), ruleset=ruleset)
    assert _outcomes(decision) == [("routed", None, "email"), ("routed", None, "email"),
                                   ("skipped", "frequency_cap", "email")]
    assert decision.statuses[2].detail == "over the cap email/*/hour<=2"


def test_stored_counts_and_defer_to_digest(renderer: Renderer) -> None:
    ruleset = _ruleset(caps=CAPS, over_cap="digest")
    [counter] = counters(ruleset.caps, "default", "u-ada", "email", "jobs", NOW)
    view = View(caps=CapBook.from_counts({counter.key: 2}))
    decision = _decide(renderer, ruleset.for_type("jobs.match.found"), view, ruleset=ruleset)
    assert _outcomes(decision) == [("held", "frequency_cap", "email")]
    [add] = decision.digests
    assert add.bucket == "default|u-ada|r|email|hourly"
    assert add.due == datetime(2024, 5, 17, 11, 0, tzinfo=UTC)


def test_urgent_bypasses_caps(renderer: Renderer) -> None:
    ruleset = _ruleset(caps=CAPS, priority="urgent")
    [counter] = counters(ruleset.caps, "default", "u-ada", "email", "jobs", NOW)
    view = View(caps=CapBook.from_counts({counter.key: 99}))
    decision = _decide(renderer, ruleset.for_type("jobs.match.found"), view, ruleset=ruleset)
    assert _outcomes(decision) == [("routed", None, "email")] and view.caps.taken == {}
    needs = Needs()
    add_needs(needs, _event(), ruleset.for_type("jobs.match.found")[0], "default", "u-ada", ruleset.caps, NOW)
    assert needs.caps == set()


def test_what_a_batch_sends_is_counted_for_the_write(renderer: Renderer) -> None:
    ruleset = _ruleset(caps=CAPS)
    view = View()
    _decide(renderer, ruleset.for_type("jobs.match.found"), view, ruleset=ruleset)
    [counter] = counters(ruleset.caps, "default", "u-ada", "email", "jobs", NOW)
    assert view.caps.taken == {counter.key: 1}


# -- quiet hours, schedule, digests, staleness ----------------------------------------------

NIGHT = QuietHours(start=time(22, 0), end=time(7, 0))
SLEEPING = ADA.model_copy(update={"quiet_hours": NIGHT, "timezone": "Europe/Berlin"})
AT_NIGHT = datetime(2024, 5, 17, 23, 0, tzinfo=UTC)  # 01:00 in Berlin
MORNING = datetime(2024, 5, 18, 5, 0, tzinfo=UTC)  # 07:00 in Berlin


def test_quiet_hours_hold_until_the_window_ends(renderer: Renderer) -> None:
    decision = _decide(renderer, _rules(), recipient=SLEEPING, now=AT_NIGHT)
    assert _outcomes(decision) == [("held", "quiet_hours", "email")]
    [hold] = decision.holds
    assert (hold.kind, hold.due) == ("quiet_hours", MORNING)
    assert hold.delivery.deadline == MORNING + DEADLINE
    assert decision.deliveries == []


def test_quiet_hours_as_one_digest(renderer: Renderer) -> None:
    decision = _decide(renderer, _rules(quiet_hours="digest"), recipient=SLEEPING, now=AT_NIGHT)
    [add] = decision.digests
    assert (add.bucket, add.due) == ("default|u-ada|r|email|quiet", MORNING)


def test_quiet_hours_ignored_by_rule_or_urgent(renderer: Renderer) -> None:
    assert _outcomes(_decide(renderer, _rules(quiet_hours="ignore"), recipient=SLEEPING, now=AT_NIGHT)) == [
        ("routed", None, "email")]
    urgent = _decide(renderer, _rules(priority="urgent"), recipient=SLEEPING, now=AT_NIGHT)
    assert _outcomes(urgent) == [("routed", None, "email")]
    assert urgent.deliveries[0].priority is Priority.urgent


def test_stale_deadline_drops_what_would_arrive_too_late(renderer: Renderer) -> None:
    event = _event()
    ce = CloudEvent.new("jobs.match.found", source="/jobs", subject="u-ada", id="evt-1", time=AT_NIGHT)
    event = Event(ce=ce, data=event.data, category="jobs")
    decision = _decide(renderer, _rules(stale_after="2h"), recipient=SLEEPING, now=AT_NIGHT, event=event)
    assert _outcomes(decision) == [("skipped", "stale", "email")]
    assert decision.holds == []
    kept = _decide(renderer, _rules(stale_after="8h"), recipient=SLEEPING, now=AT_NIGHT, event=event)
    assert _outcomes(kept) == [("held", "quiet_hours", "email")]


def test_scheduled_sends_hold_until_asked(renderer: Renderer) -> None:
    at = NOW + timedelta(hours=2)
    decision = _decide(renderer, _rules(), event=_event(deliver_at=at))
    assert _outcomes(decision) == [("held", "scheduled", "email")]
    assert [(h.kind, h.due) for h in decision.holds] == [("scheduled", at)]
    delayed = _decide(renderer, _rules(delay="15m"))
    assert [(h.kind, h.due) for h in delayed.holds] == [("scheduled", NOW + timedelta(minutes=15))]
    past = _decide(renderer, _rules(), event=_event(deliver_at=NOW - timedelta(minutes=1)))
    assert _outcomes(past) == [("routed", None, "email")]


def test_several_cadences_for_one_rule(renderer: Renderer) -> None:
    rules = _rules(channels=["email", "webhook"], digests=[
        {"channel": "webhook", "every": "hourly"},
        {"channel": "email", "every": "daily", "at": "08:00", "max_items": 5}])
    decision = _decide(renderer, rules)
    assert _outcomes(decision) == [("held", "digest", "email"), ("held", "digest", "webhook")]
    by_bucket = {d.bucket: (d.due, d.max_items) for d in decision.digests}
    assert by_bucket == {
        "default|u-ada|r|email|daily": (datetime(2024, 5, 18, 7, 0, tzinfo=UTC), 5),  # 08:00 London (BST)
        "default|u-ada|r|webhook|hourly": (datetime(2024, 5, 17, 11, 0, tzinfo=UTC), 50),
    }


def test_digest_rules_are_validated() -> None:
    with pytest.raises(Exception, match="not one of the rule's channels"):
        _rules(digests=[{"channel": "sms", "every": "hourly"}])
    with pytest.raises(Exception, match="one digest cadence per channel"):
        _rules(digests=[{"channel": "email", "every": "hourly"}, {"channel": "email", "every": "daily"}])


def test_recipient_free_renderings_are_shared_within_a_view(renderer: Renderer, tmp_path: Path) -> None:
    (tmp_path / "news").mkdir()
    (tmp_path / "news" / "subject.j2").write_text("{{ data.company }} news")
    (tmp_path / "news" / "text.j2").write_text("{{ data.job_title }}")
    shared = Renderer(tmp_path)
    rules = _rules(template="news")
    view = View()
    first = route(_event(), rules, MINE, ADA, shared, NOW, DEADLINE, view=view)
    assert len(view.rendered) == 1
    grace = ADA.model_copy(update={"id": "u-grace"})
    second = route(_event(), rules, MINE, grace, shared, NOW, DEADLINE, view=view)
    assert len(view.rendered) == 1
    assert (first.deliveries[0].subject, second.deliveries[0].subject) == ("Acme news", "Acme news")
    # job_match greets by name: never shared.
    personal = View()
    route(_event(), _rules(), MINE, ADA, renderer, NOW, DEADLINE, view=personal)
    assert personal.rendered == {}


def test_each_channel_gets_its_own_variant_of_the_template(tmp_path: Path) -> None:
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "subject.j2").write_text("{{ data.job_title }} at {{ data.company }}")
    (tmp_path / "short" / "text.j2").write_text("A long text for {{ recipient.name }}")
    (tmp_path / "short" / "text@webhook.j2").write_text("short")
    decision = route(_event(), _rules(template="short", channels=["email", "webhook"]), MINE, ADA,
                     Renderer(tmp_path), NOW, DEADLINE)
    texts = {d.channel: d.text for d in decision.deliveries}
    assert texts == {"email": "A long text for u-ada\n", "webhook": "short\n"}
