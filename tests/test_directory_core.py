from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csatdist.directory import (
    DEFAULT_MAX_ENTRIES,
    MAX_NAME_LENGTH,
    MAX_REPORTED_PROBLEMS,
    Directory,
    DirectoryUpdate,
    directory_document,
    display,
    merge,
    name_problem,
    parse_directory_update,
    parse_id_key,
)
from csatdist.errors import InvalidRequest
from csatdist.query import INT64_MAX, INT64_MIN


def problems(document: object, max_entries: int = DEFAULT_MAX_ENTRIES) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_directory_update(document, max_entries)
    return {p.name: p.reason for p in caught.value.invalid_params}


def test_example_from_the_spec() -> None:
    update = parse_directory_update({"skills": {"12": "Billing"}, "agents": {"1015": "Ana Lima"}})
    assert update == DirectoryUpdate(skills={12: "Billing"}, agents={1015: "Ana Lima"})


def test_null_removes_and_parts_are_optional() -> None:
    assert parse_directory_update({"skills": {"12": None}}) == DirectoryUpdate(skills={12: None})
    assert parse_directory_update({"agents": None}) == DirectoryUpdate()
    assert parse_directory_update({}) == DirectoryUpdate()


def test_unknown_fields_are_ignored() -> None:
    assert parse_directory_update({"teams": {"x": 1}, "skills": {"-1": "Unassigned"}}) == (
        DirectoryUpdate(skills={-1: "Unassigned"})
    )


@pytest.mark.parametrize("document", [None, [], "skills", 12])
def test_body_must_be_an_object(document: object) -> None:
    assert "body" in problems(document)


@pytest.mark.parametrize("part", [[], "Billing", 12, True])
def test_parts_must_be_objects(part: object) -> None:
    assert "skills" in problems({"skills": part})


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("12", 12),
        ("0", 0),
        ("-1", -1),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MIN), INT64_MIN),
        (str(INT64_MAX + 1), None),
        (str(INT64_MIN - 1), None),
        ("9" * 5000, None),  # never handed to int(): Python refuses past 4,300 digits
        ("012", None),  # one spelling per id
        ("+12", None),
        ("-0", None),
        (" 12", None),
        ("1.0", None),
        ("1e3", None),
        ("", None),
        ("abc", None),
        ("\uff11\uff12", None),  # fullwidth digits are digits to Python's int(), not here
    ],
)
def test_id_keys(key: str, expected: int | None) -> None:
    assert parse_id_key(key) == expected


def test_bad_key_is_named_with_the_part() -> None:
    found = problems({"skills": {"abc": "Billing"}})
    assert "'abc' is not an int64 id" in found["skills"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * (MAX_NAME_LENGTH + 1), "at most 200"),
        ("Bill\ning", "control"),
        ("Tab\there", "control"),
        ("\x00", "control"),
        ("\x85next line", "control"),
        (12, "string"),
        (True, "string"),
        (["Billing"], "string"),
    ],
)
def test_bad_names(name: object, fragment: str) -> None:
    found = problems({"agents": {"7": name}})
    assert fragment in found["agents.7"]


@pytest.mark.parametrize("name", ["x" * MAX_NAME_LENGTH, "Ana Lima", "Zoë 🚀", "<b>&", " padded "])
def test_good_names(name: str) -> None:
    assert name_problem(name) is None
    assert parse_directory_update({"agents": {"7": name}}).agents == {7: name}


def test_name_length_counts_code_points() -> None:
    assert name_problem("é" * MAX_NAME_LENGTH) is None  # 400 bytes in UTF-8, 200 characters


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"skills": {"x": "A", "1": ""}, "agents": {"2": 5}})
    assert set(found) == {"skills", "skills.1", "agents.2"}


def test_problems_are_bounded() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_directory_update({"skills": {str(i): "" for i in range(500)}})
    reported = caught.value.invalid_params
    assert len(reported) == MAX_REPORTED_PROBLEMS + 1
    assert reported[-1].reason.startswith(f"and {500 - MAX_REPORTED_PROBLEMS} more")


def test_entry_limit_counts_both_parts() -> None:
    half = {str(i): "n" for i in range(3)}
    parse_directory_update({"skills": half, "agents": half}, max_entries=6)
    found = problems({"skills": half, "agents": {**half, "9": "n"}}, max_entries=6)
    assert found == {"body": "too many entries: 7, at most 6"}


def test_default_entry_limit() -> None:
    names = {str(i): "n" for i in range(DEFAULT_MAX_ENTRIES + 1)}
    assert "too many entries" in problems({"skills": names})["body"]


def test_merge_sets_replaces_and_removes() -> None:
    current = Directory(skills={12: "Billing", 13: "Sales"}, agents={1: "Ana"})
    update = DirectoryUpdate(skills={12: "Billing EU", 13: None, 14: "Support", 99: None})
    merged = merge(current, update)
    assert merged == Directory(skills={12: "Billing EU", 14: "Support"}, agents={1: "Ana"})
    assert current.skills == {12: "Billing", 13: "Sales"}  # not modified


def test_document_round_trips_through_parse_and_merge() -> None:
    directory = Directory(skills={12: "Billing", -1: "Nobody", 3: "Sales"}, agents={})
    document = directory_document(directory)
    assert document == {"skills": {"-1": "Nobody", "3": "Sales", "12": "Billing"}, "agents": {}}
    assert list(document["skills"]) == ["-1", "3", "12"]  # numeric order
    assert merge(Directory(), parse_directory_update(document)) == directory


@given(
    st.lists(
        st.tuples(
            st.integers(INT64_MIN, INT64_MAX),
            st.one_of(st.none(), st.text(min_size=1, max_size=5).filter(lambda s: s.strip())),
        ),
        max_size=20,
    )
)
def test_merging_one_by_one_keeps_the_last_write(changes: list[tuple[int, str | None]]) -> None:
    directory = Directory()
    expected: dict[int, str] = {}
    for entry_id, name in changes:
        directory = merge(directory, DirectoryUpdate(skills={entry_id: name}))
        if name is None:
            expected.pop(entry_id, None)
        else:
            expected[entry_id] = name
    assert directory.skills == expected


def test_display() -> None:
    names = {12: "Billing", -5: "Legacy"}
    assert display(12, names) == "Billing (12)"
    assert display(13, names) == "13"
    assert display(-5, names) == "Legacy (-5)"
    assert display(-1, names) == "Unassigned (-1)"
    assert display(-1, {-1: "Bots"}) == "Bots (-1)"
