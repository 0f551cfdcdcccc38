"""A large value's JSON text encoded in slices, each a short orjson call (pure).

``orjson.dumps`` holds the interpreter from its first byte to its last: for a 44 MB interval
body (288 intervals of 870 agents) that was 80-110 ms on this machine, during which no other
thread of the server ran — not the event loop, not another tenant's render, not the SQLite
writer. Python hands the interpreter to a waiting thread only between bytecodes, and one C call
is one. Here the value is walked down to the objects whose values are all plain (the metrics
objects), which are encoded a few hundred at a time, so the interpreter can change hands every
fraction of a millisecond. The bytes joined are exactly ``orjson.dumps(value)``'s (orjson writes
no spaces; keys, numbers and strings are orjson's own; the tests compare the two).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import orjson

#: Plain objects (or list items) encoded by one orjson call: about 0.3 ms for metrics objects.
SLICE_ITEMS = 1024
#: A container of at most this many values is walked value by value (a body's few keys, an
#: interval's two); a larger one whose first value is plain (the others are taken to be alike:
#: the metrics objects of one map) is encoded in slices of them.
FEW = 16


def dumps_sliced(value: Any) -> list[bytes]:
    """The parts whose join is ``orjson.dumps(value)``, none of them encoded by a call over more
    than :data:`SLICE_ITEMS` plain objects (for values made of dicts and lists with str keys; any
    other value is encoded whole)."""
    out: list[bytes] = []
    _encode(value, out)
    return out


def object_in_slices(pairs: Iterator[tuple[str, Any]], count: int, out: list[bytes]) -> None:
    """Append the parts of the JSON object of ``count`` ``pairs`` (a key, a plain value),
    encoded :data:`SLICE_ITEMS` at a time."""
    if not count:
        out.append(b"{}")
        return
    out.append(b"{")
    for start in range(0, count, SLICE_ITEMS):
        if start:
            out.append(b",")
        out.append(orjson.dumps(dict(itertools.islice(pairs, SLICE_ITEMS)))[1:-1])
    out.append(b"}")


def _container(value: Any) -> bool:
    return isinstance(value, dict | list)


def _holds_containers(value: dict[Any, Any] | list[Any]) -> bool:
    return any(map(_container, value.values() if isinstance(value, dict) else value))


def _how(value: dict[Any, Any] | list[Any]) -> str:
    """How a container is encoded: ``whole`` (one call: no container in it, or a map or list of
    at most :data:`SLICE_ITEMS` plain objects), ``slices`` (a larger one of plain objects) or
    ``walk`` (value by value: a few values, or alike values that hold containers)."""
    values = value.values() if isinstance(value, dict) else value
    if len(value) <= FEW:
        return "walk" if _holds_containers(value) else "whole"
    first = next(iter(values))  # a map of alike values: what the first is, they all are
    if not _container(first):
        return "whole"
    if _holds_containers(first):
        return "walk"
    return "whole" if len(value) <= SLICE_ITEMS else "slices"


def _encode(value: Any, out: list[bytes]) -> None:
    if not isinstance(value, dict | list):
        out.append(orjson.dumps(value))
        return
    how = _how(value)
    if how == "whole":
        out.append(orjson.dumps(value))
    elif isinstance(value, dict):
        if how == "slices":
            object_in_slices(iter(value.items()), len(value), out)
            return
        out.append(b"{")
        for number, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                orjson.dumps({key: None})  # raises orjson's own error, as encoding it whole would
            out.append(b"%s%b:" % (b"," if number else b"", orjson.dumps(key)))
            _encode(item, out)
        out.append(b"}")
    elif how == "slices":
        out.append(b"[")
        for start in range(0, len(value), SLICE_ITEMS):
            if start:
                out.append(b",")
            out.append(orjson.dumps(value[start : start + SLICE_ITEMS])[1:-1])
        out.append(b"]")
    else:
        out.append(b"[")
        for number, item in enumerate(value):
            if number:
                out.append(b",")
            _encode(item, out)
        out.append(b"]")
