"""occurs_in's tolerances (each with a value that really is absent), strict validators, and the best-answer picker."""

from decimal import Decimal

import pytest

from tiered_mcp.specs.spec import load_specs
from tiered_mcp.specs.validators import (
    Candidate,
    Source,
    Validator,
    Verdict,
    best_answer,
    check,
    dates_in,
    fold,
    number_readings,
    run_validators,
)

OCCURS = Validator(check="occurs_in", output="/data", argument="text")
TEXT = ("Invoice INV-204 from Müller & Söhne GmbH, total EUR 1,250.00 (VAT 12.5%), due March 3, 2024; "
        "shipped 03/02/2024 to  Zürich,   Switzerland.  Contact: Dana O’Brien — 1 000 units, balance -40.")


def occurs(value, schema=None, text=TEXT):
    schema = {"type": "object", "properties": {"data": {"type": "object", "properties": {"v": schema or {}}}}}
    return check([OCCURS], {"data": {"v": value}}, {"text": text}, schema).ok


@pytest.mark.parametrize("value", [
    "inv-204", "INVOICE", "müller & söhne gmbh", "MULLER & SOHNE", "zurich, switzerland", "Zürich,  Switzerland",
    "Dana O'Brien", "Dana O’Brien", "ｚｕｒｉｃｈ",  # case, accents, spacing, quotes, NFKC (full-width)
])
def test_text_matches_after_folding(value):
    assert occurs(value)


@pytest.mark.parametrize("value", ["Zurich, Austria", "Dana Reyes", "INV-205", "Mull", "GmbH Söhne", "Invoic"])
def test_absent_text_still_fails(value):
    assert not occurs(value)


def test_matches_respect_word_boundaries_but_not_in_unspaced_scripts():
    assert not occurs("Smith", text="Mr Smithson")
    assert occurs("Smith", text="Mr Smith's car")
    assert occurs("東京", text="私は東京に住んでいます")


@pytest.mark.parametrize("value", [1250, 1250.0, "1250", "1,250", "1.250,00", 12.5, "12,5", 1000, "1000", 204,
                                   -40, 40])
def test_numbers_in_another_writing_occur(value):
    assert occurs(value, {"type": "number"} if not isinstance(value, str) else None)


@pytest.mark.parametrize("value", [1251, 125.0, 1.25, "1,251", 12, -1250, 0.5])
def test_numbers_not_in_the_text_fail(value):
    assert not occurs(value)


def test_number_readings():
    assert number_readings("1,250") == {Decimal(1250), Decimal("1.25")}
    assert number_readings("1.250,5") == {Decimal("1250.5")}
    assert number_readings("1'000'000") == number_readings("1.000.000") == {Decimal(1000000)}
    assert number_readings("0,250") == {Decimal("0.25")}
    assert number_readings("-3") == {Decimal(-3)}


@pytest.mark.parametrize("value, schema", [
    ("2024-03-03", None), ("2024-03-03T09:30:00Z", {"format": "date-time"}), ("2024-03", None),
    ("3 March 2024", {"format": "date"}), ("03.03.2024", {"format": "date"}),
    ("2024-02-03", None), ("2024-03-02", None),  # 03/02/2024 read both ways
])
def test_dates_in_other_formats_occur(value, schema):
    assert occurs(value, schema)


@pytest.mark.parametrize("value, schema", [
    ("2024-03-04", None), ("2024-05", None), ("4 March 2024", {"format": "date"}),
    ("March 4, 2024", None),  # not ISO and the schema does not ask for a date: compared as text
])
def test_dates_not_in_the_text_fail(value, schema):
    assert not occurs(value, schema)


def test_date_forms_read_from_text():
    text = fold("on 3rd of Dec. 2023, 12-Jan-24, 2024/7/9, July 4 1999 and 31/12/99; not 2024-02-30 or 13/13/2020")
    assert dates_in(text) == {"2023-12-03", "2024-01-12", "2024-07-09", "1999-07-04", "1999-12-31"}


def test_enum_values_and_consts_need_not_occur():
    assert occurs("DE", {"type": "string", "enum": ["DE", "FR"]}, text="shipped to Germany")
    assert occurs("EUR", {"anyOf": [{"const": "EUR"}, {"type": "null"}]}, text="paid in euros")
    assert not occurs("DE", {"type": "string"}, text="shipped to Germany")


