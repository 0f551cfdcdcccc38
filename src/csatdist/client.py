"""Python client for csatdist (and LivePerson's Messaging CSAT Distribution API).

Sync (:class:`Client`) and async (:class:`AsyncClient`), with the same methods::

    from csatdist.client import Client

    with Client("http://127.0.0.1:8080", "56072331", token="csd_...") as csat:
        dist = csat.distribution(60, skills="all")
        print(dist.totals.csat_score, dist.skills[4].agents[17].total)
        csat.ingest([{"id": "c-1", "time": "2026-11-27T13:21:00Z", "score": 5}])

Credentials: a bearer key (``token=``), a login (:meth:`Client.login`) or OAuth 1.0a app keys
(``auth=OAuth1Auth(...)``). Requests that meet 429 or 503 (or a dropped connection) are retried
with exponential backoff, waiting at least what ``Retry-After`` asks; every request has a
timeout. Both calls are safe to retry: queries read, and ingest is idempotent by answer id.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from oauthlib.oauth1 import Client as OAuthSigner

from csatdist.slicedjson import ndjson

QUERY_PATH = "/operations/api/account/{account}/msgcsatdistribution"
INGEST_PATH = "/api/account/{account}/csat/answers"
LOGIN_PATH = "/api/account/{account}/login"
RETRY_STATUSES = frozenset({429, 502, 503, 504})

IdsArg = Literal["all"] | Iterable[int] | None


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metrics:
    """Counts of answers 1..5 (``scores[0]`` is score 1), totals, and the score as a ratio."""

    scores: tuple[int, int, int, int, int]
    total: int
    positive: int
    csat_score: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Metrics:
        scores = tuple(int(data[f"csat_score{n}_answers"]) for n in range(1, 6))
        return cls(
            scores,  # type: ignore[arg-type]
            int(data["total_answers"]),
            int(data["positive_answers"]),
            float(data["csat_score"]),
        )

    @property
    def percent(self) -> float:
        """The score as dashboards show it: 0..100."""
        return self.csat_score * 100


@dataclass(frozen=True, slots=True)
class Window:
    """The whole 5-minute buckets counted: start inclusive, end exclusive, epoch ms."""

    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Skill:
    totals: Metrics
    agents: dict[int, Metrics]


@dataclass(frozen=True, slots=True)
class Interval:
    end_ms: int
    distribution: Distribution


@dataclass(frozen=True, slots=True)
class Distribution:
    """One query's answer. ``skills``/``agents`` are None when not asked for; ``-1`` is
    unassigned. ``raw`` is the body exactly as received."""

    totals: Metrics
    skills: dict[int, Skill] | None
    agents: dict[int, Metrics] | None
    intervals: list[Interval]
    window: Window | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], window: Window | None = None) -> Distribution:
        skills = agents = None
        totals_json = body.get("metricsTotals")
        if "skillsMetricsPerAgent" in body:
            section = body["skillsMetricsPerAgent"]
            totals_json = section["metricsTotals"]
            skills = {
                int(skill): Skill(
                    Metrics.from_json(entry["metricsTotals"]),
                    _per_agent(entry["metricsPerAgent"]),
                )
                for skill, entry in section["metricsPerSkill"].items()
            }
        if "agentsMetrics" in body:
            section = body["agentsMetrics"]
            totals_json = totals_json or section["metricsTotals"]
            agents = _per_agent(section["metricsPerAgent"])
        intervals = [
            Interval(int(entry["timestamp"]), Distribution.from_body(entry["metricsData"]))
            for entry in body.get("metricsByIntervals", [])
        ]
        if totals_json is None:
            raise ValueError("the body has no metricsTotals")
        return cls(Metrics.from_json(totals_json), skills, agents, intervals, window, dict(body))


def _per_agent(entries: Mapping[str, Any]) -> dict[int, Metrics]:
    return {int(agent): Metrics.from_json(metrics) for agent, metrics in entries.items()}


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int  # position in the answers given to ingest(), across batches
    id: str | None
    reason: str


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    #: Corrections: answers that replaced an earlier version of their id (a later updatedAt).
    updated: int = 0


# --- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """A reply the client cannot use; ``problem`` is the problem+json body when there is one."""

    def __init__(self, status: int, problem: Mapping[str, Any] | None, text: str) -> None:
        self.status = status
        self.problem = dict(problem or {})
        self.detail = str(self.problem.get("detail") or text[:300])
        super().__init__(f"HTTP {status}: {self.detail}")


class Unauthorized(ApiError):
    pass


class BadRequest(ApiError):
    pass


class RateLimited(ApiError):
    """429 after every retry was used."""


class Unavailable(ApiError):
    """5xx after every retry was used."""


def _error_for(response: httpx.Response) -> ApiError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = None
    kind: type[ApiError] = {401: Unauthorized, 400: BadRequest, 429: RateLimited}.get(
        response.status_code, Unavailable if response.status_code >= 500 else ApiError
    )
    return kind(response.status_code, problem, response.text)


# --- credentials -----------------------------------------------------------------------------


class BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


class OAuth1Auth(httpx.Auth):
    """OAuth 1.0a (HMAC-SHA1) as LivePerson app keys sign: 3-legged with a token, else 2-legged.
    Each attempt, retries included, is signed afresh (new nonce and timestamp)."""

    def __init__(
        self,
        consumer_key: str,
        consumer_secret: str,
        token: str | None = None,
        token_secret: str | None = None,
    ) -> None:
        self._signer = OAuthSigner(
            consumer_key,
            client_secret=consumer_secret,
            resource_owner_key=token,
            resource_owner_secret=token_secret,
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # The body is JSON or NDJSON, never form-encoded, so it is not part of the signature.
        method: Any = request.method
        _, headers, _ = self._signer.sign(str(request.url), method)
        request.headers["Authorization"] = headers["Authorization"]
        yield request


# --- retries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` in all; waits ``base * 2**n`` (with jitter), never less than Retry-After,
    never more than ``max_delay`` seconds."""

    attempts: int = 5
    base: float = 0.2
    max_delay: float = 10.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        backoff = self.base * 2.0 ** (attempt - 1)
        backoff = backoff / 2 + random.uniform(0, backoff / 2)  # noqa: S311 - jitter, not crypto
        asked = _retry_after(response) if response is not None else None
        return min(max(backoff, asked or 0.0), self.max_delay)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


