"""Shell examples in Markdown that the tests run: which blocks, what they must print.

A document opts in by marking every ``sh`` block with an HTML comment on the line before it
(blank lines may come between), so that none escapes by being forgotten:

- ``<!-- doc-test: run -->``: run it, after the run blocks above it, in the same shell;
- ``<!-- doc-test: run terminal -->``: the same, but its commands print as on a terminal
  (Rich tables rather than tab-separated rows);
- ``<!-- doc-test: skip: why -->``: illustrative only (a placeholder, a service the test does
  not start, a command that runs until stopped); the reason is required;
- ``<!-- doc-test: output -->`` before any fenced block: what the run block above printed on
  standard output;
- ``<!-- doc-test: demo -->`` / ``<!-- doc-test: demo restart -->`` before any fenced block:
  what ``make demo`` prints when it starts on a new database / again on the same one.

In an expected output, ``…`` stands for any text within a line, and a line holding only ``…``
for any number of whole lines. Everything else must match exactly (trailing spaces, carriage
returns and terminal colours aside).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ELLIPSIS = "\u2026"
_MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(```+)\s*([\w+-]*)")
_SHELL = {"sh", "bash", "shell", "console"}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class MarkupError(ValueError):
    """A document's blocks are not marked the way this module reads them."""


@dataclass
class RunBlock:
    document: str
    line: int  # of the opening fence, 1-based
    number: int  # among the document's run blocks, 1-based
    code: str
    terminal: bool = False
    expected: str | None = None

    @property
    def name(self) -> str:
        return f"{self.document} run block {self.number} (line {self.line})"


@dataclass
class Document:
    name: str
    runs: list[RunBlock] = field(default_factory=list)
    #: "first" and "restart": what the demo prints on start, as the document shows it.
    demo: dict[str, str] = field(default_factory=dict)


def parse(path: Path, name: str) -> Document:
    """The run blocks of a document, with the outputs it claims for them."""
    document = Document(name)
    lines = path.read_text().splitlines()
    marker: tuple[str, int] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        found = _MARKER.match(line)
        fence = _FENCE.match(line)
        if found:
            marker = (found.group(1), index + 1)
        elif fence:
            ticks, language = fence.groups()
            end = index + 1
            while end < len(lines) and not lines[end].startswith(ticks):
                end += 1
            if end == len(lines):
                raise MarkupError(f"{name}:{index + 1}: the block is never closed")
            body = "\n".join(lines[index + 1 : end]) + "\n"
            _place(document, marker, language, body, index + 1)
            marker = None
            index = end
        elif line.strip() and marker is not None:
            raise MarkupError(f"{name}:{marker[1]}: the marker is not followed by a block")
        index += 1
    return document


def _place(
    document: Document, marker: tuple[str, int] | None, language: str, body: str, line: int
) -> None:
    where = f"{document.name}:{line}"
    if marker is None:
        if language in _SHELL:
            raise MarkupError(
                f"{where}: a shell block without <!-- doc-test: run --> or "
                "<!-- doc-test: skip: why --> before it"
            )
        return
    words = marker[0].split()
    kind = words[0] if words else ""
    if kind.startswith("skip"):
        if not marker[0].removeprefix("skip").strip(" :"):
            raise MarkupError(f"{where}: say why the block is skipped (skip: why)")
        return
    if kind == "run":
        if language not in _SHELL:
            raise MarkupError(f"{where}: only shell blocks run (```sh)")
        terminal = words[1:] == ["terminal"]
        if words[1:] and not terminal:
            raise MarkupError(f"{where}: unknown run option {' '.join(words[1:])!r}")
        number = len(document.runs) + 1
        document.runs.append(RunBlock(document.name, line, number, body, terminal))
    elif kind == "output":
        if not document.runs or document.runs[-1].expected is not None:
            raise MarkupError(f"{where}: an output block must follow a run block of its own")
        document.runs[-1].expected = body
    elif kind == "demo":
        which = "restart" if words[1:] == ["restart"] else "first"
        document.demo[which] = body
    else:
        raise MarkupError(f"{where}: unknown marker {marker[0]!r}")


def normalise(text: str) -> str:
    """Output as a person reads it: no colours, no trailing blanks, no trailing empty lines."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def pattern_of(expected: str) -> re.Pattern[str]:
    parts = []
    for line in normalise(expected).splitlines():
        if line.strip() == ELLIPSIS:
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*?".join(re.escape(piece) for piece in line.split(ELLIPSIS)) + "\n")
    return re.compile("".join(parts))


def matches(expected: str, actual: str) -> bool:
    return pattern_of(expected).fullmatch(normalise(actual)) is not None


#: A date or an epoch-milliseconds literal in a command: the example would stop working once
#: that time falls out of the retention (24 h), so examples compute times from `date`.
FIXED_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2})?|\b1\d{12}\b")
