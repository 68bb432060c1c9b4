from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from router.recipients import Recipient, RecipientError, contact_problem, parse_documents, read_file
from schemas.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "recipients.yaml"

ADA: dict[str, Any] = {
    "id": "u-ada", "name": "Ada Lovelace", "locale": "en", "timezone": "Europe/London",
    "contacts": {"email": "ada@example.com", "webhook": "https://hooks.example.com/ada"},
}


def _refused(entries: Any, origin: str = "people.yaml") -> RecipientError:
    with pytest.raises(RecipientError) as info:
        parse_documents(entries, origin)
    return info.value


# -- the demo file ----------------------------------------------------------------


def test_demo_file_reads() -> None:
    people = read_file(DEMO)
    assert [p.id for p in people] == ["u-ada", "u-grace", "u-kurt", "u-edsger", "oncall"]
    assert {p.tenant for p in people} == {"default"}
    ada, grace, kurt, _, oncall = people
    assert ada == Recipient(
        id="u-ada", name="Ada Lovelace", locale="en", timezone="Europe/London",
        contacts={"email": "ada@example.com", "webhook": "http://127.0.0.1:8025/hooks/ada"},
    )
    assert grace.opted_out("webhook") is True
    assert grace.opted_out("email") is False
    assert kurt.name == "Kurt Gödel"
    assert kurt.locale == "de-AT"
    assert kurt.address("webhook") is None
    assert kurt.address("email") == "kurt@example.com"
    assert oncall.locale == "en"
    assert oncall.timezone == "UTC"


def test_demo_file_parses_the_same_from_its_documents() -> None:
    raw = yaml.safe_load(DEMO.read_text())
    assert parse_documents(raw, "demo") == read_file(DEMO)
    assert parse_documents(raw["recipients"], "demo") == read_file(DEMO)


# -- the model ------------------------------------------------------------------------


def test_defaults() -> None:
    r = Recipient(id="u-1")
    assert (r.tenant, r.name, r.locale, r.timezone, r.contacts, r.opt_out) == (
        "default", None, "en", "UTC", {}, frozenset(),
    )
    assert r.address("email") is None


def test_json_round_trip_is_canonical() -> None:
    r = Recipient.model_validate({**ADA, "opt_out": ["webhook", "sms"], "tenant": "acme"})
    text = r.to_json()
    assert Recipient.from_json(text) == r
    assert Recipient.from_json(text.encode()) == r
    doc = json.loads(text)
    assert list(doc) == sorted(doc)
    assert sorted(doc["opt_out"]) == ["sms", "webhook"]
    assert " " not in text.replace("Ada Lovelace", "")


def test_recipient_is_frozen() -> None:
    r = Recipient(id="u-1")
    with pytest.raises(ValidationError):
        r.locale = "de"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("channel", "address", "problem"),
    [
        ("email", "ada@example.com", None),
        ("email", "ada.example.com", "an email address needs exactly one '@' and no spaces"),
        ("email", "ada@@example.com", "an email address needs exactly one '@' and no spaces"),
        ("email", "a@b@example.com", "an email address needs exactly one '@' and no spaces"),
        ("email", "ada lovelace@example.com", "an email address needs exactly one '@' and no spaces"),
        ("email", "ada@exa\tmple.com", "an email address needs exactly one '@' and no spaces"),
        ("email", "", "empty contact point"),
        ("email", "   ", "empty contact point"),
        ("webhook", "https://hooks.example.com/x", None),
        ("webhook", "http://127.0.0.1:8025/hooks/ada", None),
        ("webhook", "ftp://hooks.example.com/x", "a webhook contact must be an http(s) URL with a host"),
        ("webhook", "hooks.example.com/x", "a webhook contact must be an http(s) URL with a host"),
        ("webhook", "https:///path-only", "a webhook contact must be an http(s) URL with a host"),
        ("webhook", "javascript:alert(1)", "a webhook contact must be an http(s) URL with a host"),
        ("sms", "+43 1 234", None),
    ],
)
def test_contact_problem(channel: str, address: str, problem: str | None) -> None:
    assert contact_problem(channel, address) == problem


# -- invalid entries: position and id in the message -------------------------------------


