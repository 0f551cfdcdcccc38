"""Webhook deliveries: signatures, the SSRF guard, one delivery attempt, and retry backoff.

Rules are EXTENSIONS.md section 8. A tenant chooses the URL, so the server must never become a
proxy into its own network: a target is vetted when a rule is saved and again at every delivery,
after DNS resolution, and the delivery then connects to exactly the address that was vetted (see
:func:`deliver`), so a name that re-resolves between the check and the connection ("DNS
rebinding") cannot redirect it. Everything here except :func:`deliver` and
:func:`system_resolve` is pure.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import anyio
import anyio.to_thread
import httpx

from csatdist import __version__
from csatdist.buckets import MINUTE_MS
from csatdist.errors import InvalidParam, InvalidRequest

SIGNATURE_HEADER = "X-CSAT-Signature"
DELIVERY_HEADER = "X-CSAT-Delivery"
USER_AGENT = f"csatdist/{__version__}"

MAX_URL_LENGTH = 2048
#: Seconds a whole attempt may take: name resolution, connecting, sending, the response head.
DEFAULT_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
#: Bytes of the receiver's reply kept for the deliveries log; the rest is never read.
RESPONSE_EXCERPT_BYTES = 1024

#: Backoff (EXTENSIONS.md section 8): first retry within 10 s, doubling, at most 10 minutes
#: apart, for 24 h after the first attempt.
FIRST_RETRY_MS = 10_000
MAX_RETRY_GAP_MS = 10 * MINUTE_MS
RETRY_FOR_MS = 24 * 60 * MINUTE_MS
MAX_JITTER = 0.5

#: ``resolve(host, port)`` -> the addresses (text) the host name has.
Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address


class WebhookRefused(InvalidRequest):
    """The webhook target is not allowed: a 400 naming ``webhook`` when a rule is saved, a failed
    attempt (with this reason) at delivery."""

    def __init__(self, reason: str) -> None:
        super().__init__([InvalidParam("webhook", reason)])
        self.reason = reason


# -- signatures ---------------------------------------------------------------------------------


def new_secret() -> str:
    """A rule's signing secret: 32 random bytes as URL-safe text (43 characters).

    The HMAC key is the UTF-8 text itself, as shown to the user, so a receiver needs no decoding.
    """
    return secrets.token_urlsafe(32)


def new_delivery_id() -> str:
    """A delivery's id: chosen once per notification and kept across its retries."""
    return str(uuid.uuid4())


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: bytes | str, body: bytes) -> str:
    """The ``X-CSAT-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify(secret: bytes | str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body``: what a receiver does with each delivery.

    The comparison takes the same time wherever the strings differ, so an attacker cannot find a
    valid signature byte by byte from response times.
    """
    if header is None:
        return False
    expected = sign(secret, body).encode()
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "replace"))


# -- targets ------------------------------------------------------------------------------------


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _effective_port(url: httpx.URL) -> int:
    return url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]


def _host_problem(url: httpx.URL) -> str | None:
    host = url.raw_host.decode("ascii", "replace")
    if not host:
        return "must have a host"
    if ":" in host:  # httpx keeps an IPv6 literal without its brackets
        literal = _ip_literal(host)
        if literal is None or "%" in host:
            return "has an invalid IPv6 address"
        return None
    if not _HOST_NAME.fullmatch(host) or len(host) > 253:
        return f"has an invalid host name: {host[:60]!r}"
    return None


def webhook_url_problem(url: object) -> str | None:
    """Why ``url`` is not a usable webhook URL, syntactically; None when it is.

    Only its form is checked here (http or https, a host, a valid port, no credentials); where it
    leads is decided by :func:`check_target`. Credentials are refused because the signature is
    how a receiver authenticates us, and ``https://good.example@10.0.0.1/`` only misleads.
    """
    if not isinstance(url, str):
        return "must be an http or https URL (a string)"
    if len(url) > MAX_URL_LENGTH:
        return f"must have at most {MAX_URL_LENGTH} characters, got {len(url)}"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        return f"is not a valid URL: {str(exc)[:80]}"
    if parsed.scheme not in _DEFAULT_PORTS:
        return "must be an http or https URL"
    if parsed.userinfo:
        return "must not contain credentials (user:password@); deliveries are signed instead"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return f"has an invalid port: {parsed.port}"
    return _host_problem(parsed)


