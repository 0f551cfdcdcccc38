"""The directory: display names for skill and agent ids (pure). Rules are EXTENSIONS.md section 9.

``PUT …/directory`` merges names into an account's directory (``null`` removes one); answers'
``skillName``/``agentName`` update it the same way. The ``v=1`` distribution body never carries
names; the dashboard, exports and reports show them with :func:`display`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from csatdist.errors import InvalidParam, InvalidRequest
from csatdist.query import INT64_MAX, INT64_MIN

MAX_NAME_LENGTH = 200
#: Names set or removed by one request: the ingest limit, so a day's answers fit one update.
DEFAULT_MAX_ENTRIES = 10_000
#: A request with thousands of bad entries is reported with this many, then a count.
MAX_REPORTED_PROBLEMS = 20
KINDS = ("skills", "agents")
UNASSIGNED_ID = -1

#: Canonical decimal only ("12", "-1"; not "012", "+12", "-0"): one spelling per id, so one
#: object cannot name the same id twice.
_ID_KEY = re.compile(r"0|-?[1-9][0-9]{0,18}")


@dataclass(frozen=True, slots=True)
class Directory:
    """An account's names: id -> display name, for skills and for agents."""

    skills: Mapping[int, str] = field(default_factory=dict)
    agents: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DirectoryUpdate:
    """Names to set, and ids whose name is removed (``None``)."""

    skills: Mapping[int, str | None] = field(default_factory=dict)
    agents: Mapping[int, str | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.skills) + len(self.agents)


def parse_id_key(key: object) -> int | None:
    """An id from a JSON object key ("12", "-1"), or None if it is not a canonical int64."""
    if not isinstance(key, str) or not _ID_KEY.fullmatch(key):
        return None
    value = int(key)  # at most 20 characters: no risk from Python's long-integer limit
    return value if INT64_MIN <= value <= INT64_MAX else None


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a display name; None when it is. Shared with the answers'
    ``skillName``/``agentName`` so both ways of naming follow one rule.

    Names are one line (no control characters): they end up in CSV cells, Slack messages and
    table headers.
    """
    if not isinstance(value, str):
        return "must be a string, or null to remove the name"
    if not value.strip():
        return "must not be empty; use null to remove the name"
    if len(value) > MAX_NAME_LENGTH:
        return f"must have at most {MAX_NAME_LENGTH} characters, got {len(value)}"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "must not contain control characters (line breaks, tabs ...)"
    return None


def _show_key(key: str) -> str:
    return key if len(key) <= 30 else key[:27] + "..."


def parse_directory_update(
    document: object, max_entries: int = DEFAULT_MAX_ENTRIES
) -> DirectoryUpdate:
    """Validate a ``PUT …/directory`` body; raise :class:`InvalidRequest` naming every problem.

    ``{"skills": {"12": "Billing", "13": null}, "agents": {...}}``; either part may be absent or
    null, other keys are ignored. A problem with one entry is named ``skills.12``.
    """
    if not isinstance(document, Mapping):
        raise InvalidRequest.one("body", 'must be a JSON object: {"skills": {…}, "agents": {…}}')
    problems: list[InvalidParam] = []
    objects: dict[str, Mapping[object, object]] = {}
    for kind in KINDS:
        names = document.get(kind)
        if isinstance(names, Mapping):
            objects[kind] = names
        elif names is not None:
            problems.append(InvalidParam(kind, 'must be an object of id to name: {"12": "…"}'))
    entries = sum(len(names) for names in objects.values())
    if entries > max_entries:  # before looking at each entry: the size is the problem
        problems.append(InvalidParam("body", f"too many entries: {entries}, at most {max_entries}"))
        raise InvalidRequest(problems)
    parts: dict[str, dict[int, str | None]] = {kind: {} for kind in KINDS}
    for kind, names in objects.items():
        for key, name in names.items():
            entry_id = parse_id_key(key)
            if entry_id is None:
                problems.append(
                    InvalidParam(kind, f"key {_show_key(str(key))!r} is not an int64 id like '12'")
                )
                continue
            if name is None:
                parts[kind][entry_id] = None
            elif (problem := name_problem(name)) is not None:
                problems.append(InvalidParam(f"{kind}.{entry_id}", problem))
            else:
                parts[kind][entry_id] = str(name)
    if problems:
        raise InvalidRequest(_bounded(problems))
    return DirectoryUpdate(skills=parts["skills"], agents=parts["agents"])


def _bounded(problems: list[InvalidParam]) -> list[InvalidParam]:
    if len(problems) <= MAX_REPORTED_PROBLEMS:
        return problems
    rest = len(problems) - MAX_REPORTED_PROBLEMS
    return [
        *problems[:MAX_REPORTED_PROBLEMS],
        InvalidParam("body", f"and {rest} more problems of the same kinds"),
    ]


def merge(current: Directory, update: DirectoryUpdate) -> Directory:
    """``current`` with ``update`` applied: names set, ``None`` removes (an unknown id is fine)."""

    def merged(names: Mapping[int, str], changes: Mapping[int, str | None]) -> dict[int, str]:
        result = dict(names)
        for entry_id, name in changes.items():
            if name is None:
                result.pop(entry_id, None)
            else:
                result[entry_id] = name
        return result

    return Directory(
        skills=merged(current.skills, update.skills), agents=merged(current.agents, update.agents)
    )


def directory_document(directory: Directory) -> dict[str, dict[str, str]]:
    """The ``GET …/directory`` body: the ``PUT`` shape, ids as strings in numeric order."""
    return {
        "skills": {str(i): directory.skills[i] for i in sorted(directory.skills)},
        "agents": {str(i): directory.agents[i] for i in sorted(directory.agents)},
    }


def display(entry_id: int, names: Mapping[int, str]) -> str:
    """How an id is shown: ``Billing (12)`` when named, ``12`` when not, and the unassigned id
    -1 as ``Unassigned (-1)`` unless it was given a name (dashboards call it "Unassigned")."""
    name = names.get(entry_id)
    if name is None:
        return f"Unassigned ({entry_id})" if entry_id == UNASSIGNED_ID else str(entry_id)
    return f"{name} ({entry_id})"
