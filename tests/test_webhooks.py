from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from csatdist import __version__
from csatdist.errors import InvalidRequest
from csatdist.webhooks import (
    FIRST_RETRY_MS,
    MAX_RETRY_GAP_MS,
    RESPONSE_EXCERPT_BYTES,
    RETRY_FOR_MS,
    AllowedPrefix,
    Attempt,
    WebhookRefused,
    address_problem,
    check_target,
    deliver,
    new_delivery_id,
    new_secret,
    next_retry_at,
    parse_allow_list,
    retry_gap_ms,
    sign,
    verify,
    vet_target,
    webhook_client,
    webhook_url_problem,
)

SECRET = "s3cr3t-for-tests"
BODY = b'{"alert":"low","state":"firing"}'
HUGE_BODY_BYTES = 100 * 2**20


# -- signatures ---------------------------------------------------------------------------------


def test_signature_is_hex_hmac_sha256() -> None:
    # The HMAC-SHA256 example from Wikipedia / RFC 4231 style test vectors.
    expected = "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    message = b"The quick brown fox jumps over the lazy dog"
    assert sign("key", message) == expected
    assert sign(b"key", message) == expected


def test_verify_accepts_only_the_exact_signature() -> None:
    header = sign(SECRET, BODY)
    assert verify(SECRET, BODY, header)
    assert verify(SECRET.encode(), BODY, f" {header} ")
    assert not verify(SECRET, BODY + b" ", header)
    assert not verify("other", BODY, header)
    assert not verify(SECRET, BODY, header.upper())
    assert not verify(SECRET, BODY, header[:-1])
    for bad in [None, "", "sha256=", "sha1=" + header[7:], "sha256=é\udcff"]:
        assert not verify(SECRET, BODY, bad)


def test_new_secret_is_32_random_url_safe_bytes() -> None:
    secrets_ = {new_secret() for _ in range(100)}
    assert len(secrets_) == 100
    for secret in secrets_:
        assert len(base64.urlsafe_b64decode(secret + "=")) == 32
        assert secret.isascii()
        assert all(c.isalnum() or c in "-_" for c in secret)


def test_delivery_ids_are_unique() -> None:
    assert len({new_delivery_id() for _ in range(100)}) == 100


# -- URL form and the allow list ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/csat",
        "https://hooks.example.com:8443/a/b?token=x",
        "http://127.0.0.1:9000/",  # the form is fine; check_target decides where it may go
        "https://bücher.example/",
        "https://[2606:4700::1111]/",
        "https://hooks.example.com./",
    ],
)
def test_well_formed_urls(url: str) -> None:
    assert webhook_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (None, "string"),
        (42, "string"),
        ("", "http or https"),
        ("hooks.example.com/x", "http or https"),
        ("ftp://hooks.example.com/", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("https:///path", "host"),
        ("https://good.com@127.0.0.1/", "credentials"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://127.0.0.1\\@good.com/", "credentials"),
        ("http://127.0.0.1:9000.evil.com/", "not a valid URL"),
        ("http://127.0.0.1:90001/", "invalid port"),
        ("http://127.0.0.1:0/", "invalid port"),
        ("https://exa mple.com/", "spaces"),
        ("https://hooks.example.com/\n", "spaces"),
        ("https://exa%20mple.com/", "host name"),
        ("https://[fe80::1%25eth0]/", "IPv6"),
        ("https://\uff11\uff12\uff17.0.0.1/", "not a valid URL"),
        ("https://h.example/" + "x" * 2048, "at most 2048"),
    ],
)
def test_malformed_urls(url: object, fragment: str) -> None:
    problem = webhook_url_problem(url)
    assert problem is not None
    assert fragment in problem


def test_allow_list_parsing() -> None:
    prefixes = parse_allow_list(
        " http://127.0.0.1:9000/ , https://Hooks.Internal/ci,, http://[0:0::1]:80"
    )
    assert prefixes == (
        AllowedPrefix("http", "127.0.0.1", 9000, "/"),
        AllowedPrefix("https", "hooks.internal", 443, "/ci"),
        AllowedPrefix("http", "::1", 80, "/"),
    )
    assert parse_allow_list("") == ()
    assert parse_allow_list(["http://127.0.0.1:9000/"]) == prefixes[:1]


@pytest.mark.parametrize(
    "entry",
    ["ftp://x/", "http://u:p@h/", "http://h/?q=1", "http://h/#f", "not a url", "http://h:0/"],
)
def test_bad_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="webhook_allow entry"):
        parse_allow_list(entry)


