"""NATS JetStream adapter: the `consume` loop and the `publish` helper.

Delivery is at least once; counting is exactly once because every batch goes through
:func:`csatdist.service.ingest_answers`, whose write is idempotent by answer id, and a message is
acknowledged only after that write has committed (and after its dead letters, if any, are stored).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from csatdist.clock import Clock, system_clock_ms
from csatdist.errors import StoreUnavailable
from csatdist.events import (
    MSG_ID_HEADER,
    BatchPlan,
    DeadLetter,
    Event,
    account_subject,
    message_id,
    plan_batch,
)
from csatdist.observability import (
    ANSWERS,
    STREAM_ACK_PENDING,
    STREAM_BATCH_SECONDS,
    STREAM_DEAD_LETTERS,
    STREAM_MESSAGES,
    STREAM_PENDING,
    STREAM_STORE_RETRIES,
)
from csatdist.service import IngestReport, ingest_answers
from csatdist.settings import Settings
from csatdist.slicedjson import ndjson
from csatdist.store import Store
from csatdist.threads import wait_event

log = logging.getLogger("csatdist.stream")

STREAM_MAX_AGE_SECONDS = 7 * 24 * 3600
DUPLICATE_WINDOW_SECONDS = 3600
MAX_BACKOFF_SECONDS = 5.0
LAG_REFRESH_SECONDS = 2.0
#: How long `csatdist streams create` tries to reach NATS.
CREATE_CONNECT_SECONDS = 5.0


class TopologyMissing(Exception):
    pass


class StreamUnavailable(Exception):
    pass


def backoff(attempt: int) -> float:
    """0.1 s doubling per attempt, at most 5 s."""
    return min(0.1 * 2.0 ** max(attempt - 1, 0), MAX_BACKOFF_SECONDS)


@dataclass(frozen=True, slots=True)
class Topology:
    """Stream, subjects and consumer names, from settings."""

    nats_url: str
    stream: str
    subject_prefix: str
    dead_letter_stream: str
    dead_letter_prefix: str
    consumer: str
    max_deliver: int
    ack_wait_seconds: float
    max_ack_pending: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            nats_url=settings.nats_url,
            stream=settings.stream_name,
            subject_prefix=settings.stream_subject_prefix,
            dead_letter_stream=settings.dead_letter_stream,
            dead_letter_prefix=settings.dead_letter_prefix,
            consumer=settings.consumer_name,
            max_deliver=settings.consume_max_deliver,
            ack_wait_seconds=settings.consume_ack_wait_seconds,
            max_ack_pending=max(settings.consume_batch * 20, 1000),
        )

    @property
    def answers_filter(self) -> str:
        return f"{self.subject_prefix}.*"

    @property
    def dead_letter_filter(self) -> str:
        return f"{self.dead_letter_prefix}.*"

    @property
    def max_deliveries_advisory(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.consumer}"

    def servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]


async def connect(topology: Topology, *, name: str, wait: bool) -> NatsClient:
    """Connect, reconnecting for ever after; ``wait`` retries the first connection too."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await nats.connect(
                topology.servers(),
                name=name,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=_on_error,
                disconnected_cb=_on_disconnected,
                reconnected_cb=_on_reconnected,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if not wait:
                raise StreamUnavailable(
                    f"cannot reach NATS at {topology.nats_url}: {exc or type(exc).__name__}"
                ) from None
            log.warning(
                "cannot reach NATS; retrying",
                extra={"fields": {"nats_url": topology.nats_url, "error": repr(exc)}},
            )
            await asyncio.sleep(backoff(attempt))


async def _on_error(exc: Exception) -> None:
    log.debug("nats client error", extra={"fields": {"error": repr(exc)}})


async def _on_disconnected() -> None:
    log.info("disconnected from NATS")


async def _on_reconnected() -> None:
    log.info("reconnected to NATS")


