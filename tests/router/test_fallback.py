"""Channel fallback: rule validation, the steps the router attaches, and the pure decisions."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from router import keys
from router.decision import Decision, Event, route
from router.fallback import (
    Step,
    UnreadFallback,
    encode_steps,
    next_after_failure,
    released,
    steps_of,
    unread_step,
    unread_verdict,
)
from router.recipients import Recipient
from router.rules import RuleSet
from router.state import Claim, View
from router.templates import Renderer
from schemas import Catalog, CloudEvent, Delivery
from schemas.errors import ConfigError, DecodeError

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 17, 10, 0, tzinfo=UTC)
DEADLINE = timedelta(hours=24)
DATA = {"user_id": "u-ada", "match_id": "m-7", "job_title": "Engineer", "company": "Acme", "score": 80.0,
        "location": "Berlin", "is_remote": False}
ADA = Recipient(id="u-ada", locale="en", timezone="Europe/London",
                contacts={"email": "ada@example.com", "webhook": "https://hooks.example.com/ada",
                          "sms": "+447700900123", "inapp": "on"})


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(REPO / "config" / "templates")


def _ruleset(**rule: Any) -> RuleSet:
    base = {"name": "r", "event_type": "jobs.match.found", "channels": ["webhook"], "template": "job_match"}
    return RuleSet.from_data({"rules": [{**base, **rule}]})


def _decide(renderer: Renderer, recipient: Recipient = ADA, view: View | None = None, **rule: Any) -> Decision:
    ce = CloudEvent.new("jobs.match.found", source="/jobs", subject="u-ada", id="evt-1", time=NOW)
    rules = _ruleset(**rule).for_type("jobs.match.found")
    return route(Event(ce=ce, data=DATA, category="jobs"), rules, Claim("o", True), recipient, renderer, NOW,
                 DEADLINE, view=view or View())


# -- rules ------------------------------------------------------------------------------


def test_a_rule_names_chains_and_an_unread_fallback() -> None:
    rules = _ruleset(channels=["webhook", "inapp"], fallback={"webhook": ["sms", "email"]},
                     unread_fallback={"after": "30m", "channel": "email"})
    rule = rules.rules[0]
    assert rule.chains == {"webhook": ("sms", "email")}
    assert rule.unread_fallback == UnreadFallback(after=timedelta(minutes=30), channel="email")
    # Fallback channels count as the rules' channels: `tidings check` and topic creation see them.
    assert rules.channels == {"webhook", "inapp", "sms", "email"}


@pytest.mark.parametrize(("rule", "message"), [
    ({"fallback": {"email": ["sms"]}}, "fallback for 'email', which is not one of the rule's channels"),
    ({"fallback": {"webhook": ["webhook"]}}, "fallback for 'webhook' names 'webhook' itself"),
    ({"fallback": {"webhook": ["sms", "email", "sms"]}}, "names sms twice (a chain may not loop)"),
    ({"fallback": {"webhook": []}}, "fallback for 'webhook' names no channel"),
    ({"fallback": {"webhook": ["Not A Channel"]}}, "channel name 'Not A Channel' is not valid"),
    ({"unread_fallback": {"after": "5m"}}, "unread_fallback needs inapp among the rule's channels"),
    ({"channels": ["inapp"], "unread_fallback": {"after": "5m", "channel": "inapp"}},
     "unread_fallback cannot send through inapp itself"),
    ({"channels": ["inapp"], "unread_fallback": {"after": "soon"}}, "must look like 90s"),
    ({"channels": ["inapp"], "unread_fallback": {"after": "5m", "channel": "email", "when": "x"}},
     "Extra inputs are not permitted"),
])
def test_a_bad_fallback_is_refused_at_load_naming_the_problem(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="rule #1") as err:
        _ruleset(**rule)
    assert message in str(err.value)


# -- what the router attaches ---------------------------------------------------------------


def test_the_router_renders_every_reachable_step_with_the_primary(renderer: Renderer) -> None:
    decision = _decide(renderer, fallback={"webhook": ["sms", "email"]})
    [webhook] = decision.deliveries
    steps = steps_of(webhook)
    assert [(s.trigger, s.delivery.channel, s.delivery.address) for s in steps] == [
        ("failed", "sms", "+447700900123"), ("failed", "email", "ada@example.com")]
    email = steps[1].delivery
    # The same rendering as a direct delivery on that channel: same id, html for email only.
    direct = _decide(renderer, channels=["email"]).deliveries[0]
    assert email.delivery_id == direct.delivery_id
    assert (email.subject, email.text, email.html) == (direct.subject, direct.text, direct.html)
    assert steps[0].delivery.html is None and steps[0].delivery.payload is not None
    # Nothing else changed: one routed status, for the primary.
    assert [(s.state.value, s.channel) for s in decision.statuses] == [("routed", "webhook")]


def test_a_fallback_channel_renders_with_its_own_template_files(tmp_path: Path) -> None:
    shutil.copytree(REPO / "config" / "templates", tmp_path / "templates")
    (tmp_path / "templates" / "job_match" / "text@sms.j2").write_text("Match: {{ data.job_title }}")
    [d] = _decide(Renderer(tmp_path / "templates"), fallback={"webhook": ["sms", "email"]}).deliveries
    sms, email = (s.delivery for s in steps_of(d))
    assert sms.text.strip() == "Match: Engineer"
    assert email.text != sms.text and "Engineer" in email.text


def test_a_step_the_recipient_cannot_be_reached_on_is_left_out(renderer: Renderer) -> None:
    no_sms = ADA.model_copy(update={"contacts": {k: v for k, v in ADA.contacts.items() if k != "sms"}})
    [d] = _decide(renderer, no_sms, fallback={"webhook": ["sms", "email"]}).deliveries
    assert [s.delivery.channel for s in steps_of(d)] == ["email"]
    opted = ADA.model_copy(update={"opt_out": ["email"]})
    [d] = _decide(renderer, opted, fallback={"webhook": ["sms", "email"]}).deliveries
    assert [s.delivery.channel for s in steps_of(d)] == ["sms"]
    view = View(prefs={keys.prefs("default", "u-ada"): {"sms/*": "off", "email/*": "off"}})
    [d] = _decide(renderer, view=view, fallback={"webhook": ["sms", "email"]}).deliveries
    assert d.fallback is None
    # A required rule ignores preferences for its fallbacks as for its channels.
    [d] = _decide(renderer, view=view, required=True, fallback={"webhook": ["sms", "email"]}).deliveries
    assert [s.delivery.channel for s in steps_of(d)] == ["sms", "email"]


def test_only_the_inapp_delivery_carries_the_unread_step(renderer: Renderer) -> None:
    decision = _decide(renderer, channels=["inapp", "webhook"],
                       unread_fallback={"after": "2s", "channel": "email"})
    inapp, webhook = decision.deliveries
    assert webhook.fallback is None
    step = unread_step(inapp)
    assert step is not None and step.after == timedelta(seconds=2)
    assert (step.trigger, step.delivery.channel, step.delivery.address) == ("unread", "email", "ada@example.com")
    assert next_after_failure(inapp, NOW) is None  # an unread step is not a failure step


def test_a_held_delivery_keeps_its_fallback(renderer: Renderer) -> None:
    decision = _decide(renderer, delay="15m", fallback={"webhook": ["email"]})
    [hold] = decision.holds
    back = Delivery.model_validate_json(hold.delivery.model_dump_json())
    assert [s.delivery.channel for s in steps_of(back)] == ["email"]


def test_the_fallback_survives_the_avro_round_trip_and_old_records_still_decode(renderer: Renderer) -> None:
    catalog = Catalog.load()
    [d] = _decide(renderer, fallback={"webhook": ["sms", "email"]}).deliveries
    again = Delivery.decode(catalog, d.encode(catalog))
    assert again == d and len(steps_of(again)) == 2
    old = catalog.by_fingerprint  # the previous writer schema is in schemas/history
    assert any(s.name == "tidings.internal.Delivery" and "fallback" not in s.field_names for s in old.values())


# -- the decisions ----------------------------------------------------------------------


def _chain(renderer: Renderer) -> Delivery:
    [d] = _decide(renderer, fallback={"webhook": ["sms", "email"]}).deliveries
    return d


def test_a_failure_moves_down_the_chain_carrying_the_rest(renderer: Renderer) -> None:
    webhook = _chain(renderer)
    later = NOW + timedelta(hours=30)  # past the primary's own deadline: the next one gets its own time
    sms = next_after_failure(webhook, later)
    assert sms is not None and sms.channel == "sms" and sms.attempt == 0
    assert sms.deadline == later + DEADLINE
    assert [s.delivery.channel for s in steps_of(sms)] == ["email"]
    email = next_after_failure(sms, later)
    assert email is not None and email.channel == "email" and email.fallback is None
    assert next_after_failure(email, later) is None


def test_a_delivery_without_a_chain_has_no_next(renderer: Renderer) -> None:
    [d] = _decide(renderer).deliveries
    assert d.fallback is None and next_after_failure(d, NOW) is None and unread_step(d) is None


def test_an_unreadable_fallback_is_a_decode_error(renderer: Renderer) -> None:
    d = _chain(renderer)
    for bad in ("{", '{"a": 1}', '[{"trigger": "later"}]', '[{"trigger": "failed", "delivery": {}}]'):
        with pytest.raises(DecodeError):
            next_after_failure(d.model_copy(update={"fallback": bad}), NOW)


def test_unread_verdicts_and_release_deadline(renderer: Renderer) -> None:
    assert (unread_verdict(True), unread_verdict(False), unread_verdict(None)) == ("send", "read", "gone")
    email = steps_of(_chain(renderer))[1].delivery
    step = Step("unread", email, timedelta(hours=30))
    out = released(step, NOW + timedelta(hours=30))
    assert out.deadline == NOW + timedelta(hours=30) + DEADLINE and out.delivery_id == email.delivery_id
    assert encode_steps([]) is None
