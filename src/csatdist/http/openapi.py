"""The OpenAPI document: FastAPI's description of the routes, completed with what the routes
really send (they build their replies by hand): body schemas, every status with its problem
document, and one operation id per method. Schemathesis checks the app against it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM = "application/problem+json"

METRICS: dict[str, Any] = {
    "type": "object",
    "required": [
        "csat_score1_answers",
        "csat_score2_answers",
        "csat_score3_answers",
        "csat_score4_answers",
        "csat_score5_answers",
        "total_answers",
        "positive_answers",
        "csat_score",
    ],
    "properties": {
        **{f"csat_score{n}_answers": {"type": "integer", "minimum": 0} for n in range(1, 6)},
        "total_answers": {"type": "integer", "minimum": 0},
        "positive_answers": {"type": "integer", "minimum": 0},
        "csat_score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}

_PER_AGENT = {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Metrics"}}
_METRICS_REF = {"$ref": "#/components/schemas/Metrics"}

DISTRIBUTION: dict[str, Any] = {
    "type": "object",
    "description": "metricsTotals alone, or per skill and/or per agent (CONTRACT.md shapes); "
    "with interval, also metricsByIntervals.",
    "properties": {
        "metricsTotals": _METRICS_REF,
        "skillsMetricsPerAgent": {
            "type": "object",
            "required": ["metricsPerSkill", "metricsTotals"],
            "properties": {
                "metricsPerSkill": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["metricsPerAgent", "metricsTotals"],
                        "properties": {
                            "metricsPerAgent": _PER_AGENT,
                            "metricsTotals": _METRICS_REF,
                        },
                    },
                },
                "metricsTotals": _METRICS_REF,
            },
        },
        "agentsMetrics": {
            "type": "object",
            "required": ["metricsPerAgent", "metricsTotals"],
            "properties": {"metricsPerAgent": _PER_AGENT, "metricsTotals": _METRICS_REF},
        },
        "metricsByIntervals": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["timestamp", "metricsData"],
                "properties": {
                    "timestamp": {"type": "integer"},
                    "metricsData": {"$ref": "#/components/schemas/Distribution"},
                },
            },
        },
    },
    "additionalProperties": False,
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "invalid_params": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "reason"],
                "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
        "oauth_problem": {"type": "string"},
    },
}

INGEST_REPORT: dict[str, Any] = {
    "type": "object",
    "required": ["accepted", "updated", "duplicates", "rejected"],
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "updated": {"type": "integer", "minimum": 0},
        "duplicates": {"type": "integer", "minimum": 0},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "id", "reason"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "id": {"type": ["string", "null"]},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}

_TIME = {"oneOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]}
_TEXT = {"type": ["string", "null"]}

ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["id", "time", "score"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 128},
        "time": _TIME,
        "skillId": {"type": ["integer", "null"]},
        "agentId": {"type": ["integer", "null"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "conversationId": {"type": ["string", "null"], "maxLength": 128},
        "comment": {"type": ["string", "null"], "maxLength": 2000},
        "channel": {"type": ["string", "null"], "maxLength": 64},
        "updatedAt": {"oneOf": [*_TIME["oneOf"], {"type": "null"}]},
        "skillName": {"type": ["string", "null"], "maxLength": 200},
        "agentName": {"type": ["string", "null"], "maxLength": 200},
    },
}

ANSWER_RECORD: dict[str, Any] = {
    "type": "object",
    "required": ["id", "time", "skillId", "agentId", "score", "updatedAt"],
    "properties": {
        "id": {"type": "string"},
        "time": {"type": "integer"},
        "skillId": {"type": "integer"},
        "agentId": {"type": "integer"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "conversationId": _TEXT,
        "comment": _TEXT,
        "channel": _TEXT,
        "updatedAt": {"type": "integer"},
        "skillName": _TEXT,
        "agentName": _TEXT,
    },
}

ANSWER_PAGE: dict[str, Any] = {
    "type": "object",
    "required": ["answers", "next"],
    "properties": {
        "answers": {"type": "array", "items": ANSWER_RECORD},
        "next": {"type": ["string", "null"]},
    },
}

ERASURE_REPORT: dict[str, Any] = {
    "type": "object",
    "required": ["erased", "unknown"],
    "properties": {
        "erased": {"type": "integer", "minimum": 0},
        "unknown": {"type": "array", "items": {"type": "string"}},
    },
}

DOMAIN: dict[str, Any] = {
    "type": "object",
    "required": ["service", "account", "baseURI"],
    "properties": {
        "service": {"type": "string"},
        "account": {"type": "string"},
        "baseURI": {"type": "string"},
    },
}

SCHEMAS = {
    "Metrics": METRICS,
    "Distribution": DISTRIBUTION,
    "Problem": PROBLEM_SCHEMA,
    "IngestReport": INGEST_REPORT,
    "Answer": ANSWER,
    "AnswerPage": ANSWER_PAGE,
    "Domain": DOMAIN,
}

_REASONS = {
    "304": "Not modified: the body has the ETag given in If-None-Match.",
    "400": "A parameter or the body breaks a rule; each is named in invalid_params.",
    "401": "Missing, malformed, unknown, revoked or expired credentials, or the wrong scope.",
    "404": "No such resource.",
    "413": "The body or the number of answers is over the limit.",
    "415": "Unsupported Content-Type.",
    "429": "Over a concurrency limit; retry after Retry-After seconds.",
    "503": "The store (or the limiter, with redis_fallback=reject) is unavailable; retry.",
}


def _json(schema: dict[str, Any], description: str, media: str = "application/json") -> Any:
    return {"description": description, "content": {media: {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    problem = {"$ref": "#/components/schemas/Problem"}
    return {code: _json(problem, _REASONS[code], PROBLEM) for code in codes}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_WINDOW_HEADERS = {
    "X-CSAT-Window-Start": {"schema": {"type": "integer"}, "description": "Window start, ms."},
    "X-CSAT-Window-End": {"schema": {"type": "integer"}, "description": "Window end, ms."},
    "ETag": {"schema": {"type": "string"}, "description": "Strong tag of the exact body."},
}


def _responses(path: str, method: str) -> dict[str, Any] | None:
    """What each operation answers, by path and method."""
    if path.endswith("/msgcsatdistribution"):
        ok = _json(_ref("Distribution"), "The distribution.")
        ok["headers"] = _WINDOW_HEADERS
        codes = ["400", "401", "404", "429", "503"] + (["413"] if method == "post" else [])
        extra = {"304": {"description": _REASONS["304"], "headers": _WINDOW_HEADERS}}
        return {"200": ok, **(extra if method == "get" else {}), **_errors(*codes)}
    if path.endswith("/csat/stream"):
        events = {"type": "string", "description": "Server-Sent Events; see docs/api.md."}
        ok = _json(events, "An event stream of the distribution.", "text/event-stream")
        return {"200": ok, **_errors("400", "401", "404", "429", "503")}
    if path.endswith("/csat/answers") and method == "get":
        page = _json(_ref("AnswerPage"), "A page of answer records, newest first.")
        page["content"]["text/csv"] = {"schema": {"type": "string"}}
        page["content"]["application/x-ndjson"] = {"schema": {"type": "string"}}
        return {"200": page, **_errors("400", "401", "404", "429", "503")}
    if path.endswith("/csat/answers"):
        report = _json(_ref("IngestReport"), "What was counted, corrected, duplicated, rejected.")
        return {"200": report, **_errors("400", "401", "404", "413", "415", "429", "503")}
    if path.endswith("/csat/report"):
        body = _json({"type": "object"}, "The report: totals, series, per skill/agent.")
        body["content"]["text/csv"] = {"schema": {"type": "string"}}
        return {"200": body, **_errors("400", "401", "404", "429", "503")}
    if path.endswith("/csat/erasures"):
        erased = _json(ERASURE_REPORT, "How many were erased, and the ids never recorded.")
        return {"200": erased, **_errors("400", "401", "404", "413", "429", "503")}
    if path.endswith("/directory"):
        names = _json({"type": "object"}, "Names by skill and agent id (see docs/alerts.md).")
        codes = ["400", "401", "404", "429", "503"] + (["413", "415"] if method == "put" else [])
        return {"200": names, **_errors(*codes)}
    if "/csat/alerts" in path:
        return _alert_responses(path, method)
    if path.endswith("/login"):
        reply = {
            "type": "object",
            "required": ["bearer", "csrf"],
            "properties": {"bearer": {"type": "string"}, "csrf": {"type": "string"}},
        }
        return {
            "200": _json(reply, "A read-only bearer token."),
            **_errors("400", "401", "404", "413", "429", "503"),
        }
    if path.endswith("/service/baseURI.json"):
        many = {"type": "object", "properties": {"baseURIs": {"type": "array", "items": DOMAIN}}}
        return {"200": _json(many, "Every known service."), **_errors("401", "404")}
    if path.endswith("/baseURI.json"):
        return {"200": _json(_ref("Domain"), "The service's host."), **_errors("401", "404")}
    if path == "/healthz":
        return {"200": _json({"type": "object"}, "The process is up.")}
    if path == "/readyz":
        unavailable = _errors("503")["503"]
        unavailable["description"] = (
            "Warming up the counters (application/json: status, loaded, of), or the store is "
            "unavailable (a problem document)."
        )
        unavailable["content"]["application/json"] = {"schema": {"type": "object"}}
        return {
            "200": _json({"type": "object"}, "The store answers; the counters are warm."),
            "503": unavailable,
        }
    return None


def _alert_responses(path: str, method: str) -> dict[str, Any]:
    rule = _json({"type": "object"}, "The rule and its state.")
    common = ["401", "404", "429", "503"]
    if path.endswith("/deliveries"):
        return {"200": _json({"type": "object"}, "Recent deliveries."), **_errors(*common)}
    if path.endswith("/test"):
        outcome = _json({"type": "object"}, "The test delivery's outcome.")
        return {"200": outcome, **_errors(*common)}
    if method == "put":
        replaced = _json({"type": "object"}, "The rule replaced; its state.")
        return {"201": rule, "200": replaced, **_errors("400", "413", "415", *common)}
    if method == "delete":
        return {"204": {"description": "Deleted."}, **_errors(*common)}
    if path.endswith("/alerts"):
        return {"200": _json({"type": "object"}, "The account's rules."), **_errors(*common)}
    return {"200": rule, **_errors(*common)}


_BODIES: dict[str, Any] = {
    "/api/account/{account_id}/csat/answers": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["answers"],
                    "properties": {"answers": {"type": "array", "items": _ref("Answer")}},
                }
            },
            "application/x-ndjson": {
                "schema": {
                    "type": "array",
                    "items": _ref("Answer"),
                    "description": "Sent as one answer (JSON) per line.",
                }
            },
        },
    },
    "/api/account/{account_id}/csat/erasures": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["ids"],
                    "properties": {
                        "ids": {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1, "maxLength": 128},
                        }
                    },
                }
            }
        },
    },
    "/api/account/{account_id}/login": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                }
            }
        },
    },
}


_QUERY_PARAMETERS = (
    ("v", "API version; must be 1."),
    ("timeframe", "Minutes, 1..1440."),
    ("skillIds", "'all' or comma-separated skill ids."),
    ("agentIds", "'all' or comma-separated agent ids."),
    ("interval", "Minutes per interval: a multiple of 5 dividing timeframe."),
)


def query_parameters(*, with_version: bool) -> list[dict[str, Any]]:
    """The distribution's query parameters as OpenAPI parameter objects (strings: parse_query
    gives the precise error for each)."""
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": description,
        }
        for name, description in _QUERY_PARAMETERS
        if with_version or name != "v"
    ]


_LISTING_PARAMETERS = (
    ("timeframe", "Minutes, 1..1440: the distribution's window (or from and to)."),
    ("from", "RFC 3339 or epoch ms: the start of [from, to), within retention."),
    ("to", "RFC 3339 or epoch ms: the end of [from, to)."),
    ("skillIds", "'all' or comma-separated skill ids."),
    ("agentIds", "'all' or comma-separated agent ids."),
    ("scores", "Comma-separated scores 1..5; default all."),
    ("limit", "Records per page, 1..1000 (default 100; JSON only)."),
    ("cursor", "The previous page's next."),
)


def listing_parameters() -> list[dict[str, Any]]:
    """The answer listing's query parameters (strings: parse_listing gives the precise error)."""
    return [
        {
            "name": n,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": d,
        }
        for n, d in _LISTING_PARAMETERS
    ]