def parse_webhook_url(url: object) -> httpx.URL:
    """The URL as httpx parses it, the one parser used for checking, matching and sending."""
    problem = webhook_url_problem(url)
    if problem is not None or not isinstance(url, str):
        raise WebhookRefused(problem or "must be a URL")
    return httpx.URL(url)


@dataclass(frozen=True, slots=True)
class AllowedPrefix:
    """One ``webhook_allow`` entry: scheme, host and port must be equal, and the path must
    start with ``path`` at a segment boundary (``/hooks`` allows ``/hooks/a``, not ``/hooksx``)."""

    scheme: str
    host: str
    port: int
    path: str

    def matches(self, url: httpx.URL) -> bool:
        if (url.scheme, _normal_host(url), _effective_port(url)) != (
            self.scheme,
            self.host,
            self.port,
        ):
            return False
        path = url.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
        if self.path == "/":
            return True
        if "%2e" in path.lower():  # an encoded dot segment could climb out of the prefix
            return False
        prefix = self.path if self.path.endswith("/") else self.path + "/"
        return path == self.path or path.startswith(prefix)


def _normal_host(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii", "replace")
    literal = _ip_literal(host)
    return str(literal) if literal is not None else host


def parse_allow_list(setting: str | Iterable[str]) -> tuple[AllowedPrefix, ...]:
    """The ``webhook_allow`` setting (comma-separated URL prefixes); ValueError on a bad entry."""
    entries = setting.split(",") if isinstance(setting, str) else list(setting)
    prefixes = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        problem = webhook_url_problem(entry)
        if problem is None and ("?" in entry or "#" in entry):
            problem = "must not have a query or fragment"
        if problem is not None:
            raise ValueError(f"webhook_allow entry {entry[:80]!r} {problem}")
        url = httpx.URL(entry)
        path = url.raw_path.decode("ascii") or "/"
        prefixes.append(AllowedPrefix(url.scheme, _normal_host(url), _effective_port(url), path))
    return tuple(prefixes)


def address_problem(address: IPAddress) -> str | None:
    """Why a delivery must not connect to ``address``; None for a public unicast address.

    ``is_global`` is the backbone (it excludes loopback, RFC 1918, link-local with the
    169.254.169.254 metadata service, CGNAT 100.64/10, documentation and benchmarking ranges,
    fc00::/7, 0.0.0.0/8 ...); multicast and reserved are refused on top because ``is_global``
    counts them as global. IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4, Teredo)
    are judged by that address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
        for inner in (address.sixtofour, *(address.teredo or ())):
            if inner is not None and address_problem(inner) is not None:
                return "embeds a non-public IPv4 address"
    checks = [
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (address in _SHARED_ADDRESS_SPACE, "a carrier-grade NAT address"),
        (not address.is_global, "not a public address"),
    ]
    return next((f"is {reason}" for bad, reason in checks if bad), None)


def system_resolve(host: str, port: int) -> list[str]:
    """Every address (A and AAAA) of ``host``, in the resolver's order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Target:
    """A vetted webhook target: the parsed URL and the addresses a delivery may connect to."""

    url: httpx.URL
    addresses: tuple[str, ...]
    allowed: bool  # matched a webhook_allow prefix, so the address checks were skipped


def vet_target(
    url: object, allow: Sequence[AllowedPrefix] = (), resolve: Resolver = system_resolve
) -> Target:
    """Check ``url`` and resolve its host; raise :class:`WebhookRefused` naming the reason.

    Refused unless https and every address of the host is public, unless the URL matches an
    operator's ``allow`` prefix. Every address must pass, not just one: the connection could use
    any of them. Resolved addresses are not shown in the reason (a tenant must not learn how
    internal names resolve); a literal one is.
    """
    parsed = parse_webhook_url(url)
    allowed = any(prefix.matches(parsed) for prefix in allow)
    if not allowed and parsed.scheme != "https":
        raise WebhookRefused("must be an https URL (the operator can allow others: webhook_allow)")
    host = parsed.raw_host.decode("ascii")
    literal = _ip_literal(host)
    if literal is not None:
        addresses: tuple[str, ...] = (str(literal),)
    else:
        try:
            addresses = tuple(dict.fromkeys(resolve(host, _effective_port(parsed))))
        except (OSError, UnicodeError):
            addresses = ()
        if not addresses:
            raise WebhookRefused(f"the host {host[:80]!r} does not resolve")
    if not allowed:
        for text in addresses:
            address = _ip_literal(text)
            problem = "is not an IP address" if address is None else address_problem(address)
            if problem is not None:
                if literal is not None:
                    raise WebhookRefused(f"{literal} {problem}; webhooks must reach a public host")
                raise WebhookRefused(
                    f"the host {host[:80]!r} resolves to an address that is not public "
                    "(loopback, private, link-local or reserved); webhooks must reach a public host"
                )
    return Target(parsed, addresses, allowed)


def check_target(
    url: object, allow: Sequence[AllowedPrefix] = (), resolve: Resolver = system_resolve
) -> None:
    """The check when a rule is saved: raise :class:`WebhookRefused` (a 400) or return.

    It resolves the host name, so an async caller runs it in a worker thread.
    """
    vet_target(url, allow, resolve)


# -- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, as the deliveries log shows it."""

    status: int | None  # the receiver's status code; None when no response came
    error: str | None  # None exactly when the attempt succeeded
    duration_ms: int
    response: str = ""  # the start of the receiver's reply, at most RESPONSE_EXCERPT_BYTES

    @property
    def ok(self) -> bool:
        return self.error is None


def webhook_client(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """The client :func:`deliver` expects: no redirects, no proxies or settings from the
    environment, no cookies kept, no connection reuse (every delivery connects afresh to the
    address it vetted, with that name's TLS name; a pooled connection could carry one tenant's
    delivery over another name's TLS session on a shared address). ``verify`` is httpx's: True,
    or an ``ssl.SSLContext`` (tests trust their own CA with one)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        verify=verify,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keeps none
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
        timeout=DEFAULT_TIMEOUT_SECONDS,
    )


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    secret: bytes | str,
    delivery_id: str,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    *,
    allow: Sequence[AllowedPrefix] = (),
    resolve: Resolver = system_resolve,
) -> Attempt:
    """POST one signed delivery; never raises for anything the receiver or network does.

    The target is vetted again (:func:`vet_target`: the host may resolve elsewhere by now) and
    the request goes to a vetted *address*: the URL's host is replaced by that IP, while the
    ``Host`` header and the TLS server name (httpcore's ``sni_hostname`` extension, which is also
    the name the certificate is verified against) stay the URL's name. httpx therefore never
    resolves the name itself, so a DNS answer that changes after the check cannot be used.

    Redirects are failures, not followed: following one would send the delivery (and its
    signature) to a URL the SSRF check never saw, e.g. ``http://169.254.169.254/``. A 2xx is
    success. At most :data:`RESPONSE_EXCERPT_BYTES` of the reply are read, undecoded. ``timeout``
    bounds the whole attempt. ``client`` should come from :func:`webhook_client`.
    """
    started = time.monotonic()
    status: int | None = None
    location = ""
    excerpt = bytearray()

    def done(error: str | None) -> Attempt:
        if status is not None:  # once a status came, it decides; a cut-off excerpt does not
            error = _status_problem(status, location)
        return Attempt(
            status=status,
            error=error,
            duration_ms=round((time.monotonic() - started) * 1000),
            response=excerpt.decode("utf-8", "replace"),
        )

    try:
        with anyio.fail_after(timeout):
            target = await anyio.to_thread.run_sync(
                vet_target, url, allow, resolve, abandon_on_cancel=True
            )
            response = await _send(client, target, body, secret, delivery_id, timeout)
            try:
                status = response.status_code
                location = response.headers.get("Location", "")
                async for chunk in response.aiter_raw():
                    excerpt += chunk[: RESPONSE_EXCERPT_BYTES - len(excerpt)]
                    if len(excerpt) >= RESPONSE_EXCERPT_BYTES:
                        break
            finally:
                await response.aclose()
    except WebhookRefused as exc:
        return done(f"refused: {exc.reason}")
    except TimeoutError:
        return done(f"timed out after {timeout:g} s")
    except httpx.TimeoutException as exc:
        return done(f"timed out ({type(exc).__name__})")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return done(f"{type(exc).__name__}: {str(exc)[:200] or 'failed'}")
    return done(None)


async def _send(
    client: httpx.AsyncClient,
    target: Target,
    body: bytes,
    secret: bytes | str,
    delivery_id: str,
    timeout: float,
) -> httpx.Response:
    """Send to the first vetted address that accepts a connection (the resolver's order)."""
    name = target.url.raw_host.decode("ascii")
    extensions = {} if _ip_literal(name) is not None else {"sni_hostname": name}
    headers = {
        "Host": target.url.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, body),
        DELIVERY_HEADER: delivery_id,
        "Accept-Encoding": "identity",  # a compressed reply could expand beyond the excerpt bound
        "Connection": "close",
    }
    limits = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_SECONDS, timeout))
    for index, address in enumerate(target.addresses):
        request = client.build_request(
            "POST",
            target.url.copy_with(host=address),
            content=body,
            headers=headers,
            timeout=limits,
            extensions=extensions,
        )
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError:
            if index == len(target.addresses) - 1:
                raise
    raise AssertionError("vet_target never returns a target without addresses")