async def ensure_topology(js: JetStreamContext, topology: Topology, *, create: bool) -> list[str]:
    """Check (or create) both streams and the durable consumer; returns what was created."""
    created = await ensure_streams(js, topology, create=create)
    return created + await ensure_consumer(js, topology, create=create)


async def create_topology(topology: Topology) -> tuple[list[str], list[str]]:
    """``csatdist streams create``: create whichever of the two streams and the durable consumer
    are missing; returns what was created and what existed already."""
    try:
        # connect() retries an unreachable server for ever (the client's reconnect setting
        # applies to the first connection too): a one-shot command gives up instead.
        nc = await asyncio.wait_for(
            connect(topology, name="csatdist-streams", wait=False), CREATE_CONNECT_SECONDS
        )
    except TimeoutError:
        raise StreamUnavailable(
            f"cannot reach NATS at {topology.nats_url}: no connection within "
            f"{CREATE_CONNECT_SECONDS:g} s; check that the server runs there with JetStream"
        ) from None
    try:
        created = await ensure_topology(nc.jetstream(), topology, create=True)
    finally:
        await nc.close()
    # The names ensure_streams and ensure_consumer report what they create by.
    every = [
        f"stream {topology.stream} ({topology.answers_filter})",
        f"stream {topology.dead_letter_stream} ({topology.dead_letter_filter})",
        f"consumer {topology.consumer}",
    ]
    return created, [what for what in every if what not in created]


async def ensure_streams(js: JetStreamContext, topology: Topology, *, create: bool) -> list[str]:
    created: list[str] = []
    for stream, subject in (
        (topology.stream, topology.answers_filter),
        (topology.dead_letter_stream, topology.dead_letter_filter),
    ):
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            if not create:
                raise TopologyMissing(
                    f"stream {stream!r} does not exist on {topology.nats_url}; run "
                    "`csatdist streams create` (or `csatdist consume --create`) once, or create "
                    f"it with subjects {subject!r}"
                ) from None
            await js.add_stream(
                api.StreamConfig(
                    name=stream,
                    subjects=[subject],
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                    max_age=STREAM_MAX_AGE_SECONDS,
                    duplicate_window=DUPLICATE_WINDOW_SECONDS,
                )
            )
            created.append(f"stream {stream} ({subject})")
        else:
            subjects = info.config.subjects or []
            if subject not in subjects:
                log.warning(
                    "stream subjects differ from the configured ones",
                    extra={"fields": {"stream": stream, "subjects": subjects, "expected": subject}},
                )
    return created


async def ensure_consumer(js: JetStreamContext, topology: Topology, *, create: bool) -> list[str]:
    try:
        await js.consumer_info(topology.stream, topology.consumer)
    except nats.js.errors.NotFoundError:
        if not create:
            raise TopologyMissing(
                f"durable consumer {topology.consumer!r} does not exist on stream "
                f"{topology.stream!r}; run `csatdist streams create` (or `csatdist consume "
                "--create`) once"
            ) from None
        await js.add_consumer(
            topology.stream,
            api.ConsumerConfig(
                durable_name=topology.consumer,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                filter_subject=topology.answers_filter,
                max_deliver=topology.max_deliver,
                ack_wait=topology.ack_wait_seconds,
                max_ack_pending=topology.max_ack_pending,
            ),
        )
        return [f"consumer {topology.consumer}"]
    return []


@dataclass(slots=True)
class ConsumeStats:
    batches: int = 0
    messages: int = 0
    accepted: int = 0
    updated: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    store_retries: int = 0
    redeliveries_requested: int = 0

    def as_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class Lag:
    pending: int = -1
    ack_pending: int = -1
    redelivered: int = -1