_REPORT_PARAMETERS = (
    ("from", "Start: RFC 3339, epoch ms, or YYYY-MM-DD (midnight in tz). Required."),
    ("to", "End (exclusive), in the same forms. Required."),
    ("tz", "IANA time zone of the calendar periods; default UTC."),
    ("granularity", "hour, day, week (ISO, Monday), month or total; default day."),
    ("skillIds", "'all' or comma-separated skill ids: per-skill series."),
    ("agentIds", "'all' or comma-separated agent ids: per-agent series."),
    ("compare", "previous: the totals of the equal-length range just before from."),
)


def report_parameters() -> list[dict[str, Any]]:
    """The report's query parameters (strings: parse_report_query gives the precise error)."""
    return [
        {
            "name": n,
            "in": "query",
            "required": n in ("from", "to"),
            "schema": {"type": "string"},
            "description": d,
        }
        for n, d in _REPORT_PARAMETERS
    ]


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        spec.setdefault("components", {})["schemas"] = SCHEMAS
        spec["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "oauth1": {"type": "apiKey", "in": "header", "name": "Authorization"},
        }
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                responses = _responses(path, method)
                if responses is not None:
                    operation["responses"] = responses
                if method == "post" and path in _BODIES:
                    operation["requestBody"] = _BODIES[path]
                if "/account/" in path and "baseURI" not in path and "login" not in path:
                    operation["security"] = [{"bearer": []}, {"oauth1": []}]
        app.openapi_schema = spec
        return spec

    app.openapi = build  # type: ignore[method-assign]