@pytest.mark.parametrize(
    ("bad", "where", "text"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone", "'Mars/Olympus_Mons' is not an IANA time zone"),
        ({"timezone": "../../etc/passwd"}, "timezone", "is not an IANA time zone"),
        ({"timezone": ""}, "timezone", "is not an IANA time zone"),
        ({"locale": "english!"}, "locale", "'english!' is not a BCP 47 language tag"),
        ({"locale": "e"}, "locale", "is not a BCP 47 language tag"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"contacts": {"email": "ada.example.com"}}, "entry",
         "contacts.email: an email address needs exactly one '@' and no spaces"),
        ({"contacts": {"email": "ada love@example.com"}}, "entry",
         "contacts.email: an email address needs exactly one '@' and no spaces"),
        ({"contacts": {"webhook": "ftp://example.com/hook"}}, "entry",
         "contacts.webhook: a webhook contact must be an http(s) URL with a host"),
        ({"contacts": {"webhook": "/hooks/ada"}}, "entry",
         "contacts.webhook: a webhook contact must be an http(s) URL with a host"),
        ({"contacts": {"email": 5}}, "contacts.email", "Input should be a valid string"),
        ({"tenant": "a b"}, "tenant", "'a b' is not a valid identifier"),
    ],
)
def test_each_invalid_kind_is_refused_with_position_and_id(bad: dict[str, Any], where: str,
                                                           text: str) -> None:
    good = {"id": "u-ok", "contacts": {"email": "ok@example.com"}}
    err = _refused([good, good | {"id": "u-2"}, {"id": "u-bad", **bad}])
    assert err.position == 3
    message = str(err)
    assert message.startswith(f"people.yaml: entry #3 (id 'u-bad'): {where}: ")
    assert text in message
    assert isinstance(err, InputError)


def test_invalid_id_is_named() -> None:
    err = _refused([{"id": "has space"}])
    assert err.position == 1
    assert str(err).startswith("people.yaml: entry #1 (id 'has space'): id: ")


def test_overlong_id() -> None:
    err = _refused([{"id": "u" * 201}])
    assert "at most 200" in str(err)
    assert parse_documents([{"id": "u" * 200}], "f")[0].id == "u" * 200


def test_missing_id_has_no_id_label() -> None:
    err = _refused([ADA, {"name": "Nobody"}])
    assert str(err) == "people.yaml: entry #2: id: Field required"
    assert err.position == 2


def test_entry_that_is_not_a_mapping() -> None:
    err = _refused([ADA, "u-grace"])
    assert err.position == 2
    assert str(err).startswith("people.yaml: entry #2: entry: ")


def test_duplicate_id() -> None:
    err = _refused([ADA, {"id": "u-b"}, {"id": "u-ada"}])
    assert str(err) == "people.yaml: entry #3: duplicate id 'u-ada'"
    assert err.position == 3


def test_same_id_in_two_tenants_is_not_a_duplicate() -> None:
    people = parse_documents([{"id": "u-1"}, {"id": "u-1", "tenant": "acme"}], "f")
    assert [(p.tenant, p.id) for p in people] == [("default", "u-1"), ("acme", "u-1")]


@pytest.mark.parametrize("raw", [None, "u-ada", 5, {"people": []}, {"recipients": {"id": "u"}}])
def test_not_a_list(raw: Any) -> None:
    err = _refused(raw)
    assert str(err) == "people.yaml: expected a list of recipients (or a mapping with 'recipients')"
    assert err.position is None


def test_first_invalid_entry_is_reported() -> None:
    err = _refused([ADA, {"id": "u-2", "locale": "!!"}, {"id": "u-3", "timezone": "Nowhere"}])
    assert err.position == 2
    assert "(id 'u-2')" in str(err)


def test_empty_list_is_fine() -> None:
    assert parse_documents([], "f") == []
    assert parse_documents({"recipients": []}, "f") == []


# -- files ---------------------------------------------------------------------------------


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    path.write_text(json.dumps([ADA, {"id": "u-2", "tenant": "acme", "opt_out": ["email"]}]))
    people = read_file(path)
    assert people[0] == Recipient.model_validate(ADA)
    assert people[1].tenant == "acme"
    assert people[1].opted_out("email")


def test_json_file_with_a_recipients_mapping(tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    path.write_text(json.dumps({"recipients": [ADA]}))
    assert [p.id for p in read_file(path)] == ["u-ada"]


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "people.yml"
    path.write_text(
        "- id: u-1\n  locale: de_AT\n  timezone: Europe/Vienna\n  contacts: {email: k@example.com}\n"
    )
    (person,) = read_file(path)
    assert (person.id, person.locale, person.timezone) == ("u-1", "de_AT", "Europe/Vienna")


def test_invalid_entry_in_a_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    path.write_text(json.dumps([ADA, {"id": "u-2", "timezone": "Mars/Base"}]))
    with pytest.raises(RecipientError, match=f"^{path}: entry #2 \\(id 'u-2'\\): timezone: "):
        read_file(path)


def test_json_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    path.write_text("id: u-1\n")  # YAML, but the suffix says JSON
    with pytest.raises(RecipientError, match=f"^{path}: not valid JSON: "):
        read_file(path)


def test_yaml_file_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "people.yaml"
    path.write_text("- id: [u-1\n")
    with pytest.raises(RecipientError, match=f"^{path}: not valid YAML: "):
        read_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.yaml: No such file"):
        read_file(tmp_path / "nope.yaml")