def never_resolve(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should not be resolved")


def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


ALLOW = parse_allow_list("http://127.0.0.1:9000/, https://hooks.internal/ci, http://[::1]:9000/")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/",
        "http://127.0.0.1:9000/any/path?x=1",
        "HTTP://127.0.0.1:9000/",
        "https://hooks.internal/ci",
        "https://hooks.internal:443/ci/build/7",
        "https://HOOKS.internal/ci/",
        "http://[0::1]:9000/x",
    ],
)
def test_allowed_prefixes_bypass_the_checks(url: str) -> None:
    target = vet_target(url, ALLOW, loopback)
    assert target.allowed
    assert target.addresses in {("127.0.0.1",), ("::1",)}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9001/",  # another port
        "http://127.0.0.1/",  # port 80
        "https://127.0.0.1:9000/",  # another scheme
        "http://localhost:9000/",  # another spelling of the host is another host
        "http://127.1:9000/",
        "http://2130706433:9000/",
        "https://hooks.internal/cix",  # the prefix ends at a path segment
        "https://hooks.internal/",
        "https://hooks.internal/ci/../admin",  # httpx removes the dot segments first
        "https://hooks.internal/ci/%2e%2e/admin",
        "https://hooks.internal.evil.com/ci",
        "https://evil.com/https://hooks.internal/ci",
    ],
)
def test_urls_outside_the_allow_list_are_checked(url: str) -> None:
    with pytest.raises(WebhookRefused):
        vet_target(url, ALLOW, loopback)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9000.evil.com/", "http://127.0.0.1:90001/", "http://a@127.0.0.1:9000/"],
)
def test_malformed_urls_never_match_an_allowed_prefix(url: str) -> None:
    with pytest.raises(WebhookRefused):
        vet_target(url, ALLOW, never_resolve)


# -- the SSRF guard -----------------------------------------------------------------------------

NOT_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.255",
    "0.0.0.0",  # noqa: S104 -- an address to refuse, not one to bind
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "ff0e::1",  # global-scope multicast: is_global, still refused
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1",
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82a::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def resolver(*answers: Sequence[str]) -> Callable[[str, int], list[str]]:
    """A resolver giving these answers to successive calls (the last one repeats)."""
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return list(answers[min(len(calls), len(answers)) - 1])

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_a_name_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    with pytest.raises(WebhookRefused) as caught:
        check_target("https://hooks.example.com/", (), resolver(["8.8.8.8", address]))
    assert "not public" in caught.value.reason
    assert address not in caught.value.reason  # how names resolve is not told to tenants


def test_a_public_name_is_accepted_with_all_its_addresses() -> None:
    resolve = resolver(["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
    target = vet_target("https://hooks.example.com:8443/x", (), resolve)
    assert target.addresses == ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")
    assert not target.allowed
    assert resolve.calls == [("hooks.example.com", 8443)]  # type: ignore[attr-defined]
    assert check_target("https://hooks.example.com/", (), resolve) is None


def test_names_are_resolved_in_their_idna_form() -> None:
    resolve = resolver(["8.8.8.8"])
    vet_target("https://Bücher.example/", (), resolve)
    assert resolve.calls == [("xn--bcher-kva.example", 443)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("answer", [[], socket.gaierror(-2, "Name or service not known")])
def test_a_name_that_does_not_resolve_is_refused(answer: object) -> None:
    def resolve(host: str, port: int) -> list[str]:
        if isinstance(answer, Exception):
            raise answer
        return []

    with pytest.raises(WebhookRefused, match="does not resolve"):
        check_target("https://nowhere.example/", (), resolve)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://localhost/",
        "http://[::ffff:127.0.0.1]/",
        "http://hooks.example.com/",  # public, but only https is allowed by default
    ],
)
def test_plain_http_is_refused_by_default(url: str) -> None:
    with pytest.raises(WebhookRefused, match="https"):
        check_target(url, (), resolver(["8.8.8.8"]))


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://127.0.0.1:8443/",
        "https://127.1/",  # inet_aton's short form, resolved by the system resolver
        "https://0x7f000001/",
        "https://0177.0.0.1/",
        "https://2130706433/",
        "https://localhost/",
        "https://localhost./",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:7f00:1]/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00::1]/",
        "https://0.0.0.0/",
        "https://100.64.0.1/",
    ],
)
def test_loopback_and_friends_are_refused_with_the_system_resolver(url: str) -> None:
    with pytest.raises(WebhookRefused) as caught:
        check_target(url, ())
    assert isinstance(caught.value, InvalidRequest)  # a 400 when a rule is saved
    assert [p.name for p in caught.value.invalid_params] == ["webhook"]


