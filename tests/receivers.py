"""A webhook receiver for tests that run real servers: a real HTTP server on 127.0.0.1 that
records every delivery, answers with the statuses it is told, and counts every connection (so a
test can tell that a refused target was never even contacted)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def id(self) -> str:
        return self.headers["X-CSAT-Delivery"]

    @property
    def signature(self) -> str:
        return self.headers["X-CSAT-Signature"]

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """Answers the queued ``statuses`` first, then ``status`` (200 unless changed), after
    ``delay`` seconds."""

    port: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def prefix(self) -> str:
        """The ``CSATDIST_WEBHOOK_ALLOW`` entry that allows this receiver."""
        return f"http://127.0.0.1:{self.port}/"

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def wait_for(self, count: int, seconds: float = 30.0) -> list[Delivery]:
        """The deliveries once at least ``count`` arrived."""
        wait_until(lambda: len(self.received()) >= count, seconds, f"{count} deliveries")
        return self.received()


def wait_until(condition: Callable[[], bool], seconds: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.deliveries.append(
                    Delivery(dict(self.headers.items()), body, time.monotonic())
                )
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                delay = receiver.delay
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            with receiver.lock:
                receiver.connections += 1
            return True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # e.g. a TLS handshake a refused https target would have sent: counted above

    server = Server(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
