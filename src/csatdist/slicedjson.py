"""JSON text from orjson for values that are large or kept (pure).

``orjson.dumps`` holds the interpreter from its first byte to its last: for a 44 MB interval
body (288 intervals of 870 agents) that was 80-110 ms on this machine, during which no other
thread of the server ran — not the event loop, not another tenant's render, not the SQLite
writer. Python hands the interpreter to a waiting thread only between bytecodes, and one C call
is one. Here the value is walked down to the objects whose values are all plain (the metrics
objects), which are encoded a few hundred at a time, so the interpreter can change hands every
fraction of a millisecond. The bytes are exactly ``orjson.dumps(value)``'s (orjson writes
no spaces; keys, numbers and strings are orjson's own; the tests compare the two).

**orjson's buffers.** The bytes orjson returns keep the capacity its buffer grew to, not the
text's length: at least 4 KiB, and about ten times the text for values of a few hundred objects
(orjson 3.13 here: 391 bytes of text in 4,121 bytes, 43,861 in 519,201, 222,781 in 2,076,705,
measured with tracemalloc). Kept as they are, the pieces of an 11.9 MB body held 162 MB while it
was built. So the pieces are copied as they come into :class:`Text` (each freed at once), and
what is kept beyond a request (a memoised body) is copied to its own length first
(:func:`right_sized`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

#: Plain objects (or list items) encoded by one orjson call: about 0.3 ms for metrics objects.
SLICE_ITEMS = 1024
#: A container of at most this many values is walked value by value (a body's few keys, an
#: interval's two); a larger one whose first value is plain (the others are taken to be alike:
#: the metrics objects of one map) is encoded in slices of them.
FEW = 16


#: Bytes :class:`Text` gathers before it copies them out as one piece.
CHUNK_BYTES = 256 * 1024


class Text:
    """A text written in small pieces, held in pieces of about :data:`CHUNK_BYTES`, each in an
    allocation of its own length, and joined once (``bytes.join`` of bytes lets other threads
    run while it copies 1 MiB or more; of a ``bytearray`` it would not)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pending = bytearray()

    def add(self, piece: bytes | memoryview) -> None:
        pending = self._pending
        pending += piece
        if len(pending) >= CHUNK_BYTES:
            self._chunks.append(bytes(pending))
            pending.clear()

    def __bool__(self) -> bool:
        return bool(self._chunks or self._pending)

    def joined(self) -> bytes:
        """The whole text (once: the pieces are handed over)."""
        chunks, self._chunks = self._chunks, []
        if self._pending:
            chunks.append(bytes(self._pending))
            self._pending.clear()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def right_sized(text: bytes) -> bytes:
    """``text`` in an allocation of its own length (a copy; see the module's docstring): for
    orjson's output that is kept. Copies of 1 MiB and more let other threads run meanwhile."""
    return b"".join((text, b""))


def ndjson(values: Iterable[Any]) -> bytes:
    """NDJSON: each value's JSON text on a line, the lines joined by newlines (none after the
    last), in an allocation of its own length (each value's buffer freed once copied)."""
    out = Text()
    for value in values:
        if out:
            out.add(b"\n")
        out.add(orjson.dumps(value))
    return out.joined()


def dumps_sliced(value: Any) -> bytes:
    """``orjson.dumps(value)``, encoded by calls over at most :data:`SLICE_ITEMS` plain objects
    each (for values made of dicts and lists with str keys; any other value is encoded whole),
    in an allocation of its own length."""
    out = Text()
    _encode(value, out)
    return out.joined()


def object_in_slices(pairs: Iterator[tuple[str, Any]], count: int, out: Text) -> None:
    """Add the JSON object of ``count`` ``pairs`` (a key, a plain value) to ``out``, encoded
    :data:`SLICE_ITEMS` at a time."""
    if not count:
        out.add(b"{}")
        return
    out.add(b"{")
    for start in range(0, count, SLICE_ITEMS):
        if start:
            out.add(b",")
        out.add(memoryview(orjson.dumps(dict(itertools.islice(pairs, SLICE_ITEMS))))[1:-1])
    out.add(b"}")


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


def _encode(value: Any, out: Text) -> None:
    if not isinstance(value, dict | list):
        out.add(orjson.dumps(value))
        return
    how = _how(value)
    if how == "whole":
        out.add(orjson.dumps(value))
    elif isinstance(value, dict):
        if how == "slices":
            object_in_slices(iter(value.items()), len(value), out)
            return
        out.add(b"{")
        for number, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                orjson.dumps({key: None})  # raises orjson's own error, as encoding it whole would
            if number:
                out.add(b",")
            out.add(orjson.dumps(key))
            out.add(b":")
            _encode(item, out)
        out.add(b"}")
    elif how == "slices":
        out.add(b"[")
        for start in range(0, len(value), SLICE_ITEMS):
            if start:
                out.add(b",")
            out.add(memoryview(orjson.dumps(value[start : start + SLICE_ITEMS]))[1:-1])
        out.add(b"]")
    else:
        out.add(b"[")
        for number, item in enumerate(value):
            if number:
                out.add(b",")
            _encode(item, out)
        out.add(b"]")
