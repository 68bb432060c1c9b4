from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import SecurityError

from router.rules import RuleSet
from router.templates import DEFAULT_LOCALE, PARTS, REQUIRED_PARTS, Rendered, Renderer, locale_chain
from schemas.errors import ConfigError, InputError, TemplateError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "templates"

MATCH = {"user_id": "u-ada", "match_id": "m-7", "job_title": "Engineer", "company": "Acme",
         "score": 80.4, "location": "Berlin", "is_remote": True}
EVENT = {"id": "e-1", "source": "/jobs", "type": "jobs.match.found", "time": "2024-05-17T09:30:15.123Z",
         "subject": "u-ada", "tenant": "default"}


def _ctx(data: dict[str, Any], name: str = "Ada Lovelace", locale: str = "en") -> dict[str, Any]:
    return {
        "data": data,
        "event": EVENT,
        "recipient": {"id": "u-ada", "name": name, "locale": locale, "timezone": "Europe/London"},
        "rule": {"name": "job-match", "priority": "normal"},
    }


def _write(root: Path, name: str, **parts: str) -> Path:
    """Write template parts: ``subject="..."``, ``text__de="..."`` -> text.de.j2."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for part, body in parts.items():
        (folder / f"{part.replace('__', '.').replace('_', '-')}.j2").write_text(body)
    return folder


@pytest.fixture(scope="module")
def demo() -> Renderer:
    return Renderer(DEMO)


# -- the demo templates ---------------------------------------------------------------


def test_demo_job_match_english(demo: Renderer) -> None:
    out = demo.render("job_match", _ctx(MATCH))
    assert out.subject == "New match: Engineer at Acme (80%)"
    assert out.text == (
        "Hello Ada Lovelace,\n\n"
        "We found a job that fits you: Engineer at Acme.\n"
        "Match score: 80%\n"
        "Location: Berlin (remote possible)\n\n"
        "Match reference: m-7\n"
    )
    assert out.html is not None
    assert "<strong>Engineer</strong> at Acme" in out.html
    assert "<li>Location: Berlin (remote possible)</li>" in out.html


def test_demo_job_match_without_location(demo: Renderer) -> None:
    out = demo.render("job_match", _ctx({**MATCH, "location": None, "is_remote": False}))
    assert "Location: not given\n" in out.text
    assert "remote" not in out.text


def test_demo_job_match_german(demo: Renderer) -> None:
    out = demo.render("job_match", _ctx(MATCH, name="Kurt Gödel", locale="de-AT"), "de-AT")
    assert out.subject == "Neuer Treffer: Engineer bei Acme (80 %)"
    assert out.text.startswith("Hallo Kurt Gödel,\n\nwir haben eine passende Stelle gefunden")
    assert "Übereinstimmung: 80 %" in out.text
    # No German HTML part: the default one is used.
    assert out.html is not None
    assert "We found a job that fits you" in out.html


def test_demo_system_alert(demo: Renderer) -> None:
    data = {"severity": "critical", "component": "billing", "message": "disk full " * 20}
    out = demo.render("system_alert", _ctx(data))
    assert out.subject.startswith("[CRITICAL] billing: disk full")
    assert out.subject.endswith("...")
    assert len(out.subject) <= len("[CRITICAL] billing: ") + 80
    assert out.text.startswith("CRITICAL alert from billing at 2024-05-17T09:30:15.123Z:\n")
    assert out.text.endswith("Source: /jobs (event e-1)\n")
    assert out.html is None


def test_demo_book_and_application_templates(demo: Renderer) -> None:
    book = {"job_id": "j-1", "title": "Dune", "status": "completed"}
    assert demo.render("book_ready", _ctx(book)).subject == 'Your book "Dune" is ready'
    failed = demo.render("book_failed", _ctx(book))
    assert failed.subject == 'Generating "Dune" failed'
    assert failed.html is None
    app = {"application_id": "a-1", "job_title": "Engineer", "company": "Acme",
           "old_status": "applied", "new_status": "interview"}
    out = demo.render("application_status", _ctx(app))
    assert out.subject == "Your application for Engineer is now interview"
    assert "moved from\napplied to interview." in out.text


def test_demo_templates_pass_the_start_check(demo: Renderer) -> None:
    demo.check(RuleSet.load(REPO / "config" / "rules.yaml").templates)


def test_render_result_is_frozen(demo: Renderer) -> None:
    out = demo.render("book_ready", _ctx({"job_id": "j", "title": "T"}))
    assert isinstance(out, Rendered)
    with pytest.raises(AttributeError):
        out.subject = "x"  # type: ignore[misc]


# -- strict undefined ----------------------------------------------------------------


def test_missing_field_names_the_template_and_the_field(demo: Renderer) -> None:
    data = {k: v for k, v in MATCH.items() if k != "company"}
    with pytest.raises(TemplateError) as info:
        demo.render("job_match", _ctx(data))
    assert str(info.value) == "template job_match/subject.j2: 'dict object' has no attribute 'company'"
    assert isinstance(info.value, InputError)


def test_missing_top_level_name(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="Hi", text="{{ nobody }}")
    with pytest.raises(TemplateError, match=r"^template t/text\.j2: 'nobody' is undefined$"):
        Renderer(tmp_path).render("t", _ctx({}))


def test_undefined_is_never_an_empty_string_even_in_a_condition(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="Hi", text="{% if data.nope %}x{% endif %}")
    with pytest.raises(TemplateError, match="has no attribute 'nope'"):
        Renderer(tmp_path).render("t", _ctx({}))


def test_runtime_errors_in_a_template_are_template_errors(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="Hi", text="{{ data.n / 0 }}")
    with pytest.raises(TemplateError, match=r"^template t/text\.j2: ZeroDivisionError: division by zero$"):
        Renderer(tmp_path).render("t", _ctx({"n": 1}))
    _write(tmp_path, "u", subject="Hi", text="{{ data.n + 'x' }}")
    with pytest.raises(TemplateError, match=r"^template u/text\.j2: TypeError: "):
        Renderer(tmp_path).render("u", _ctx({"n": 1}))


# -- escaping --------------------------------------------------------------------------


def test_html_is_autoescaped_but_subject_and_text_are_not(tmp_path: Path) -> None:
    body = "{{ data.title }}"
    _write(tmp_path, "t", subject=body, text=body, html=f"<p>{body}</p>")
    out = Renderer(tmp_path).render("t", _ctx({"title": "<b>Tom & Jerry's</b>"}))
    assert out.subject == "<b>Tom & Jerry's</b>"
    assert out.text == "<b>Tom & Jerry's</b>\n"
    assert out.html == "<p>&lt;b&gt;Tom &amp; Jerry&#39;s&lt;/b&gt;</p>"


def test_localised_html_is_autoescaped_too(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="s", text="t", html="{{ data.x }}", html__de="<i>{{ data.x }}</i>")
    out = Renderer(tmp_path).render("t", _ctx({"x": "<script>"}), "de")
    assert out.html == "<i>&lt;script&gt;</i>"


def test_demo_html_escapes_event_data(demo: Renderer) -> None:
    out = demo.render("job_match", _ctx({**MATCH, "company": "<script>alert(1)</script>"}))
    assert out.html is not None
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html
    assert "<script>alert(1)</script>" in out.text
    assert "<script>alert(1)</script>" in out.subject


# -- locales -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "chain"),
    [("de-AT", ("de-AT", "de")), ("de_AT", ("de-AT", "de")), ("de", ("de",)), (None, ()), ("", ()),
     ("zh-Hant-TW", ("zh-Hant-TW", "zh"))],
)
def test_locale_chain(locale: str | None, chain: tuple[str, ...]) -> None:
    assert locale_chain(locale) == chain


@pytest.fixture
def localised(tmp_path: Path) -> Renderer:
    _write(tmp_path, "t", subject="default", text="default text",
           subject__de="deutsch", text__de="deutscher Text",
           subject__de_AT="österreichisch")
    return Renderer(tmp_path)


@pytest.mark.parametrize(
    ("locale", "subject", "text"),
    [
        ("de-AT", "österreichisch", "deutscher Text\n"),
        ("de_AT", "österreichisch", "deutscher Text\n"),
        ("de-CH", "deutsch", "deutscher Text\n"),
        ("de", "deutsch", "deutscher Text\n"),
        ("en-GB", "default", "default text\n"),
        ("fr", "default", "default text\n"),
        (None, "default", "default text\n"),
    ],
)
def test_locale_falls_back_part_by_part(localised: Renderer, locale: str | None, subject: str,
                                        text: str) -> None:
    out = localised.render("t", _ctx({}), locale)
    assert (out.subject, out.text) == (subject, text)


def test_default_locale_constant() -> None:
    assert DEFAULT_LOCALE == "en"
    assert PARTS == ("subject", "text", "html")
    assert REQUIRED_PARTS == ("subject", "text")


def test_resolution_is_cached_per_locale(localised: Renderer, tmp_path: Path) -> None:
    assert localised.render("t", _ctx({}), "de").subject == "deutsch"
    (tmp_path / "t" / "subject.de.j2").unlink()
    # Compiled once (no auto-reload): a file removed after the first render changes nothing.
    assert localised.render("t", _ctx({}), "de").subject == "deutsch"
    assert localised.render("t", _ctx({}), "de-DE").subject == "deutsch"


# -- missing parts and whitespace -----------------------------------------------------------


def test_missing_required_part(tmp_path: Path) -> None:
    _write(tmp_path, "no_text", subject="Hi")
    with pytest.raises(TemplateError) as info:
        Renderer(tmp_path).render("no_text", _ctx({}))
    assert str(info.value) == "template 'no_text' has no text.j2"


def test_missing_required_default_part_even_with_a_locale_variant(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject__de="Hallo", text="x")
    with pytest.raises(TemplateError, match=r"template 't' has no subject\.j2"):
        Renderer(tmp_path).render("t", _ctx({}), "en")
    assert Renderer(tmp_path).render("t", _ctx({}), "de").subject == "Hallo"


def test_unknown_template(demo: Renderer) -> None:
    with pytest.raises(TemplateError, match=r"template 'nope' has no subject\.j2"):
        demo.render("nope", _ctx({}))


def test_subject_whitespace_is_collapsed(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="  Hello\n\n  {{ data.who }}\t !\n", text="\n\n  body  \n\n\n")
    out = Renderer(tmp_path).render("t", _ctx({"who": "big\n  world"}))
    assert out.subject == "Hello big world !"
    assert out.text == "body\n"


def test_empty_subject_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="{{ data.title }}  \n", text="x")
    with pytest.raises(TemplateError, match="template 't': subject rendered empty"):
        Renderer(tmp_path).render("t", _ctx({"title": " "}))


def test_html_is_kept_as_rendered(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="s", text="t", html="<p>\n  a\n</p>\n")
    assert Renderer(tmp_path).render("t", _ctx({})).html == "<p>\n  a\n</p>"


# -- start-up check ------------------------------------------------------------------------


def test_missing_template_directory_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"template directory {tmp_path / 'nope'} does not exist"):
        Renderer(tmp_path / "nope")


def test_check_finds_a_missing_template(tmp_path: Path) -> None:
    _write(tmp_path, "ok", subject="s", text="t")
    renderer = Renderer(tmp_path)
    renderer.check({"ok"})
    with pytest.raises(ConfigError) as info:
        renderer.check({"ok", "gone"})
    assert str(info.value) == f"template 'gone': no directory {tmp_path / 'gone'}"


def test_check_finds_a_syntax_error(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="s", text="t", html__de="{% if %}")
    with pytest.raises(ConfigError, match=r"^template t/html.de.j2 does not parse: "):
        Renderer(tmp_path).check({"t"})


def test_check_finds_a_missing_required_part(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="s", html="h")
    with pytest.raises(ConfigError, match=r"^template 't': missing required part text\.j2$"):
        Renderer(tmp_path).check({"t"})


def test_syntax_error_at_render_time_is_a_template_error(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="{{ data. }}", text="t")
    with pytest.raises(TemplateError, match=r"^template t/subject\.j2 does not parse: "):
        Renderer(tmp_path).render("t", _ctx({}))


# -- sandbox --------------------------------------------------------------------------------


class _Account:
    name = "acct"

    def delete(self) -> str:
        return "deleted"

    delete.alters_data = True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "body",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ data.n.__class__ }}",
        "{{ '{0.__class__}'.format(data) }}",
        "{{ data.fn.__globals__ }}",
        "{{ data.account.delete() }}",
    ],
)
def test_sandbox_refuses_unsafe_access(tmp_path: Path, body: str) -> None:
    _write(tmp_path, "t", subject="s", text=body)
    data = {"n": 1, "fn": _ctx, "account": _Account()}
    with pytest.raises(TemplateError, match=r"^template t/text\.j2: ") as info:
        Renderer(tmp_path).render("t", _ctx(data))
    assert isinstance(info.value.__cause__, SecurityError)
    assert "unsafe" in str(info.value) or "not safely callable" in str(info.value)


def test_sandbox_limits_ranges(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="s", text="{% for i in range(10**7) %}{% endfor %}")
    with pytest.raises(TemplateError, match="OverflowError: Range too big"):
        Renderer(tmp_path).render("t", _ctx({}))


def test_safe_attribute_access_still_works(tmp_path: Path) -> None:
    _write(tmp_path, "t", subject="{{ data.account.name | upper }}", text="{{ data.words | join(', ') }}")
    out = Renderer(tmp_path).render("t", _ctx({"account": _Account(), "words": ["a", "b"]}))
    assert (out.subject, out.text) == ("ACCT", "a, b\n")


def test_dict_lookups_keep_jinja_semantics(tmp_path: Path) -> None:
    # data.field reads the item; a key named like a dict method still gives the method
    # (attribute first, as Jinja does); a dunder stays refused; the sandbox's ranges and
    # globals still work after the template's globals are flattened.
    _write(tmp_path, "t", subject="s",
           text="{{ data.title }}|{{ data._private }}|{{ data.items is callable }}|{{ data.items() | length }}|"
                "{{ range(3) | list | length }}|{{ data.nested.deep }}")
    data = {"title": "T", "_private": "p", "items": "shadowed", "nested": {"deep": "d"}}
    assert Renderer(tmp_path).render("t", _ctx(data)).text == "T|p|True|4|3|d\n"
    _write(tmp_path, "u", subject="s", text="{{ data.__class__ }}")
    with pytest.raises(TemplateError, match="unsafe"):
        Renderer(tmp_path).render("u", _ctx({"__class__": "x"}))
    _write(tmp_path, "v", subject="s", text="{{ data.missing }}")
    with pytest.raises(TemplateError, match="missing"):
        Renderer(tmp_path).render("v", _ctx({}))


def test_recipient_free_templates_are_recognised(tmp_path: Path) -> None:
    for name, subject, text in [("plain", "{{ data.x }}", "Hi all"),
                                ("personal", "{{ data.x }}", "Hi {{ recipient.name }}"),
                                ("included", "{{ data.x }}", "{% include 'plain/text.j2' %}")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "subject.j2").write_text(subject)
        (tmp_path / name / "text.j2").write_text(text)
    (tmp_path / "plain" / "text.de.j2").write_text("Hallo {{ recipient.name }}")
    renderer = Renderer(tmp_path)
    assert renderer.recipient_free("plain", "en") is True
    assert renderer.recipient_free("plain", "de") is False  # the German text greets by name
    assert renderer.recipient_free("personal", None) is False
    assert renderer.recipient_free("included", None) is False


def test_channel_variants_come_first_with_the_same_locale_fallback(tmp_path: Path) -> None:
    folder = tmp_path / "alert"
    folder.mkdir()
    files = {"subject.j2": "Alert {{ data.n }}", "text.j2": "Long text {{ data.n }}",
             "text.de.j2": "Langer Text {{ data.n }}", "text@sms.j2": "SMS {{ data.n }}",
             "text@sms.de.j2": "SMS-DE {{ data.n }}", "subject@slack.j2": "*Alert* {{ data.n }}"}
    for name, body in files.items():
        (folder / name).write_text(body)
    renderer = Renderer(tmp_path)
    ctx = {"data": {"n": 1}}
    assert renderer.variants("alert") == {"sms", "slack"}
    assert renderer.render("alert", ctx, "de-AT", "sms").text == "SMS-DE 1\n"
    assert renderer.render("alert", ctx, "fr", "sms").text == "SMS 1\n"
    sms = renderer.render("alert", ctx, "en", "sms")
    assert sms.subject == "Alert 1"  # no subject of its own: the shared one
    slack = renderer.render("alert", ctx, "de", "slack")
    assert (slack.subject, slack.text) == ("*Alert* 1", "Langer Text 1\n")
    assert renderer.render("alert", ctx, "de", "email").text == "Langer Text 1\n"
    assert renderer.variant("alert", "email") is None and renderer.variant("alert", "sms") == "sms"