def _status_problem(status: int, location: str) -> str | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return (
            f"redirect ({status} to {location[:200]!r}) not followed: the new target was "
            "never checked; configure the final URL"
        )
    return f"the receiver answered {status}"


# -- retries ------------------------------------------------------------------------------------


def retry_gap_ms(attempts: int) -> int:
    """The wait after the ``attempts``-th attempt: 10 s, doubling, capped at 10 minutes."""
    if attempts < 1:
        raise ValueError("attempts counts the attempts made, from 1")
    if attempts > 20:  # long past the cap; keeps 2**n small
        return MAX_RETRY_GAP_MS
    return min(FIRST_RETRY_MS << (attempts - 1), MAX_RETRY_GAP_MS)


def _scheduled_offset_ms(attempts: int) -> int:
    """When the ``attempts``-th attempt is due on the fixed schedule, after the first one."""
    offset, n = 0, 1
    while n < attempts and retry_gap_ms(n) < MAX_RETRY_GAP_MS:
        offset += retry_gap_ms(n)
        n += 1
    return offset + max(attempts - n, 0) * MAX_RETRY_GAP_MS


def next_retry_at(
    first_attempt_ms: int,
    attempts: int,
    *,
    last_attempt_ms: int | None = None,
    jitter: float = 0.0,
) -> int | None:
    """When to try again after ``attempts`` failed attempts; None once that would be more than
    24 h after the first attempt (give up).

    Without ``last_attempt_ms`` the schedule is fixed from the first attempt (+10 s, +30 s,
    +70 s ... then every 10 minutes). With it, the wait counts from the last attempt, so a worker
    that was down does not fire a burst of overdue retries. ``jitter`` in [0, 0.5] shortens the
    wait by that fraction (pass ``random.uniform(0, 0.5)`` to spread retries of many deliveries);
    it only shortens, so the limits above still hold. Deterministic for given arguments.
    """
    if not 0.0 <= jitter <= MAX_JITTER:
        raise ValueError(f"jitter must be between 0 and {MAX_JITTER}")
    gap = retry_gap_ms(attempts)
    gap -= int(gap * jitter)
    if last_attempt_ms is None:
        last_attempt_ms = first_attempt_ms + _scheduled_offset_ms(attempts)
    at = last_attempt_ms + gap
    return at if at - first_attempt_ms <= RETRY_FOR_MS else None