class Consumer:
    """Fetch, count, dead-letter, then acknowledge; one batch at a time."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Clock = system_clock_ms,
        pause_before_ack: float = 0.0,
        on_batch: Callable[[ConsumeStats], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self.clock = clock
        self.pause_before_ack = pause_before_ack
        self.on_batch = on_batch
        self.stats = ConsumeStats()
        self.lag = Lag()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

    def stop(self) -> None:
        """Finish the batch in hand, acknowledge it, and return from :meth:`run`."""
        self.stopping.set()

    async def run(self, *, create: bool = False) -> ConsumeStats:
        nc = self._nc = await connect(self.topology, name="csatdist-consume", wait=True)
        try:
            js = self._js = nc.jetstream()
            created = await ensure_topology(js, self.topology, create=create)
            for what in created:
                log.info("created " + what)
            subscription = await js.pull_subscribe_bind(
                self.topology.consumer, self.topology.stream
            )
            await nc.subscribe(
                self.topology.max_deliveries_advisory,
                queue="csatdist-max-deliveries",
                cb=self._on_max_deliveries,
            )
            lag_task = asyncio.create_task(self._watch_lag(js))
            log.info(
                "consuming",
                extra={
                    "fields": {
                        "stream": self.topology.stream,
                        "consumer": self.topology.consumer,
                        "subjects": self.topology.answers_filter,
                    }
                },
            )
            self.ready.set()
            try:
                await self._loop(subscription)
            finally:
                lag_task.cancel()
        finally:
            # Everything handled is acknowledged and flushed; messages fetched but not handled
            # are redelivered after ack_wait.
            await nc.close()
        log.info("stopped", extra={"fields": self.stats.as_json()})
        return self.stats

    async def _loop(self, subscription: JetStreamContext.PullSubscription) -> None:
        failures = 0
        batch = self.settings.consume_batch
        while not self.stopping.is_set():
            try:
                messages = await subscription.fetch(batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                failures = 0
                continue
            except nats.errors.Error as exc:
                failures += 1
                log.warning("fetch failed; retrying", extra={"fields": {"error": repr(exc)}})
                await self._sleep(backoff(failures))
                continue
            failures = 0
            if messages:
                await self._handle(messages)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when asked to stop."""
        await wait_event(self.stopping, seconds)

    async def _handle(self, messages: list[Msg]) -> None:
        started = time.perf_counter()
        events = [_event(message) for message in messages]
        plan = plan_batch(events, self.topology.subject_prefix, self.settings.max_ingest_answers)
        try:
            reports = await self._commit_until_done(messages, plan)
        except Exception as exc:
            await self._failed(messages, exc)
            return
        if reports is None:  # asked to stop while the store was down: leave them unacknowledged
            return
        dead = list(plan.dead)
        for account, report in reports:
            dead.extend(plan.accounts[account].dead_letters(report.rejected))
        try:
            await self._publish_dead_letters(dead)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            log.error(
                "could not store dead letters; the batch will be redelivered",
                extra={"fields": {"error": repr(exc)}},
            )
            await self._nak(messages, attempt=1)
            return
        if self.pause_before_ack:
            log.info(
                "batch committed; pausing before acknowledging",
                extra={"fields": {"messages": len(messages), "seconds": self.pause_before_ack}},
            )
            await asyncio.sleep(self.pause_before_ack)
        await self._ack(messages)
        self._count(messages, reports, dead, started)

    async def _commit_until_done(
        self, messages: list[Msg], plan: BatchPlan
    ) -> list[tuple[str, IngestReport]] | None:
        """Commit, and while the store is unavailable keep the batch and retry with backoff.

        The messages are kept ``in progress`` meanwhile, so they are neither redelivered to
        another consumer nor counted towards max_deliver by an outage.
        """
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(self._commit, plan)
            except StoreUnavailable as exc:
                attempt += 1
                self.stats.store_retries += 1
                STREAM_STORE_RETRIES.inc()
                log.warning(
                    "store unavailable; pausing consumption",
                    extra={"fields": {"attempt": attempt, "error": exc.detail}},
                )
                if self.stopping.is_set():
                    return None
                await self._keep_in_progress(messages)
                await self._sleep(backoff(attempt))

    def _commit(self, plan: BatchPlan) -> list[tuple[str, IngestReport]]:
        now = self.clock()
        return [
            (
                account,
                ingest_answers(
                    self.store, account, items.items, now, self.settings.retention_minutes
                ),
            )
            for account, items in plan.accounts.items()
        ]

    async def _failed(self, messages: list[Msg], exc: Exception) -> None:
        """An unexpected error: isolate the message causing it, retry or dead-letter it."""
        if len(messages) > 1:
            log.warning(
                "batch failed; retrying its messages one by one",
                extra={"fields": {"error": repr(exc), "messages": len(messages)}},
            )
            for message in messages:
                await self._handle([message])
            return
        message = messages[0]
        event = _event(message)
        if event.deliveries >= self.topology.max_deliver:
            reason = f"failed on each of {event.deliveries} deliveries; last error: {exc!r}"
            try:
                await self._publish_dead_letters([DeadLetter(event, reason, event.data)])
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
                return  # left unacknowledged: the max-deliveries advisory dead-letters it
            STREAM_DEAD_LETTERS.labels("failed").inc()
            self.stats.dead_letters += 1
            await self._ack(messages)
            return
        log.error(
            "message failed; it will be redelivered",
            extra={"fields": {"error": repr(exc), "sequence": event.stream_sequence}},
        )
        await self._nak(messages, attempt=event.deliveries)

    async def _keep_in_progress(self, messages: list[Msg]) -> None:
        for message in messages:
            try:
                await message.in_progress()
            except nats.errors.Error:
                return

    async def _nak(self, messages: list[Msg], *, attempt: int) -> None:
        self.stats.redeliveries_requested += len(messages)
        STREAM_MESSAGES.labels("redelivery_requested").inc(len(messages))
        for message in messages:
            try:
                await message.nak(delay=backoff(attempt + 1))
            except nats.errors.Error:
                return

    async def _ack(self, messages: list[Msg]) -> None:
        """Acknowledge; a lost acknowledgement only means a redelivery, counted as duplicates."""
        try:
            for message in messages:
                await message.ack()
            if self._nc is not None:
                await self._nc.flush(timeout=5)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning(
                "acknowledgement failed; the batch will be redelivered and found duplicate",
                extra={"fields": {"error": repr(exc)}},
            )

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("not connected")
        return self._js

    async def _publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        js = self._jetstream()
        pending = [
            await js.publish_async(
                letter.subject(self.topology.dead_letter_prefix),
                letter.payload,
                headers=letter.headers(self.topology.stream),
                stream=self.topology.dead_letter_stream,
                wait_stall=5,
            )
            for letter in letters
        ]
        await asyncio.wait_for(asyncio.gather(*pending), timeout=10)

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """A message was delivered max_deliver times without an ack (e.g. its consumer kept
        crashing): copy it to the dead-letter subject so it does not sit unseen."""
        try:
            body = orjson.loads(advisory.data)
            sequence, deliveries = int(body["stream_seq"]), int(body["deliveries"])
            stored = await self._jetstream().get_msg(self.topology.stream, sequence)
            event = Event(stored.subject or "", stored.data or b"", sequence, deliveries)
            reason = f"not acknowledged after {deliveries} deliveries (max_deliver)"
            await self._publish_dead_letters([DeadLetter(event, reason, event.data)])
        except Exception as exc:
            log.error(
                "could not dead-letter a message past max_deliver",
                extra={"fields": {"error": repr(exc), "advisory": advisory.data[:200].decode()}},
            )
            return
        STREAM_DEAD_LETTERS.labels("max_deliveries").inc()
        self.stats.dead_letters += 1
        log.warning("dead-lettered a message past max_deliver", extra={"fields": body})

    async def _watch_lag(self, js: JetStreamContext) -> None:
        while True:
            try:
                info = await js.consumer_info(self.topology.stream, self.topology.consumer)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
                pass
            else:
                self.lag = Lag(
                    info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0
                )
                STREAM_PENDING.set(self.lag.pending)
                STREAM_ACK_PENDING.set(self.lag.ack_pending)
            await asyncio.sleep(LAG_REFRESH_SECONDS)

    def _count(
        self,
        messages: list[Msg],
        reports: list[tuple[str, IngestReport]],
        dead: list[DeadLetter],
        started: float,
    ) -> None:
        accepted = sum(report.accepted for _, report in reports)
        updated = sum(report.updated for _, report in reports)
        duplicates = sum(report.duplicates for _, report in reports)
        self.stats.batches += 1
        self.stats.messages += len(messages)
        self.stats.accepted += accepted
        self.stats.updated += updated
        self.stats.duplicates += duplicates
        self.stats.dead_letters += len(dead)
        ANSWERS.labels("accepted").inc(accepted)
        ANSWERS.labels("updated").inc(updated)
        ANSWERS.labels("duplicate").inc(duplicates)
        STREAM_MESSAGES.labels("acked").inc(len(messages))
        for letter in dead:
            STREAM_DEAD_LETTERS.labels("unreadable" if letter.index is None else "invalid").inc()
        STREAM_BATCH_SECONDS.observe(time.perf_counter() - started)
        log.debug(
            "batch done",
            extra={
                "fields": {
                    "messages": len(messages),
                    "accepted": accepted,
                    "updated": updated,
                    "duplicates": duplicates,
                    "dead_letters": len(dead),
                }
            },
        )
        if self.on_batch is not None:
            self.on_batch(self.stats)


