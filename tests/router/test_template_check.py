from __future__ import annotations

import shutil
from pathlib import Path

from router.rules import RuleSet
from router.template_check import check_all, sample_value
from router.templates import Renderer
from schemas import Catalog

REPO = Path(__file__).resolve().parents[2]


def test_sample_values_follow_the_avro_types() -> None:
    assert sample_value("string", "title", False) == "sample-title"
    assert sample_value(["null", "string"], "location", False) == "sample-location"
    assert sample_value(["null", "string"], "location", True) is None
    assert sample_value({"type": "enum", "name": "S", "symbols": ["info", "critical"]}, "s", False) == "info"
    assert sample_value({"type": "array", "items": "int"}, "n", False) == [7]
    assert sample_value({"type": "record", "name": "R", "fields": [{"name": "a", "type": "double"}]}, "r",
                        False) == {"a": 80.5}
    assert sample_value("boolean", "b", False) is True


def test_the_shipped_templates_pass_in_every_locale_and_both_samples() -> None:
    rules = RuleSet.load(REPO / "config" / "rules.yaml")
    report = check_all(rules, Renderer(REPO / "config" / "templates"), Catalog.load())
    assert report.errors == []
    assert report.templates == rules.templates
    # job_match has a default and a German variant: 2 locales x 2 samples.
    assert sum("(rule job-match," in line for line in report.lines) == 4


def test_errors_name_template_rule_locale_and_sample(tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    (tmp_path / "config" / "templates" / "book_ready" / "subject.j2").write_text("{{ data.no_such_field }}")
    rules = RuleSet.from_data({"rules": [
        {"name": "book-ready", "event_type": "bookgen.job.completed", "channels": ["email"],
         "template": "book_ready", "digests": [{"channel": "email", "every": "daily"}],
         "digest_template": "broken_digest"}]})
    (tmp_path / "config" / "templates" / "broken_digest").mkdir()
    (tmp_path / "config" / "templates" / "broken_digest" / "subject.j2").write_text("{{ items[0].nope }}")
    (tmp_path / "config" / "templates" / "broken_digest" / "text.j2").write_text("x")
    report = check_all(rules, Renderer(tmp_path / "config" / "templates"), Catalog.load())
    assert len(report.errors) == 3
    assert report.errors[0].startswith("book_ready (rule book-ready, locale default, filled sample): ")
    assert "no_such_field" in report.errors[0]
    assert report.errors[2].startswith("broken_digest (digest of rule book-ready, locale default): ")