def test_an_ip_literal_is_named_in_the_reason() -> None:
    with pytest.raises(WebhookRefused, match=r"169\.254\.169\.254 is a link-local address"):
        check_target("https://169.254.169.254/", (), never_resolve)


def test_credentials_in_the_url_are_refused_before_anything_resolves() -> None:
    with pytest.raises(WebhookRefused, match="credentials"):
        check_target("https://good.com@127.0.0.1/", (), never_resolve)


# -- delivery against a real receiver -----------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool


@dataclass
class Receiver:
    """A local HTTP(S) receiver that checks every signature and counts what it saw."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    huge_done: threading.Event = field(default_factory=threading.Event)
    huge_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def reply(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signed = verify(SECRET, body, self.headers.get("X-CSAT-Signature"))
            with receiver.lock:
                receiver.seen.append(Seen(self.path, dict(self.headers.items()), body, signed))
                count = sum(1 for s in receiver.seen if s.path == self.path)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.respond(count)  # raises when the client gave up, as it should

        def respond(self, count: int) -> None:
            if self.path == "/flaky" and count <= 2:
                self.reply(503, b"try later")
            elif self.path == "/slow":
                receiver.release.wait(10)
                self.reply(200, b"late")
            elif self.path == "/redirect":
                self.reply(302, Location=receiver.url("/ok"))
            elif self.path == "/error":
                self.reply(500, b"boom")
            elif self.path == "/cookie":
                self.reply(200, b"", Set_Cookie="session=abc; Path=/")
            elif self.path == "/huge":
                self.huge()
            else:
                self.reply(200, b"thanks")

        def huge(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE_BODY_BYTES))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while receiver.huge_sent < HUGE_BODY_BYTES:
                    self.wfile.write(chunk)
                    receiver.huge_sent += len(chunk)
            finally:
                receiver.huge_done.set()

    return Handler


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A test CA and a certificate for hooks.test signed by it: (cert, key, CA PEM)."""
    now = dt.datetime.now(dt.UTC)

    def build(
        subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csatdist test CA")])
    ca = (
        build("csatdist test CA", ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        build("hooks.test", ca_name, key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "hooks.pem", tmp_path / "hooks.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM)


def _serve(tls: tuple[Path, Path] | None = None) -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    receiver = Receiver(port=server.server_address[1])
    server.RequestHandlerClass = _handler(receiver)
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


@pytest.fixture
def tls_receiver(tls_files: tuple[Path, Path, bytes]) -> Iterator[Receiver]:
    yield from _serve(tls_files[:2])


def send(
    receiver: Receiver,
    url: str,
    *,
    delivery_id: str = "d-1",
    timeout: float = 10.0,
    allow: str | None = None,
    resolve: Callable[[str, int], Sequence[str]] | None = None,
    verify_tls: ssl.SSLContext | bool = True,
) -> Attempt:
    """One delivery, with the receiver's origin allowed (it is on loopback)."""
    prefixes = parse_allow_list(allow if allow is not None else receiver.url("/"))

    async def run() -> Attempt:
        async with webhook_client(verify_tls) as client:
            return await deliver(
                client,
                url,
                BODY,
                SECRET,
                delivery_id,
                timeout,
                allow=prefixes,
                resolve=resolve or loopback,
            )

    return asyncio.run(run())


def test_a_delivery_is_signed_and_identified(receiver: Receiver) -> None:
    attempt = send(receiver, receiver.url("/ok"), delivery_id="delivery-42")
    assert attempt == Attempt(
        status=200, error=None, duration_ms=attempt.duration_ms, response="thanks"
    )
    assert attempt.ok
    [seen] = receiver.seen
    assert seen.signed
    assert seen.body == BODY
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == f"csatdist/{__version__}"
    assert seen.headers["X-CSAT-Delivery"] == "delivery-42"
    assert seen.headers["X-CSAT-Signature"] == sign(SECRET, BODY)
    assert seen.headers["Host"] == f"127.0.0.1:{receiver.port}"


def test_retries_keep_the_delivery_id_until_a_2xx(receiver: Receiver) -> None:
    """What the outbox does: one id per notification, attempts until success, on schedule."""
    delivery_id = new_delivery_id()
    first_ms, attempts, log = 1_000_000, 0, []
    due: int | None = first_ms
    while due is not None:
        attempt = send(receiver, receiver.url("/flaky"), delivery_id=delivery_id)
        attempts += 1
        log.append((due, attempt))
        if attempt.ok:
            break
        due = next_retry_at(first_ms, attempts)
    assert [(at, a.status, a.error) for at, a in log] == [
        (first_ms, 503, "the receiver answered 503"),
        (first_ms + 10_000, 503, "the receiver answered 503"),
        (first_ms + 30_000, 200, None),
    ]
    assert [s.headers["X-CSAT-Delivery"] for s in receiver.seen] == [delivery_id] * 3
    assert all(s.signed and s.body == BODY for s in receiver.seen)


def test_a_slow_receiver_times_out(receiver: Receiver) -> None:
    attempt = send(receiver, receiver.url("/slow"), timeout=0.5)
    assert attempt.status is None
    assert attempt.error is not None
    assert "timed out" in attempt.error
    assert attempt.duration_ms < 5_000  # generous: the point is that it did not wait 10 s


def test_a_redirect_is_a_failure_and_is_not_followed(receiver: Receiver) -> None:
    attempt = send(receiver, receiver.url("/redirect"))
    assert attempt.status == 302
    assert attempt.error is not None
    assert "not followed" in attempt.error
    assert receiver.url("/ok") in attempt.error
    assert [s.path for s in receiver.seen] == ["/redirect"]


def test_an_error_status_is_a_failure(receiver: Receiver) -> None:
    attempt = send(receiver, receiver.url("/error"))
    assert (attempt.status, attempt.error, attempt.response) == (
        500,
        "the receiver answered 500",
        "boom",
    )
    assert not attempt.ok


def test_a_huge_reply_is_cut_off(receiver: Receiver) -> None:
    attempt = send(receiver, receiver.url("/huge"))
    assert attempt.ok
    assert attempt.status == 200
    assert attempt.response == "x" * RESPONSE_EXCERPT_BYTES
    assert receiver.huge_done.wait(10)  # the receiver's write failed: we hung up
    assert receiver.huge_sent < HUGE_BODY_BYTES // 4  # socket buffers, not 100 MB


def test_no_cookies_are_kept_between_deliveries(receiver: Receiver) -> None:
    async def run() -> None:
        async with webhook_client() as client:
            for path in ("/cookie", "/ok"):
                attempt = await deliver(
                    client,
                    receiver.url(path),
                    BODY,
                    SECRET,
                    "d",
                    allow=parse_allow_list(receiver.url("/")),
                )
                assert attempt.ok

    asyncio.run(run())
    assert "Cookie" not in receiver.seen[1].headers


def test_nothing_listening_is_a_connect_failure(receiver: Receiver) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/"
    attempt = send(receiver, url, allow=url)
    assert attempt.status is None
    assert attempt.error is not None
    assert attempt.error.startswith("ConnectError")


def test_a_refused_target_is_never_contacted(receiver: Receiver) -> None:
    attempt = send(receiver, receiver.url("/ok"), allow="")
    assert attempt.status is None
    assert attempt.error is not None
    assert attempt.error.startswith("refused: must be an https URL")
    assert receiver.seen == []


def test_dns_rebinding_after_the_save_time_check_is_refused(receiver: Receiver) -> None:
    # Public when the rule is saved, loopback by the time of the delivery.
    resolve = resolver(["93.184.216.34"], ["127.0.0.1"])
    url = f"https://rebind.test:{receiver.port}/ok"
    check_target(url, (), resolve)
    attempt = send(receiver, url, allow="", resolve=resolve)
    assert attempt.error is not None
    assert attempt.error.startswith("refused: the host 'rebind.test' resolves to")
    assert receiver.seen == []


def test_the_delivery_connects_to_the_address_it_vetted(receiver: Receiver) -> None:
    """receiver.test resolves only through the injected resolver, and only once: the request
    arriving proves httpx connected to the vetted address and did not resolve the name itself."""
    resolve = resolver(["127.0.0.1"], ["203.0.113.1"])
    url = f"http://receiver.test:{receiver.port}/ok"
    attempt = send(receiver, url, allow=f"http://receiver.test:{receiver.port}/", resolve=resolve)
    assert attempt.ok, attempt.error
    assert resolve.calls == [("receiver.test", receiver.port)]  # type: ignore[attr-defined]
    assert receiver.seen[0].headers["Host"] == f"receiver.test:{receiver.port}"


def test_the_next_vetted_address_is_tried_when_one_refuses(receiver: Receiver) -> None:
    # The receiver listens on 127.0.0.1 only, so 127.0.0.2 refuses the connection.
    url = f"http://receiver.test:{receiver.port}/ok"
    resolve = resolver(["127.0.0.2", "127.0.0.1"])
    attempt = send(receiver, url, allow=url, resolve=resolve)
    assert attempt.ok, attempt.error
    assert len(receiver.seen) == 1


def test_tls_is_verified_against_the_name_while_connecting_to_the_address(
    tls_receiver: Receiver, tls_files: tuple[Path, Path, bytes]
) -> None:
    trust = ssl.create_default_context(cadata=tls_files[2].decode())
    origin = f"https://hooks.test:{tls_receiver.port}/"
    attempt = send(tls_receiver, origin + "ok", allow=origin, verify_tls=trust)
    assert attempt.ok, attempt.error
    assert tls_receiver.seen[0].headers["Host"] == f"hooks.test:{tls_receiver.port}"
    assert tls_receiver.seen[0].signed


def test_tls_for_another_name_fails(
    tls_receiver: Receiver, tls_files: tuple[Path, Path, bytes]
) -> None:
    trust = ssl.create_default_context(cadata=tls_files[2].decode())
    origin = f"https://other.test:{tls_receiver.port}/"
    attempt = send(tls_receiver, origin + "ok", allow=origin, verify_tls=trust)
    assert attempt.status is None
    assert attempt.error is not None
    assert "certificate" in attempt.error.lower() or "hostname" in attempt.error.lower()
    assert tls_receiver.seen == []


def test_tls_is_verified_by_default(tls_receiver: Receiver) -> None:
    origin = f"https://hooks.test:{tls_receiver.port}/"
    attempt = send(tls_receiver, origin + "ok", allow=origin)  # the test CA is not trusted
    assert attempt.status is None
    assert tls_receiver.seen == []


def test_deliver_never_raises_for_a_bad_url() -> None:
    async def run() -> Attempt:
        async with webhook_client() as client:
            return await deliver(client, "ftp://x/", BODY, SECRET, "d", resolve=never_resolve)

    attempt = asyncio.run(run())
    assert attempt.error is not None
    assert attempt.error.startswith("refused: must be an http or https URL")


# -- backoff ------------------------------------------------------------------------------------


def schedule(first_ms: int = 0) -> list[int]:
    """Every retry time on the fixed schedule, until giving up."""
    times, attempts = [], 1
    while (due := next_retry_at(first_ms, attempts)) is not None:
        times.append(due)
        attempts += 1
    return times


def test_the_first_retry_is_within_10_seconds() -> None:
    assert next_retry_at(5_000, 1) == 5_000 + FIRST_RETRY_MS == 15_000


def test_waits_double_up_to_10_minutes_for_24_hours() -> None:
    times = schedule()
    gaps = [b - a for a, b in zip([0, *times], times, strict=False)]
    assert gaps[:8] == [10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 600_000, 600_000]
    assert set(gaps[6:]) == {MAX_RETRY_GAP_MS}
    assert times[-1] <= RETRY_FOR_MS < times[-1] + MAX_RETRY_GAP_MS
    assert len(times) == 148  # 10, 30, 70, 150, 310, 630 s, then every 600 s up to 85,830 s


def test_the_gap_counts_from_the_last_attempt_when_given() -> None:
    # A worker that was down for an hour retries once, then waits again: no burst.
    assert next_retry_at(0, 3, last_attempt_ms=3_600_000) == 3_600_000 + 40_000
    assert next_retry_at(0, 3, last_attempt_ms=RETRY_FOR_MS - 40_000) == RETRY_FOR_MS
    assert next_retry_at(0, 3, last_attempt_ms=RETRY_FOR_MS - 39_999) is None


def test_jitter_only_shortens_the_wait() -> None:
    assert next_retry_at(0, 1, jitter=0.5) == 5_000
    assert next_retry_at(0, 1, jitter=0.25) == 7_500
    assert next_retry_at(0, 9, jitter=0.1) == next_retry_at(0, 8) + 540_000  # type: ignore[operator]
    for bad in (-0.1, 0.51, 1.0):
        with pytest.raises(ValueError, match="jitter"):
            next_retry_at(0, 1, jitter=bad)


def test_backoff_is_deterministic_and_handles_any_attempt_count() -> None:
    assert schedule(123) == [t + 123 for t in schedule()]
    assert retry_gap_ms(10**9) == MAX_RETRY_GAP_MS
    assert next_retry_at(0, 10**9) is None
    with pytest.raises(ValueError, match="attempts"):
        next_retry_at(0, 0)
