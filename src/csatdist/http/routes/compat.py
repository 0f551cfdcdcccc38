"""LivePerson compatibility: user login and the domain (service base URI) lookup, so unmodified
LivePerson clients only change their host."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from csatdist.auth import valid_account_id
from csatdist.errors import InvalidParam, InvalidRequest, NotFound, TooManyRequests, Unauthorized
from csatdist.http.deps import RuntimeDep, json_body
from csatdist.http.responses import external_origin, json_response
from csatdist.limits import client_key
from csatdist.observability import RATE_LIMITED
from csatdist.users import MAX_USERNAME_LENGTH, login

LOGIN_PATH = "/api/account/{account_id}/login"
DOMAIN_PATH = "/api/account/{account_id}/service/{service}/baseURI.json"
DOMAINS_PATH = "/api/account/{account_id}/service/baseURI.json"
#: The most a login body may hold: a user name and a password, with room to spare.
LOGIN_BODY_BYTES = 64 * 1024
#: Services clients commonly look up; every one is served by this server.
KNOWN_SERVICES = (
    "leDataReporting",
    "agentVep",
    "msgEwtAPI",
    "accountConfigReadOnly",
    "accountConfigReadWrite",
    "asyncMessagingEnt",
)
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: The longest a client over its login rate waits for its 429.
TARPIT_SECONDS = 2.0

router = APIRouter()


@router.post(LOGIN_PATH, summary="Log in a user; returns a bearer token", response_class=Response)
async def login_route(request: Request, account_id: str, rt: RuntimeDep) -> Response:
    if not valid_account_id(account_id):
        raise Unauthorized("invalid username or password")
    # Each check costs 64 MiB and most of a core (Argon2id): attempts are limited per client
    # address before anything is read, and checks per minute and running at once in all.
    try:
        rt.login_rate.take(client_key(request.client.host if request.client else None))
    except TooManyRequests as refused:
        RATE_LIMITED.labels("login-client").inc()
        # A client past its rate waits for its refusal (a socket, no CPU): one that retries
        # at once, ignoring Retry-After, then makes a few requests a second, not thousands.
        await asyncio.sleep(min(refused.retry_after, TARPIT_SECONDS))
        raise
    document = await json_body(request, rt, LOGIN_BODY_BYTES)
    errors = [
        InvalidParam(name, "is required and must be a string")
        for name in ("username", "password")
        if not isinstance(document, dict) or not isinstance(document.get(name), str)
    ]
    if errors or not isinstance(document, dict):
        raise InvalidRequest(errors)
    if len(document["username"]) > MAX_USERNAME_LENGTH:  # no such user can exist: no hashing
        raise Unauthorized("invalid username or password")
    try:
        rt.password_rate.take("*")
    except TooManyRequests:
        RATE_LIMITED.labels("password-checks").inc()
        raise
    try:
        rt.login_limiter.take(account_id)
    except TooManyRequests as exc:
        RATE_LIMITED.labels("logins").inc()
        raise TooManyRequests(
            "the server is busy checking other passwords; retry shortly", scope="global"
        ) from exc
    try:
        result = await run_in_threadpool(
            login,
            rt.store,
            rt.login_throttle,
            account_id,
            document["username"],
            document["password"],
            rt.clock(),
            rt.settings.session_ttl_minutes * 60_000,
        )
    finally:
        rt.login_limiter.give_back(account_id)
    return json_response({"bearer": result.bearer, "csrf": result.csrf})


def _domain(request: Request, rt: RuntimeDep, account_id: str, service: str) -> dict[str, str]:
    origin = external_origin(request, rt.settings)
    return {"service": service, "account": account_id, "baseURI": origin.split("://", 1)[1]}


@router.get(DOMAIN_PATH, summary="Domain lookup: where a service of this account is served")
async def domain(request: Request, account_id: str, service: str, rt: RuntimeDep) -> Response:
    if not valid_account_id(account_id):
        raise Unauthorized("malformed account id")
    if not _SERVICE_NAME.fullmatch(service):
        raise NotFound(f"no such service: {service[:64]!r}")
    return json_response(_domain(request, rt, account_id, service))


@router.get(DOMAINS_PATH, summary="Domain lookup for every known service")
async def domains(request: Request, account_id: str, rt: RuntimeDep) -> Response:
    if not valid_account_id(account_id):
        raise Unauthorized("malformed account id")
    return json_response(
        {"baseURIs": [_domain(request, rt, account_id, name) for name in KNOWN_SERVICES]}
    )