def _event(message: Msg) -> Event:
    metadata = message.metadata
    return Event(
        message.subject, message.data, metadata.sequence.stream, metadata.num_delivered or 1
    )


@dataclass(slots=True)
class PublishReport:
    messages: int = 0
    answers: int = 0
    duplicates: int = 0  # messages the stream already had (same content within its window)
    unreadable: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "answers": self.answers,
            "duplicate_messages": self.duplicates,
            "unreadable": self.unreadable,
        }


def chunk_payloads(answers: Iterable[object], per_message: int) -> Iterable[tuple[bytes, int]]:
    """NDJSON payloads of at most ``per_message`` answers, with how many each holds."""
    batch: list[object] = []
    for answer in answers:
        batch.append(answer)
        if len(batch) == per_message:
            yield ndjson(batch), len(batch)
            batch = []
    if batch:
        yield ndjson(batch), len(batch)


async def publish_answers(
    settings: Settings,
    account_id: str,
    payloads: Iterable[tuple[bytes, int]],
    progress: Callable[[int], None] | None = None,
) -> PublishReport:
    """Publish NDJSON payloads to the account's subject, pipelined, each with a content-derived
    Nats-Msg-Id so a re-run inside the stream's duplicate window adds nothing."""
    topology = Topology.from_settings(settings)
    subject = account_subject(topology.subject_prefix, account_id)
    nc = await connect(topology, name="csatdist-publish", wait=False)
    report = PublishReport()
    try:
        js = nc.jetstream(publish_async_max_pending=2000)
        try:
            await js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            raise TopologyMissing(
                f"no stream captures {subject!r} on {topology.nats_url}; run "
                "`csatdist streams create` once, or create the stream"
            ) from None
        pending: list[tuple[asyncio.Future[api.PubAck], int]] = []
        for payload, count in payloads:
            future = await js.publish_async(
                subject,
                payload,
                headers={MSG_ID_HEADER: message_id(account_id, payload)},
                wait_stall=30,
            )
            pending.append((future, count))
            if len(pending) >= 1000:
                await _settle(pending, report, progress)
        await _settle(pending, report, progress)
    finally:
        await nc.close()
    return report


async def _settle(
    pending: list[tuple[asyncio.Future[api.PubAck], int]],
    report: PublishReport,
    progress: Callable[[int], None] | None,
) -> None:
    acks = await asyncio.wait_for(asyncio.gather(*(f for f, _ in pending)), timeout=60)
    for ack, (_, count) in zip(acks, pending, strict=True):
        report.messages += 1
        report.answers += count
        report.duplicates += bool(ack.duplicate)
        if progress is not None:
            progress(count)
    pending.clear()
