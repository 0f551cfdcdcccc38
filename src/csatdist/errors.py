"""Every way a request can fail, each with its HTTP status, in one place.

Errors are rendered as RFC 9457 problem details by the HTTP adapter and as messages by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

#: Problem types are URNs: stable identifiers, listed in docs/api.md ("Errors").
PROBLEM_BASE = "urn:csatdist:problem:"


@dataclass(frozen=True, slots=True)
class InvalidParam:
    name: str
    reason: str


class CsatError(Exception):
    """Base class: a failure with a status code, a stable type slug and a precise detail."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}

    def problem(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class InvalidRequest(CsatError):
    """400: one or more parameters (or the body) break a rule; each is named with its reason."""

    status = 400
    slug = "invalid-request"
    title = "Invalid request"

    def __init__(self, params: list[InvalidParam], detail: str | None = None) -> None:
        self.invalid_params = params
        super().__init__(detail or "; ".join(f"{p.name}: {p.reason}" for p in params))

    @classmethod
    def one(cls, name: str, reason: str) -> InvalidRequest:
        return cls([InvalidParam(name, reason)])

    def problem(self) -> dict[str, Any]:
        body = super().problem()
        body["invalid_params"] = [{"name": p.name, "reason": p.reason} for p in self.invalid_params]
        return body


class Unauthorized(CsatError):
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, oauth_problem: str | None = None) -> None:
        super().__init__(detail)
        self.oauth_problem = oauth_problem

    def headers(self) -> dict[str, str]:
        if self.oauth_problem:
            return {
                "WWW-Authenticate": f'OAuth realm="csatdist", oauth_problem="{self.oauth_problem}"'
            }
        return {"WWW-Authenticate": 'Bearer realm="csatdist"'}

    def problem(self) -> dict[str, Any]:
        body = super().problem()
        if self.oauth_problem:
            body["oauth_problem"] = self.oauth_problem
        return body


class NotFound(CsatError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(CsatError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, detail: str, allow: str = "") -> None:
        super().__init__(detail)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class RequestTimeout(CsatError):
    status = 408
    slug = "request-timeout"
    title = "Request timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class PayloadTooLarge(CsatError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(CsatError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """A concurrency limit as announced in ``RateLimit-Policy``."""

    name: str
    limit: int


class TooManyRequests(CsatError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"

    def __init__(
        self, detail: str, policies: list[LimitPolicy] | None = None, scope: str = "account"
    ) -> None:
        super().__init__(detail)
        self.policies = list(policies or [])
        self.scope = scope
        self.retry_after = 1

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": str(self.retry_after)}
        if self.policies:
            # draft-ietf-httpapi-ratelimit-headers: a quota of concurrent requests, no window.
            headers["RateLimit-Policy"] = ", ".join(
                f'"{p.name}";q={p.limit};qu="concurrent-requests"' for p in self.policies
            )
        return headers


class StoreUnavailable(CsatError):
    status = 503
    slug = "store-unavailable"
    title = "Store unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}