def test_schema_is_followed_through_arrays_refs_and_additional_properties():
    schema = {"type": "object", "properties": {"data": {
        "$defs": {"Country": {"enum": ["DE"]}},
        "type": "object",
        "properties": {"stops": {"type": "array", "items": {"type": "object", "properties": {
            "country": {"$ref": "#/$defs/Country"}, "day": {"type": "string", "format": "date"}}}}},
        "additionalProperties": {"type": "string", "format": "date"}}}}
    output = {"data": {"stops": [{"country": "DE", "day": "3 March 2024"}, {"country": "DE", "day": "1 May 2024"}],
                       "extra": "March 3, 2024", "flag": True, "none": None}}
    verdict = check([OCCURS], output, {"text": TEXT}, schema)
    assert verdict.unverified == ["/data/stops/1/day"]
    assert len(verdict.problems) == 1 and "'1 May 2024' does not occur" in verdict.problems[0]


def test_booleans_null_and_keys_are_never_checked():
    assert check([OCCURS], {"data": {"nowhere": True, "x": None, "y": False}}, {"text": "t"}).ok


def test_verdict_names_unverified_paths_and_strict_failures():
    strict = Validator(check="occurs_in", output="/data", argument="text", strict=True)
    unique = Validator(check="unique", output="/ids/*")
    output = {"data": {"a": "INV-204", "b": "invented", "c": ["x/y~z"]}, "ids": [1, 2, 1]}
    loose = check([OCCURS, unique], output, {"text": TEXT})
    assert loose == Verdict(problems=loose.problems, unverified=["/data/b", "/data/c/0", "/ids/2"],
                            strict_failed=False)
    assert [p.split(":")[0] for p in loose.problems] == ["output/data (occurs_in)"] * 2 + ["output/ids/* (unique)"]
    tight = check([strict, unique], output, {"text": TEXT})
    assert tight.strict_failed and tight.unverified == ["/ids/2"]
    assert run_validators([strict, unique], output, {"text": TEXT}) == tight.problems


def test_pointer_escapes_keys():
    out = check([OCCURS], {"data": {"a/b": "nope", "c~d": "nope"}}, {"text": "t"})
    assert out.unverified == ["/data/a~1b", "/data/c~0d"]


def test_problems_are_capped_per_validator_but_every_path_is_named():
    out = check([OCCURS], {"data": {str(i): f"v{i}" for i in range(8)}}, {"text": "t"})
    assert len(out.problems) == 5 and len(out.unverified) == 8


def test_strict_is_a_spec_key():
    spec = load_specs().get("extract")
    assert spec.validators[0].strict is False
    with pytest.raises(ValueError):
        Validator(check="occurs_in", output="/data", argument="text", stricter=True)


def test_source_is_folded_once_and_reads_lazily():
    s = Source("Total 1,250.00 on 2024-03-03")
    assert "numbers" not in s.__dict__ and s.has("total")
    assert s.has(1250) and "numbers" in s.__dict__ and "dates" not in s.__dict__


def _c(tier, unverified=(), strict=False):
    return Candidate({"tier": tier}, Verdict(["p"] if unverified or strict else [], list(unverified), strict), tier)


def test_best_answer_has_fewest_unverified_and_ties_go_up():
    assert best_answer([_c("nano", ["/a", "/b"]), _c("mini", ["/a"]), _c("flagship", ["/a", "/b"])]).tier == "mini"
    assert best_answer([_c("nano", ["/a"]), _c("mini", ["/b"]), _c("flagship", ["/c"])]).tier == "flagship"
    assert best_answer([_c("nano", ["/a"]), _c("mini", strict=True)]).tier == "nano"
    assert best_answer([_c("nano", strict=True)]) is None
    assert best_answer([]) is None


def test_a_repeated_text_is_folded_once():
    from tiered_mcp.specs import validators

    text = "Repair and escalation check the same text: 1,250.00 " * 10
    check([OCCURS], {"data": {"v": 1250}}, {"text": text})
    hits = validators._source.cache_info().hits
    check([OCCURS], {"data": {"v": 1250}}, {"text": text})
    assert validators._source.cache_info().hits == hits + 1