RetryHook = Callable[[int, float, str], None]


def _should_retry(outcome: httpx.Response | Exception) -> str | None:
    """Why this outcome is worth another attempt, or None."""
    if isinstance(outcome, httpx.TransportError):
        return type(outcome).__name__
    if isinstance(outcome, httpx.Response) and outcome.status_code in RETRY_STATUSES:
        return f"HTTP {outcome.status_code}"
    return None


class _Attempts:
    """One call's retry bookkeeping, the same for the blocking and the asyncio client."""

    def __init__(self, policy: RetryPolicy, hook: RetryHook | None) -> None:
        self.policy = policy
        self.hook = hook
        self.attempt = 0

    def delay_after(self, outcome: httpx.Response | Exception) -> float | None:
        """How long to wait before the next attempt, or None when this outcome is final."""
        self.attempt += 1
        reason = _should_retry(outcome)
        if reason is None or self.attempt >= self.policy.attempts:
            return None
        response = outcome if isinstance(outcome, httpx.Response) else None
        delay = self.policy.delay(self.attempt, response)
        if self.hook is not None:
            self.hook(self.attempt, delay, reason)
        return delay


def _raise_final(outcome: httpx.Response | Exception) -> httpx.Response:
    if isinstance(outcome, Exception):
        raise outcome
    if outcome.status_code >= 400:
        raise _error_for(outcome)
    return outcome


# --- requests and replies, shared by both clients ---------------------------------------------


def _ids(value: IdsArg) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value != "all":
            raise ValueError("ids must be 'all' or integers")
        return "all"
    return ",".join(str(int(i)) for i in value)


def _query_params(
    timeframe: int, skills: IdsArg, agents: IdsArg, interval: int | None
) -> dict[str, str]:
    params = {"v": "1", "timeframe": str(int(timeframe))}
    for name, value in (("skillIds", _ids(skills)), ("agentIds", _ids(agents))):
        if value:
            params[name] = value
    if interval is not None:
        params["interval"] = str(int(interval))
    return params


def _distribution(response: httpx.Response) -> Distribution:
    window = None
    start, end = (
        response.headers.get("x-csat-window-start"),
        response.headers.get("x-csat-window-end"),
    )
    if start and end:
        window = Window(int(start), int(end))
    return Distribution.from_body(response.json(), window)


