"""Request limits of a real `csatdist serve`: head size, slow heads, slow bodies, idle
connections, and the documented caps on ids and bodies."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.helpers import ServerProcess, bearer, create_key, start_server

LIMITS = {
    "CSATDIST_MAX_HEADER_BYTES": "8192",
    "CSATDIST_HEADER_TIMEOUT_SECONDS": "1",
    "CSATDIST_REQUEST_BODY_TIMEOUT_SECONDS": "1",
    "CSATDIST_MAX_IDS_PER_LIST": "50",
    "CSATDIST_LINGERING_SECONDS": "1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    tmp: Path = tmp_path_factory.mktemp("limits")
    database = tmp / "limits.db"
    token = create_key(database, "acme", "read,write")
    process = start_server(database, tmp / "server.log", env=LIMITS)
    yield process, token
    process.stop()


def raw(url: str, payload: bytes, *, pause: float = 0.0, then: bytes = b"") -> bytes:
    """Send bytes on a fresh connection (optionally pausing, then sending more); return all
    that comes back until the server closes the connection."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(payload)
        if pause:
            time.sleep(pause)
            if then:
                with contextlib.suppress(OSError):
                    sock.sendall(then)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


def problem_of(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower()
    document: dict[str, object] = orjson.loads(body)
    return document


@pytest.mark.slow
def test_oversized_headers_get_431_and_the_server_stays_fine(
    server: tuple[ServerProcess, str],
) -> None:
    process, _ = server
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    response = raw(process.url, request)
    assert response.startswith(b"HTTP/1.1 431 ")
    assert problem_of(response)["type"] == "urn:csatdist:problem:headers-too-large"
    assert httpx.get(process.url + "/healthz", headers={"X-Ok": "a" * 4000}).status_code == 200


@pytest.mark.slow
def test_a_client_still_sending_its_oversized_head_reads_the_431(
    server: tuple[ServerProcess, str],
) -> None:
    """A client that writes its whole request before reading: the 431 goes out after the
    first 8 KB, and what it sends after that is read and dropped (a lingering close), not
    answered with a reset that would destroy the 431 before the client reads it."""
    process, _ = server
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000
    parts = urlsplit(process.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the 431 is sent meanwhile
        for _ in range(4):  # a client writing the rest of its request: no reset, no broken pipe
            sock.sendall(b"a" * 50_000)
            time.sleep(0.05)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 431 "), response[:200]


@pytest.mark.slow
def test_a_client_that_sends_its_headers_too_slowly_is_cut_off(
    server: tuple[ServerProcess, str],
) -> None:
    process, _ = server
    started = time.monotonic()
    response = raw(process.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", pause=2.5)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert problem_of(response)["type"] == "urn:csatdist:problem:request-timeout"
    assert time.monotonic() - started < 8


@pytest.mark.slow
def test_the_rest_of_a_body_refused_early_is_not_taken_for_the_next_head(
    server: tuple[ServerProcess, str],
) -> None:
    """A 401 goes out before the body is read; the 100 KB that follow are that request's
    body (not a head over the 8 KB limit: no 431), and — under the lingering threshold, 256
    KiB — the connection serves the next one."""
    process, _ = server
    body = b'{"answers": [' + b" " * 100_000 + b"]}"
    refused = (
        "POST /api/account/acme/csat/answers HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer not-a-key\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    follow = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    parts = urlsplit(process.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(refused + body[:1])  # the body's first byte; the reply comes
        time.sleep(0.5)
        # The rest of the body and the start of the next head in one read, the head's end in
        # another: only the head's own bytes count towards its limit.
        sock.sendall(body[1:] + follow[:20])
        time.sleep(0.5)
        sock.sendall(follow[20:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", response)
    assert statuses == [b"401", b"200"], response[:2000]


@pytest.mark.slow
def test_the_rest_of_a_body_refused_early_must_arrive_in_time(
    server: tuple[ServerProcess, str],
) -> None:
    """After the early reply, a client that stops sending the announced body is disconnected
    (within the head timeout, 1 s here) instead of holding the connection."""
    process, _ = server
    refused = (
        b"POST /api/account/acme/csat/answers HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer not-a-key\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )
    started = time.monotonic()
    response = raw(process.url, refused)
    assert response.startswith(b"HTTP/1.1 401 ")
    assert time.monotonic() - started < 8


@pytest.mark.slow
def test_an_idle_connection_is_closed(server: tuple[ServerProcess, str]) -> None:
    process, _ = server
    parts = urlsplit(process.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < 8


@pytest.mark.slow
def test_a_body_that_arrives_too_slowly_gets_408(server: tuple[ServerProcess, str]) -> None:
    process, token = server
    head = (
        "POST /api/account/acme/csat/answers HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    response = raw(process.url, head + b'{"id": "slow", ', pause=2.5)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert "did not arrive within 1 s" in str(problem_of(response)["detail"])
    totals = httpx.get(
        process.url + "/operations/api/account/acme/msgcsatdistribution",
        params={"v": 1, "timeframe": 60},
        headers=bearer(token),
    ).json()["metricsTotals"]
    assert totals["total_answers"] == 0  # nothing half-received was counted


@pytest.mark.slow
def test_id_lists_are_capped_at_the_documented_maximum(server: tuple[ServerProcess, str]) -> None:
    process, token = server
    url = process.url + "/operations/api/account/acme/msgcsatdistribution"
    at_cap = ",".join(str(i) for i in range(50))
    ok = httpx.get(url, params={"v": 1, "timeframe": 60, "agentIds": at_cap}, headers=bearer(token))
    assert ok.status_code == 200
    over = httpx.get(
        url, params={"v": 1, "timeframe": 60, "agentIds": at_cap + ",50"}, headers=bearer(token)
    )
    assert over.status_code == 400
    assert over.json()["invalid_params"][0]["name"] == "agentIds"
    assert "at most 50" in over.json()["invalid_params"][0]["reason"]


INGEST = "/api/account/acme/csat/answers"
BIG = 50_000_000  # bytes a client announces and tries to send after its refusal


def upload_head(size: int | None, key: str = "not-a-key") -> bytes:
    """An ingest head announcing ``size`` bytes of NDJSON, or a chunked body (None)."""
    framing = "Transfer-Encoding: chunked" if size is None else f"Content-Length: {size}"
    return (
        f"POST {INGEST} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/x-ndjson\r\n{framing}\r\n\r\n"
    ).encode()


def write_then_read(url: str, head: bytes, size: int | None) -> tuple[int, bool, bytes]:
    """A client that writes its whole body (``size`` bytes, or BIG in chunks) before it reads,
    as `http.client` does: the bytes the socket took, whether a write failed, and all the
    reply it could read afterwards."""
    parts = urlsplit(url)
    piece = b"x\n" * 31_250
    if size is None:
        piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent, failed = 0, False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # counts what the server took
        sock.settimeout(20)
        sock.connect((parts.hostname, parts.port))
        sock.sendall(head)
        try:
            for _ in range((size or BIG) // 62_500):
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            failed = True
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                reply += chunk
    return sent, failed, reply


@contextlib.contextmanager
def write_slots_taken(url: str, token: str) -> Iterator[None]:
    """The account's two write slots held by uploads whose bodies are still to come (until
    the body timeout, 1 s here)."""
    parts = urlsplit(url)
    holders = [socket.create_connection((parts.hostname, parts.port)) for _ in range(2)]
    try:
        for holder in holders:
            holder.sendall(upload_head(1000, token) + b'{"id": ')
        time.sleep(0.2)
        yield
    finally:
        for holder in holders:
            holder.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "framing"), [(401, "length"), (413, "length"), (429, "length"), (401, "chunked")]
)
def test_a_large_body_refused_early_is_not_read_to_its_end_and_the_reply_arrives(
    server: tuple[ServerProcess, str], status: int, framing: str
) -> None:
    """A 401 (a bad key), a 413 (Content-Length over the limit) or a 429 (the account's write
    slots taken) goes out before the body is read. The server reads at most about a mebibyte
    more, then closes: the client's writes fail long before its 50 MB are out (before: the
    server parsed them all, or for a chunked body whatever came within the head timeout), yet
    it reads the whole reply afterwards."""
    process, token = server
    key = "not-a-key" if status == 401 else token
    size = None if framing == "chunked" else BIG if status != 429 else 10_000_000
    started = time.monotonic()
    with write_slots_taken(process.url, token) if status == 429 else contextlib.nullcontext():
        sent, failed, reply = write_then_read(process.url, upload_head(size, key), size)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    assert failed
    assert sent < 4 * 1024 * 1024  # the 1 MiB read after the reply, and the sockets' buffers
    assert b"\r\nconnection: close\r\n" in reply.lower()
    assert problem_of(reply)["status"] == status  # the body complete: it parses
    assert time.monotonic() - started < 8
    assert httpx.get(process.url + "/healthz").status_code == 200


@pytest.mark.slow
def test_an_ndjson_body_of_too_many_lines_is_refused_as_it_arrives(
    server: tuple[ServerProcess, str],
) -> None:
    """10 MB of garbage lines (5 M, within the byte limit) get their 413 at the part that
    passes 20,001 lines, not after all 10 MB were read and counted: the client's writes fail
    long before its body is out (before: the server took it all, then refused it)."""
    process, token = server
    size = 10_000_000
    sent, failed, reply = write_then_read(process.url, upload_head(size, token), size)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert "lines" in str(problem_of(reply)["detail"])
    assert failed
    assert sent < 4 * 1024 * 1024
    assert httpx.get(process.url + "/healthz").status_code == 200


@pytest.mark.slow
def test_a_client_library_gets_the_refusal_of_a_large_upload(
    server: tuple[ServerProcess, str],
) -> None:
    """httpx, like urllib3, reads the reply when its upload fails: it sees the 401."""
    process, _ = server
    response = httpx.post(
        process.url + INGEST,
        content=b"x\n" * (BIG // 2),
        headers={**bearer("not-a-key"), "Content-Type": "application/x-ndjson"},
        timeout=20,
    )
    assert response.status_code == 401
    assert response.headers["connection"] == "close"


def trickle(sock: socket.socket, seconds: float) -> None:
    """Send a few bytes every 50 ms for ``seconds``."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sock.sendall(b"x\n" * 100)
        time.sleep(0.05)


@pytest.mark.slow
def test_a_client_that_trickles_the_rest_of_a_refused_body_is_disconnected(
    server: tuple[ServerProcess, str],
) -> None:
    """After the reply and its FIN, the server reads what still comes for
    CSATDIST_LINGERING_SECONDS (1 s here), then closes: the client's writes start to fail."""
    process, _ = server
    parts = urlsplit(process.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(upload_head(BIG) + b"x\n" * 1000)
        reply = b""
        while chunk := sock.recv(65536):  # the reply, then the server's FIN
            reply += chunk
        started = time.monotonic()
        assert reply.startswith(b"HTTP/1.1 401 ")
        assert b"\r\nconnection: close\r\n" in reply.lower()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            trickle(sock, 8)
        assert 0.8 < time.monotonic() - started < 3


@pytest.mark.slow
def test_an_accepted_upload_over_the_lingering_threshold_keeps_its_connection(
    server: tuple[ServerProcess, str],
) -> None:
    process, token = server
    now = int(time.time() * 1000)
    with httpx.Client(base_url=process.url, headers=bearer(token), timeout=20) as client:
        for batch in range(2):
            lines = [
                orjson.dumps(
                    {"id": f"big-{batch}-{i}", "time": now, "skillId": 1, "agentId": 2, "score": 5}
                )
                for i in range(5000)
            ]
            body = b"\n".join(lines)
            assert len(body) > 256 * 1024
            response = client.post(
                INGEST, content=body, headers={"Content-Type": "application/x-ndjson"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["accepted"] == 5000
            assert "connection" not in response.headers
