"""A reply's head and body leave in one write (``csatdist.http.protocol.HeadWithBody``), and
nothing a client relies on changes: a streamed reply's head is not kept waiting for its body,
HEAD and chunked replies are whole, and nothing overtakes a held head."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from csatdist.http.protocol import HeadWithBody
from tests.conftest import make_settings
from tests.test_resource_limits import serve_bounded


class Recorder:
    """A transport that records what is done to it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, data: Any) -> None:
        self.calls.append(("writelines", [bytes(d) for d in data]))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def is_closing(self) -> bool:
        return self.closing


class Loop:
    """call_soon's callbacks, run when the test says."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def run_callbacks(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


def writes() -> tuple[HeadWithBody, Recorder, Loop]:
    transport, loop = Recorder(), Loop()
    return HeadWithBody(transport, loop), transport, loop  # type: ignore[arg-type]


def test_a_held_head_leaves_with_the_next_write() -> None:
    proxy, transport, loop = writes()
    proxy.holding = True
    proxy.write(b"HEAD\r\n\r\n")
    assert transport.calls == []
    proxy.write(b"body")
    assert transport.calls == [("write", b"HEAD\r\n\r\nbody")]
    loop.run_callbacks()  # nothing left to send
    proxy.write(b"more")
    assert transport.calls[1:] == [("write", b"more")]


def test_a_large_body_is_not_copied_to_join_its_head() -> None:
    proxy, transport, _ = writes()
    proxy.holding = True
    proxy.write(b"HEAD\r\n\r\n")
    body = b"x" * (1 << 20)
    proxy.write(body)
    assert transport.calls == [("writelines", [b"HEAD\r\n\r\n", body])]


def test_a_head_with_no_write_after_it_leaves_when_the_loop_runs() -> None:
    proxy, transport, loop = writes()
    proxy.holding = True
    proxy.write(b"HEAD\r\n\r\n")
    loop.run_callbacks()
    assert transport.calls == [("write", b"HEAD\r\n\r\n")]


@pytest.mark.parametrize(
    ("then", "expected"),
    [
        ("close", [("write", b"H"), ("close", None)]),
        ("write_eof", [("write", b"H"), ("write_eof", None)]),
        ("writelines", [("write", b"H"), ("writelines", [b"a", b"b"])]),
        ("abort", [("abort", None)]),  # an aborted connection sends nothing more
    ],
)
def test_nothing_overtakes_a_held_head(then: str, expected: list[tuple[str, Any]]) -> None:
    proxy, transport, loop = writes()
    proxy.holding = True
    proxy.write(b"H")
    if then == "writelines":
        proxy.writelines([b"a", b"b"])
    else:
        getattr(proxy, then)()
    loop.run_callbacks()
    assert transport.calls == expected


#: Set by the test once the late reply's head has arrived (its body waits for it, 10 s at most).
head_seen = threading.Event()


async def streamed(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A reply whose body waits until its head has reached the client, and HEAD and chunked
    replies."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/late":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.to_thread(head_seen.wait, 10)
        await send({"type": "http.response.body", "body": b"late"})
        return
    body = b"hello"
    headers = [(b"content-length", b"5")] if scope["path"] == "/sized" else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def exchange(url: str, request: bytes, until: bytes) -> bytes:
    """Send ``request`` and read until ``until`` has arrived."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while until not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        head_seen.set()
        return received


def test_replies_over_a_real_connection() -> None:
    with serve_bounded(streamed, make_settings()) as url:
        head = exchange(url, b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"late" not in head, "the head waited for the body"
        reply = exchange(url, b"HEAD /sized HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n")
        assert b"content-length: 5" in reply.lower()
        assert reply.endswith(b"\r\n\r\n")
        reply = exchange(url, b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n", b"0\r\n\r\n")
        assert b"transfer-encoding: chunked" in reply.lower()
        assert reply.endswith(b"5\r\nhello\r\n0\r\n\r\n")
        reply = exchange(url, b"GET /sized HTTP/1.1\r\nHost: x\r\n\r\n", b"hello")
        assert reply.endswith(b"\r\n\r\nhello")