def _batches(answers: Iterable[Mapping[str, Any]], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for answer in answers:
        batch.append(dict(answer))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _merge(result: IngestResult, reply: Mapping[str, Any], offset: int) -> None:
    result.accepted += int(reply["accepted"])
    result.updated += int(reply.get("updated", 0))
    result.duplicates += int(reply["duplicates"])
    result.rejected += [
        Rejected(offset + int(r["index"]), r.get("id"), str(r["reason"])) for r in reply["rejected"]
    ]


def _login_token(response: httpx.Response) -> str:
    if response.status_code != 200:
        raise _error_for(response)
    token: str = response.json()["bearer"]
    return token


def _http_options(
    base_url: str, token: str | None, auth: httpx.Auth | None, timeout: float
) -> dict[str, Any]:
    """What both clients give their httpx client."""
    if token and auth:
        raise ValueError("give either token= or auth=, not both")
    return {
        "base_url": base_url.rstrip("/"),
        "auth": BearerAuth(token) if token else auth,
        "timeout": timeout,
        "headers": {"User-Agent": "csatdist-client"},
    }


def _login_request(base_url: str, account: str, username: str, password: str) -> dict[str, Any]:
    return {
        "url": base_url.rstrip("/") + LOGIN_PATH.format(account=account),
        "params": {"v": "1.3"},
        "json": {"username": username, "password": password},
    }


# --- the clients -----------------------------------------------------------------------------


class Client:
    """Blocking client; use it as a context manager or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        account: str,
        *,
        token: str | None = None,
        auth: httpx.Auth | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        on_retry: RetryHook | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.account = account
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._http = httpx.Client(
            transport=transport, **_http_options(base_url, token, auth, timeout)
        )

    @classmethod
    def login(
        cls, base_url: str, account: str, username: str, password: str, **options: Any
    ) -> Client:
        """Log in with a username and password; the client then uses the (read-only) bearer."""
        with httpx.Client(timeout=options.get("timeout", 10.0)) as http:
            response = http.post(**_login_request(base_url, account, username, password))
        return cls(base_url, account, token=_login_token(response), **options)

    def distribution(
        self,
        timeframe: int,
        *,
        skills: IdsArg = None,
        agents: IdsArg = None,
        interval: int | None = None,
    ) -> Distribution:
        """The distribution over the last ``timeframe`` minutes (skills/agents: "all" or ids)."""
        params = _query_params(timeframe, skills, agents, interval)
        path = QUERY_PATH.format(account=self.account)
        return _distribution(self._send("GET", path, params=params))

    def ingest(
        self, answers: Iterable[Mapping[str, Any]], *, batch_size: int = 5000
    ) -> IngestResult:
        """Send answers in NDJSON batches; rejections carry their index in ``answers``."""
        result, offset = IngestResult(), 0
        for batch in _batches(answers, batch_size):
            response = self._send("POST", INGEST_PATH.format(account=self.account), batch=batch)
            _merge(result, response.json(), offset)
            offset += len(batch)
        return result

    def _send(
        self, method: str, path: str, *, params: Any = None, batch: list[Any] | None = None
    ) -> httpx.Response:
        content, headers = _ndjson(batch)
        attempts = _Attempts(self.retry, self.on_retry)
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = self._http.request(
                    method, path, params=params, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                outcome = exc
            delay = attempts.delay_after(outcome)
            if delay is None:
                return _raise_final(outcome)
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same API for asyncio: ``async with AsyncClient(...) as csat: await csat...``."""

    def __init__(
        self,
        base_url: str,
        account: str,
        *,
        token: str | None = None,
        auth: httpx.Auth | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        on_retry: RetryHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.account = account
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._http = httpx.AsyncClient(
            transport=transport, **_http_options(base_url, token, auth, timeout)
        )

    @classmethod
    async def login(
        cls, base_url: str, account: str, username: str, password: str, **options: Any
    ) -> AsyncClient:
        async with httpx.AsyncClient(timeout=options.get("timeout", 10.0)) as http:
            response = await http.post(**_login_request(base_url, account, username, password))
        return cls(base_url, account, token=_login_token(response), **options)

    async def distribution(
        self,
        timeframe: int,
        *,
        skills: IdsArg = None,
        agents: IdsArg = None,
        interval: int | None = None,
    ) -> Distribution:
        params = _query_params(timeframe, skills, agents, interval)
        path = QUERY_PATH.format(account=self.account)
        return _distribution(await self._send("GET", path, params=params))

    async def ingest(
        self, answers: Iterable[Mapping[str, Any]], *, batch_size: int = 5000
    ) -> IngestResult:
        result, offset = IngestResult(), 0
        for batch in _batches(answers, batch_size):
            path = INGEST_PATH.format(account=self.account)
            response = await self._send("POST", path, batch=batch)
            _merge(result, response.json(), offset)
            offset += len(batch)
        return result

    async def _send(
        self, method: str, path: str, *, params: Any = None, batch: list[Any] | None = None
    ) -> httpx.Response:
        content, headers = _ndjson(batch)
        attempts = _Attempts(self.retry, self.on_retry)
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = await self._http.request(
                    method, path, params=params, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                outcome = exc
            delay = attempts.delay_after(outcome)
            if delay is None:
                return _raise_final(outcome)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _ndjson(batch: list[Any] | None) -> tuple[bytes | None, dict[str, str]]:
    if batch is None:
        return None, {}
    return ndjson(batch), {"Content-Type": "application/x-ndjson"}


__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "BearerAuth",
    "Client",
    "Distribution",
    "IngestResult",
    "Interval",
    "Metrics",
    "OAuth1Auth",
    "RateLimited",
    "Rejected",
    "RetryPolicy",
    "Skill",
    "Unauthorized",
    "Unavailable",
    "Window",
]
