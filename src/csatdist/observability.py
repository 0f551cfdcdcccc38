"""Prometheus metrics, structured logs and the request id, for every adapter."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

# Set (by `csatdist serve --workers N`) before a worker imports this module: each worker keeps
# its series in files there, and /metrics sums them, whichever worker answers the scrape.
MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "csatdist_http_requests_total",
    "HTTP requests by route and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "csatdist_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ANSWERS = Counter(
    "csatdist_answers_total",
    "Ingested answers by outcome: accepted, updated (a correction), duplicate, rejected.",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "csatdist_rate_limited_total", "Queries refused with 429, by limit.", ["limit"]
)
LIMITER_FALLBACKS = Counter(
    "csatdist_limiter_fallbacks_total",
    "Queries admitted or refused without Redis, by fallback policy.",
    ["policy"],
)
IN_FLIGHT = Gauge(
    "csatdist_queries_in_flight",
    "Distribution queries being served now.",
    multiprocess_mode="livesum",
)
OPEN_STREAMS = Gauge(
    "csatdist_open_streams", "Push (SSE) streams open on this server.", multiprocess_mode="livesum"
)
STREAM_EVENTS = Counter(
    "csatdist_stream_events_total", "Push (SSE) events sent, by event.", ["event"]
)

# `csatdist consume`
STREAM_MESSAGES = Counter(
    "csatdist_stream_messages_total",
    "Stream messages handled: acked (counted and acknowledged) or redelivery_requested.",
    ["outcome"],
)
STREAM_DEAD_LETTERS = Counter(
    "csatdist_stream_dead_letters_total",
    "Dead letters published, by cause: invalid (one answer), unreadable (a whole message), "
    "failed (kept failing), max_deliveries (never acknowledged).",
    ["cause"],
)
STREAM_STORE_RETRIES = Counter(
    "csatdist_stream_store_retries_total",
    "Commits retried because the store was unavailable (consumption paused meanwhile).",
)
STREAM_PENDING = Gauge(
    "csatdist_stream_pending_messages",
    "Consumer lag: messages in the stream not yet delivered to the consumer.",
)
STREAM_ACK_PENDING = Gauge(
    "csatdist_stream_ack_pending_messages",
    "Messages delivered to a consumer and not yet acknowledged.",
)
STREAM_BATCH_SECONDS = Histogram(
    "csatdist_stream_batch_duration_seconds",
    "Time to count, dead-letter and acknowledge one fetched batch.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def metrics_exposition() -> bytes:
    """The Prometheus text of this server: its process's series, or with several workers the
    csatdist series summed over all of them (the process_* and python_* series of one worker
    would describe only the worker that happened to answer, so there are none then)."""
    directory = os.environ.get(MULTIPROCESS_DIRECTORY)
    if not directory:
        return generate_latest()
    _forget_dead_workers(Path(directory))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _forget_dead_workers(directory: Path) -> None:
    """A worker killed -9 could not take its live gauges (queries in flight, open streams) out
    of the sum; its counters stay, so that totals never go back when a worker is replaced."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, another user's: not one of ours, leave it
            pass


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

log = logging.getLogger("csatdist")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = getattr(record, "fields", None)
        tail = " ".join(f"{k}={v}" for k, v in extra.items()) if isinstance(extra, dict) else ""
        line = f"{record.levelname.lower():7} [{request_id.get()}] {record.getMessage()} {tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
