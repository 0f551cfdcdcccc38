"""uvicorn's httptools protocol with the limits it lacks: the size of a request's head (request
line and headers), the time a client may take to send it, the time it may take to read a reply,
and what the server reads of a body it replied to without reading.

Without them a client can send megabytes of headers, all buffered, keep a connection open by
sending its headers a byte at a time (slowloris), ask for large replies and never read them,
each one held in memory, or send gigabytes after a refusal for the server to parse. A head over
the size limit gets 431 and a head not complete in time gets 408, and either connection ends
with the lingering close below (the client may still be writing its request); a client that
reads nothing while its reply waits to be sent (the socket's buffers full) for
``send_timeout_seconds`` is disconnected and its buffered reply dropped.

A reply sent before the request's body was read (401, 413, 429 …) with more than
``Lingering.threshold_bytes`` of the body still to come ends the connection with a lingering
close, as nginx does: the reply says ``Connection: close``, the server half-closes (its FIN
follows the reply), then reads and drops what still arrives — without parsing it — for at most
``Lingering.seconds`` and ``Lingering.max_bytes``, and closes. Closing at once would leave the
client's bytes unread, and a close with unread data sends a reset that may destroy the reply
before the client reads it (a client that writes its whole body before reading would then see
only an error); reading the whole body costs the server as much as the client cares to send.

A reply's head and the start of its body leave in one write (``HeadWithBody``): uvicorn writes
the head as soon as the app starts its reply and the body next, two system calls where one
does, and two wake-ups of the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    from csatdist.settings import Settings

_Send = Callable[[ASGISendEvent], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Lingering:
    """What the server reads of a body it did not need (see the module's docstring)."""

    threshold_bytes: int = 256 * 1024  # left at most this, the connection is kept and parsed on
    max_bytes: int = 1024 * 1024
    seconds: float = 5.0


def _problem(status: int, reason: str, slug: str, detail: str) -> bytes:
    body = orjson.dumps(
        {
            "type": f"urn:csatdist:problem:{slug}",
            "title": reason,
            "status": status,
            "detail": detail,
        }
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _announced_body(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's length from the head's (lower-cased) fields; None when it is chunked."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            with contextlib.suppress(ValueError):  # llhttp refuses a bad one before this
                length = int(value)
    return length


class HeadWithBody:
    """A connection's transport that holds a reply's head (the write made while ``holding`` is
    set) until the next write, which sends both at once; at the latest the head leaves when the
    event loop next runs its callbacks (a streamed reply may start its body later). Every write
    of the connection goes through it, so nothing can overtake a held head."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self.holding = False  # the next write is a head to hold

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.holding:
            self.holding = False
            self._head = bytes(data)
            self._loop.call_soon(self.flush)
            return
        head = self._head
        if head is None:
            self.transport.write(data)
            return
        self._head = None
        if len(data) <= 64 * 1024:  # copying a small body costs less than a second buffer
            self.transport.write(b"".join((head, data)))
        else:
            self.transport.writelines((head, data))

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self.transport.is_closing():
                self.transport.write(head)

    def writelines(self, data: Any) -> None:
        self.flush()
        self.transport.writelines(data)

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._head = None
        self.transport.abort()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # the rest of the Transport interface
        return getattr(self.transport, name)


def bounded_protocol(
    max_head_bytes: int,
    head_timeout_seconds: float,
    send_timeout_seconds: float = 20.0,
    lingering: Lingering = Lingering(),
) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.run(http=...)`` enforcing the limits."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._writes = HeadWithBody(transport, self.loop)
            super().connection_made(self._writes)  # type: ignore[arg-type]
            self._send_timer: asyncio.TimerHandle | None = None
            self._drain_timer: asyncio.TimerHandle | None = None
            self._message_complete = False
            self._body_left: int | None = 0  # of the body being parsed; None: chunked
            self._linger_next = False
            self._lingering = False
            self._lingered_bytes = 0
            self._linger_timer: asyncio.TimerHandle | None = None
            self._start_head()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(send_timeout_seconds, self._send_timed_out)

        def resume_writing(self) -> None:
            self._stop_send_timer()
            super().resume_writing()

        def _stop_send_timer(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _send_timed_out(self) -> None:
            self._send_timer = None
            if self.transport.is_closing():
                return
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # a reset, not a close: the kernel drops its copy too
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()  # drops the buffered reply; the app's send() returns

        def _start_head(self) -> None:
            self._head_bytes = 0  # raw bytes of a head still incomplete after a read
            self._parsed_bytes = 0  # request line and header fields parsed so far
            self._refused = False
            self._in_head = True
            self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
                head_timeout_seconds, self._head_timed_out
            )

        def _end_head(self) -> None:
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # dropped unparsed
                self._lingered_bytes += len(data)
                if self._lingered_bytes > lingering.max_bytes:
                    self.transport.close()
                return
            if self._refused:
                return
            counting = self._in_head
            super().data_received(data)
            # The head goes on across reads. A read in which it started also held the end of
            # the previous request (its body, perhaps most of the read): not counted, so the
            # raw count may run one read late; the parsed line and fields are counted exactly.
            if self._in_head and counting:
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._too_large()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, size: int) -> None:
            self._parsed_bytes += size
            if self._parsed_bytes > max_head_bytes:
                self._too_large()
                raise ValueError("request head too large")  # stops the parser

        def _too_large(self) -> None:
            self._refuse(
                _problem(
                    431,
                    "Request Header Fields Too Large",
                    "headers-too-large",
                    f"the request line and headers exceed {max_head_bytes} bytes",
                )
            )

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # the parser stopped because we refused the request
                super().send_400_response(msg)

        def on_headers_complete(self) -> None:
            self._end_head()
            self._message_complete = False
            self._body_left = _announced_body(self.headers)
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._body_left is not None:
                self._body_left -= len(body)
            super().on_body(body)

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            # Every cycle, pipelined or not, starts here, before its task first runs: the app
            # is given this send.
            watched = self._watching_early_replies(cycle, cycle.send)
            cycle.send = watched  # type: ignore[method-assign, assignment]
            super()._start_asgi_task(cycle, app)

        def _watching_early_replies(self, cycle: RequestResponseCycle, send: _Send) -> _Send:
            """``cycle.send``, closing the connection after a reply that comes before a large
            rest of the body, and lingering instead of uvicorn's immediate close."""

            async def send_watched(message: ASGISendEvent) -> None:
                unread = cycle is self.cycle and not self._message_complete
                if message["type"] == "http.response.start" and unread:
                    left = self._body_left
                    if left is None or left > lingering.threshold_bytes:
                        cycle.keep_alive = False  # uvicorn adds "connection: close"
                elif (
                    message["type"] == "http.response.body"
                    and not message.get("more_body", False)
                    and unread
                    and not cycle.keep_alive
                ):
                    cycle.keep_alive = True  # so that uvicorn does not close at once: we linger
                    self._linger_next = True
                if message["type"] == "http.response.start":
                    self._writes.holding = True  # uvicorn's one write of the head, if it writes
                    try:
                        await send(message)
                    finally:
                        self._writes.holding = False
                    return
                await send(message)

            return send_watched

        def on_message_complete(self) -> None:
            self._message_complete = True
            super().on_message_complete()
            if self._drain_timer is not None:  # the reply went first: the next head starts now
                self._drain_timer.cancel()
                self._drain_timer = None
                if not self.transport.is_closing():
                    self._start_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self._linger_next:
                self._linger()
            elif self._message_complete:
                self._start_head()
            else:  # replied before a small rest of the body was read (a 401 or 429): it is
                # not the next request's head; it must arrive in time, or the connection closes
                self._drain_timer = self.loop.call_later(head_timeout_seconds, self.transport.close)

        def _linger(self) -> None:
            self._unset_keepalive_if_required()
            self._end_head()
            self._lingering = True
            self.cycle.body = bytearray()  # what uvicorn buffered of the body, never read
            self._linger_timer = self.loop.call_later(lingering.seconds, self.transport.close)
            if self.transport.can_write_eof():  # the FIN after the reply (not over TLS)
                self.transport.write_eof()

        def connection_lost(self, exc: Exception | None) -> None:
            self._end_head()
            self._stop_send_timer()
            for timer in (self._drain_timer, self._linger_timer):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing():
                return
            if self._head_bytes == 0:  # an idle connection: just close it
                self.transport.close()
                return
            self._refuse(
                _problem(
                    408,
                    "Request Timeout",
                    "request-timeout",
                    f"the request headers did not arrive within {head_timeout_seconds:g} s",
                )
            )

        def _refuse(self, response: bytes) -> None:
            """Reply to a head refused (431, 408) and end the connection with a lingering
            close: the client may still be writing its request."""
            self._end_head()
            self._refused = True
            if not self.transport.is_closing():
                self.transport.write(response)
                self._lingering = True
                self._linger_timer = self.loop.call_later(lingering.seconds, self.transport.close)
                if self.transport.can_write_eof():
                    self.transport.write_eof()

    return BoundedHttpToolsProtocol


def protocol_for(settings: Settings) -> type[HttpToolsProtocol]:
    """The protocol class with the limits of ``settings``."""
    return bounded_protocol(
        settings.max_header_bytes,
        settings.header_timeout_seconds,
        settings.response_send_timeout_seconds,
        Lingering(
            settings.lingering_threshold_bytes,
            settings.lingering_max_bytes,
            settings.lingering_seconds,
        ),
    )


def __getattr__(name: str) -> type[HttpToolsProtocol]:
    """``csatdist.http.protocol:FromSettings``: the class with the limits of the settings in the
    environment, by import path (uvicorn's workers import their protocol by name)."""
    if name == "FromSettings":
        from csatdist.settings import load_settings

        return protocol_for(load_settings())
    raise AttributeError(name)
