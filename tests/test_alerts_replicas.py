"""Alerts across real `csatdist serve` processes: two replicas on one database deliver each
transition once; a delivery survives a SIGKILL mid-retry; real retry timing; the SSRF guard of a
real server at save time and, after its DNS answer changed, at delivery time. And two defects
found here, reproduced in-process: an evaluation from a stale rule list, and a server key that
differs from the one a rule's secret was sealed with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from csatdist.aggregates import AggregateCache
from csatdist.alerting import AlertPolicy, deliver_due, evaluate_rules, save_rule
from csatdist.sealing import SecretBox
from csatdist.service import ingest_answers
from csatdist.store import Store
from csatdist.webhooks import parse_allow_list, verify, webhook_client
from tests.helpers import ServerProcess, bearer, create_key, postgres_schema, start_server
from tests.receivers import Receiver, running_receiver, wait_until

ACCOUNTS = ("north", "south", "west")
RULES = ("all", "skill12")
CYCLES = 3
#: In-process tests: every webhook host is public.
ALLOW_ALL_PUBLIC = AlertPolicy(resolve=lambda host, port: ["93.184.216.34"])


def _answers(now: int, skill: int, score: int, count: int) -> list[tuple[int, object]]:
    return [
        (i, {"id": f"s{skill}-{i}", "time": now - 1000, "score": score, "skillId": skill})
        for i in range(count)
    ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as found:
        yield found


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ]
)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One database for the test's servers: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'csat.db'}"
        return
    with postgres_schema() as url:
        yield url


def server_env(receiver: Receiver, key: str, **extra: str) -> dict[str, str]:
    """What every replica shares: the server key (rule secrets are sealed with it) and the
    receiver allowed; rules are checked often so the test does not wait."""
    return {
        "CSATDIST_SECRET_KEY": key,
        "CSATDIST_WEBHOOK_ALLOW": receiver.prefix,
        "CSATDIST_ALERT_CHECK_SECONDS": "0.1",
        **extra,
    }


@contextlib.contextmanager
def servers(
    database: str, tmp_path: Path, count: int, env: dict[str, str]
) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for i in range(count):
            log = tmp_path / f"server{i}.log"
            started.append(start_server(database, log, "--log-level", "warning", env=env))
        yield started
    finally:
        for server in started:
            server.stop()


def put_rule(server: ServerProcess, token: str, account: str, name: str, **fields: Any) -> Any:
    reply = httpx.put(
        f"{server.url}/api/account/{account}/csat/alerts/{name}",
        json=fields,
        headers=bearer(token),
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


def ingest(server: ServerProcess, token: str, account: str, answers: list[dict[str, Any]]) -> None:
    while True:
        reply = httpx.post(
            f"{server.url}/api/account/{account}/csat/answers",
            json={"answers": answers},
            headers=bearer(token),
            timeout=30,
        )
        if reply.status_code != 429:  # over the account's ingest limit: retry, as told
            break
        time.sleep(float(reply.headers.get("Retry-After", "1")) / 10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["accepted"] == len(answers), reply.text


def deliveries_log(server: ServerProcess, token: str, account: str, name: str) -> Any:
    reply = httpx.get(
        f"{server.url}/api/account/{account}/csat/alerts/{name}/deliveries",
        headers=bearer(token),
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["deliveries"]


def answer(account: str, number: int, score: int) -> dict[str, Any]:
    return {
        "id": f"{account}-{number}",
        "time": int(time.time() * 1000),
        "score": score,
        "skillId": 12,
    }


def phase_scores(positive: int, total: int, firing: bool) -> list[int]:
    """Scores that make an ``ok`` rule (below 0.5) fire, or a firing one resolve (score at
    least 0.6, clear of the 0.52 hysteresis): each step moves the score one way only, so a
    phase holds exactly one transition however its answers are split between replicas."""
    if not firing:
        return [1] * max(1, 2 * positive - total + 1)  # positive / total < 0.5
    return [5] * max(1, -(-(3 * total - 5 * positive) // 2))  # positive / total >= 0.6


# -- exactly once across replicas ------------------------------------------------------------------


@pytest.mark.slow
def test_two_replicas_deliver_each_transition_once(
    database: str, tmp_path: Path, receiver: Receiver
) -> None:
    tokens = {account: create_key(database, account, "read,write") for account in ACCOUNTS}
    # A slow receiver holds each delivery's lease open: a second replica claiming it meanwhile
    # would show up as a second request with the same id.
    receiver.delay = 0.2
    env = server_env(receiver, Fernet.generate_key().decode())
    with servers(database, tmp_path, 2, env) as replicas:
        secrets: dict[tuple[str, str], str] = {}
        for i, account in enumerate(ACCOUNTS):
            for j, name in enumerate(RULES):
                fields: dict[str, Any] = {"timeframe": 60, "below": 0.5, "webhook": receiver.url()}
                if name == "skill12":
                    fields["skillIds"] = "12"
                rule = put_rule(replicas[(i + j) % 2], tokens[account], account, name, **fields)
                secrets[(account, name)] = rule["secret"]

        counts = {account: [0, 0] for account in ACCOUNTS}  # positive, total
        sent = 0
        for phase in range(2 * CYCLES):
            for account in ACCOUNTS:
                positive, total = counts[account]
                for score in phase_scores(positive, total, firing=phase % 2 == 1):
                    # One answer a request, alternately to each replica: both see every change.
                    ingest(
                        replicas[sent % 2], tokens[account], account, [answer(account, sent, score)]
                    )
                    sent += 1
                    counts[account][0] += score >= 4
                    counts[account][1] += 1
            receiver.wait_for(len(secrets) * (phase + 1), seconds=60)
        time.sleep(2)  # room for a duplicate to arrive
        received = receiver.received()

        # Each transition exactly once: by delivery id, and by (account, rule, state, order).
        ids = Counter(delivery.id for delivery in received)
        assert [i for i, n in ids.items() if n > 1] == []
        sequences: dict[tuple[str, str], list[str]] = {key: [] for key in secrets}
        for delivery in received:
            body = delivery.json()
            key = (body["account"], body["alert"])
            assert verify(secrets[key], delivery.body, delivery.signature), key
            sequences[key].append(body["state"])
        expected = ["firing", "resolved"] * CYCLES
        assert sequences == dict.fromkeys(secrets, expected)

        # Both replicas show the same log: every delivery once, delivered at the first try.
        for account in ACCOUNTS:
            for name in RULES:
                logs = [deliveries_log(r, tokens[account], account, name) for r in replicas]
                assert logs[0] == logs[1]
                assert [d["state"] for d in reversed(logs[0])] == expected
                assert {d["id"] for d in logs[0]} == {
                    d.id
                    for d in received
                    if (d.json()["account"], d.json()["alert"]) == (account, name)
                }
                assert {(d["outcome"], len(d["attempts"])) for d in logs[0]} == {("delivered", 1)}


class SlowReplica:
    """A store as a slow replica sees it: its evaluation reaches ``record_evaluation`` (with the
    counts it read) and waits there until ``release`` is set."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.waiting = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def record_evaluation(self, *args: Any) -> Any:
        self.waiting.set()
        assert self.release.wait(30)
        return self.store.record_evaluation(*args)


def test_an_evaluation_of_older_counts_stored_last_is_dropped(store: Store) -> None:
    """Replica A reads the counts (score 62.5 %: ok) and is slow to store its evaluation; new
    answers make replica B fire the rule; A's evaluation, stored last, must not resolve it. The
    race two real replicas rarely lose, made certain (the (version, window end) order)."""
    box = SecretBox(Fernet.generate_key())
    now = int(time.time() * 1000)
    rule = {"timeframe": 60, "below": 0.5, "webhook": "https://hooks.test/x"}
    save_rule(store, box, "acme", "r", rule, ALLOW_ALL_PUBLIC, now)
    ingest_answers(store, "acme", _answers(now, 12, 5, 5), now, 1445)
    ingest_answers(store, "acme", _answers(now, 13, 1, 3), now, 1445)  # 5 of 8 positive
    rules = store.alert_rules("acme")
    slow = SlowReplica(store)
    replica_a = threading.Thread(
        target=evaluate_rules,
        args=(slow, AggregateCache(store), rules, now, ALLOW_ALL_PUBLIC),
    )
    replica_a.start()
    try:
        assert slow.waiting.wait(30)
        ingest_answers(store, "acme", _answers(now, 14, 1, 3), now, 1445)  # 5 of 11: firing
        fired = evaluate_rules(store, AggregateCache(store), rules, now, ALLOW_ALL_PUBLIC)
        assert fired == [("acme", "r", "firing")]
    finally:
        slow.release.set()
        replica_a.join(30)
    assert [d.transition for d in store.deliveries("acme", "r", 10)] == ["firing"]
    stored = store.alert_rule("acme", "r")
    assert stored is not None
    assert (stored.state, stored.last_total) == ("firing", 11)


# -- at least once, with the same id -------------------------------------------------------------


def fire_one_rule(server: ServerProcess, token: str, receiver: Receiver) -> str:
    """Save a rule that fires on one bad answer, send it one; its secret."""
    secret: str = put_rule(
        server, token, "acme", "flaky", timeframe=60, below=0.9, webhook=receiver.url()
    )["secret"]
    ingest(server, token, "acme", [answer("acme", 1, 1)])
    return secret


@pytest.mark.slow
def test_a_server_killed_mid_retry_is_replaced_by_one_that_delivers_the_same_id(
    database: str, tmp_path: Path, receiver: Receiver
) -> None:
    token = create_key(database, "acme", "read,write")
    env = server_env(receiver, Fernet.generate_key().decode())
    receiver.status = 500  # fails until the server is killed
    with servers(database, tmp_path, 1, env) as (first,):
        secret = fire_one_rule(first, token, receiver)
        receiver.wait_for(1)
        wait_until(
            lambda: len(deliveries_log(first, token, "acme", "flaky")[0]["attempts"]) == 1,
            what="the first attempt in the log",
        )
        first.process.kill()  # SIGKILL: nothing of its state is written on the way out
        first.process.wait(10)
    receiver.status = 200
    with servers(database, tmp_path, 1, env) as (second,):
        (retried, delivered) = receiver.wait_for(2, seconds=40)
        wait_until(
            lambda: deliveries_log(second, token, "acme", "flaky")[0]["outcome"] == "delivered",
            what="the log to say delivered",
        )
        (entry,) = deliveries_log(second, token, "acme", "flaky")
    assert retried.id == delivered.id == entry["id"]
    assert retried.body == delivered.body
    assert all(verify(secret, d.body, d.signature) for d in (retried, delivered))
    assert [a["status"] for a in entry["attempts"]] == [500, 200]
    assert entry["attempts"][0]["error"] == "the receiver answered 500"
    assert len(receiver.received()) == 2


@pytest.mark.slow
@pytest.mark.sqlite
def test_a_receiver_failing_twice_gets_the_same_id_after_10_then_20_seconds(
    tmp_path: Path, receiver: Receiver
) -> None:
    database = f"sqlite:///{tmp_path / 'csat.db'}"
    token = create_key(database, "acme", "read,write")
    receiver.statuses[:] = [500, 503]
    env = server_env(receiver, Fernet.generate_key().decode())
    with servers(database, tmp_path, 1, env) as (server,):
        secret = fire_one_rule(server, token, receiver)
        first, second, third = receiver.wait_for(3, seconds=60)
        wait_until(
            lambda: deliveries_log(server, token, "acme", "flaky")[0]["outcome"] == "delivered",
            what="the log to say delivered",
        )
        (entry,) = deliveries_log(server, token, "acme", "flaky")
    assert first.id == second.id == third.id == entry["id"]
    assert all(verify(secret, d.body, d.signature) for d in (first, second, third))
    assert [a["status"] for a in entry["attempts"]] == [500, 503, 200]
    # Real time: the first retry 10 s after the first attempt, the next 20 s after it (plus
    # the server's check interval and a loaded machine's delays), by the server's log of its
    # attempts. The receiver sees each request when it arrives, so its gaps can be short by
    # the difference of two requests' delays on the way (9.9965 s seen on a loaded machine).
    at = [a["at"] for a in entry["attempts"]]
    assert (at[1] - at[0] >= 10_000, at[2] - at[1] >= 20_000) == (True, True)
    assert 9.9 <= second.at - first.at < 14, second.at - first.at
    assert 19.9 <= third.at - second.at < 24, third.at - second.at


# -- SSRF --------------------------------------------------------------------------------------


def dns_shim(directory: Path, hosts: Path) -> dict[str, str]:
    """An environment whose Python processes resolve names ending in ``.test`` (RFC 6761,
    reserved for testing) from ``hosts``, a JSON object the test rewrites, and every other name
    as usual. It replaces ``socket.getaddrinfo`` at start-up (``sitecustomize``), the one call
    the server resolves through: a real name server could not be pointed elsewhere per test
    without changing the machine's resolver."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(
        "import json, os, socket\n"
        "_real = socket.getaddrinfo\n"
        "def _lookup(host, port, *args, **kwargs):\n"
        "    name = host.decode() if isinstance(host, bytes) else host\n"
        "    if not (name or '').endswith('.test'):\n"
        "        return _real(host, port, *args, **kwargs)\n"
        "    with open(os.environ['CSATDIST_TEST_HOSTS']) as f:\n"
        "        found = json.load(f).get(name)\n"
        "    if not found:\n"
        "        raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')\n"
        "    return [(socket.AF_INET, socket.SOCK_STREAM, 6, '', (found, int(port or 0)))]\n"
        "socket.getaddrinfo = _lookup\n"
    )
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "CSATDIST_TEST_HOSTS": str(hosts)}


@pytest.mark.slow
@pytest.mark.sqlite
def test_a_real_server_never_calls_internal_addresses(tmp_path: Path, receiver: Receiver) -> None:
    database = f"sqlite:///{tmp_path / 'csat.db'}"
    token = create_key(database, "acme", "read,write")
    hosts = tmp_path / "hosts.json"
    hosts.write_text(orjson.dumps({"rebind.test": "93.184.216.34"}).decode())  # public
    env = server_env(receiver, Fernet.generate_key().decode(), CSATDIST_WEBHOOK_ALLOW="")
    env.update(dns_shim(tmp_path / "shim", hosts))
    port = receiver.port
    refused = {
        f"http://127.0.0.1:{port}/hook": "must be an https URL",
        f"https://127.0.0.1:{port}/hook": "127.0.0.1 is a loopback address",
        "https://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
        "https://10.0.0.7/hook": "10.0.0.7 is a private address",
        "https://172.16.5.4/hook": "172.16.5.4 is a private address",
        "https://192.168.1.10/hook": "192.168.1.10 is a private address",
        "https://100.64.0.1/hook": "100.64.0.1 is a carrier-grade NAT address",
        f"https://[::1]:{port}/hook": "::1 is a loopback address",
        f"https://[::ffff:127.0.0.1]:{port}/hook": "is a loopback address",
        f"https://localhost:{port}/hook": "the host 'localhost' resolves to an address that is",
        f"https://inside.test:{port}/hook": "the host 'inside.test' does not resolve",
    }
    with servers(database, tmp_path, 1, env) as (server,):
        url = f"{server.url}/api/account/acme/csat/alerts/ssrf"
        for webhook, reason in refused.items():
            reply = httpx.put(
                url,
                json={"timeframe": 60, "below": 0.9, "webhook": webhook},
                headers=bearer(token),
                timeout=30,
            )
            assert reply.status_code == 400, (webhook, reply.text)
            (problem,) = reply.json()["invalid_params"]
            assert problem["name"] == "webhook"
            assert reason in problem["reason"], (webhook, problem)

        # Public when saved; by the time of the delivery the name points at the receiver on
        # 127.0.0.1. The delivery resolves again and refuses.
        webhook = f"https://rebind.test:{port}/hook"
        put_rule(server, token, "acme", "rebind", timeframe=60, below=0.9, webhook=webhook)
        hosts.write_text(orjson.dumps({"rebind.test": "127.0.0.1"}).decode())
        ingest(server, token, "acme", [answer("acme", 1, 1)])
        wait_until(
            lambda: any(d["attempts"] for d in deliveries_log(server, token, "acme", "rebind")),
            what="a delivery attempt",
        )
        (entry,) = deliveries_log(server, token, "acme", "rebind")
        assert entry["outcome"] == "pending"  # retried later, re-checked every time
        (attempt,) = entry["attempts"]
        assert attempt["status"] is None
        assert attempt["error"].startswith(
            "refused: the host 'rebind.test' resolves to an address that is not public"
        )
    assert receiver.connections == 0  # never contacted, not even a TLS handshake


# -- defects found here, reproduced in-process ------------------------------------------------


def test_an_evaluation_from_a_replaced_rule_document_notifies_nothing(store: Store) -> None:
    box = SecretBox(Fernet.generate_key())
    now = int(time.time() * 1000)
    rule = {"timeframe": 60, "skillIds": "12", "below": 0.5, "webhook": "https://hooks.test/x"}
    save_rule(store, box, "acme", "r", rule, ALLOW_ALL_PUBLIC, now)
    ingest_answers(store, "acme", _answers(now, 12, 1, 5), now, 1445)  # skill 12: all unhappy
    ingest_answers(store, "acme", _answers(now, 13, 5, 5), now, 1445)  # skill 13: all happy
    stale = store.alert_rule("acme", "r")  # a replica's rule list, read before the change
    assert stale is not None
    save_rule(store, box, "acme", "r", {**rule, "skillIds": "13"}, ALLOW_ALL_PUBLIC, now + 1)

    cache = AggregateCache(store)
    evaluate_rules(store, cache, [stale], now + 2, ALLOW_ALL_PUBLIC)  # the stale replica
    fresh = store.alert_rule("acme", "r")
    assert fresh is not None
    evaluate_rules(store, cache, [fresh], now + 3, ALLOW_ALL_PUBLIC)  # an up-to-date one
    # The rule as it is (skill 13, every answer happy) never fired.
    assert [d.transition for d in store.deliveries("acme", "r", 10)] == []
    after = store.alert_rule("acme", "r")
    assert after is not None
    assert after.state == "ok"


def test_a_delivery_the_server_cannot_sign_is_logged_as_a_failed_attempt(store: Store) -> None:
    sealed_with = SecretBox(Fernet.generate_key())
    now = int(time.time() * 1000)
    # Allowed, and resolving to a port where nothing listens: no request could leave.
    policy = AlertPolicy(
        allow=parse_allow_list("https://hooks.test:9/"), resolve=lambda host, port: ["127.0.0.1"]
    )
    rule = {"timeframe": 60, "below": 0.5, "webhook": "https://hooks.test:9/x"}
    save_rule(store, sealed_with, "acme", "r", rule, policy, now)
    ingest_answers(store, "acme", _answers(now, 12, 1, 1), now, 1445)
    assert evaluate_rules(store, AggregateCache(store), store.alert_rules("acme"), now, policy)

    other_key = SecretBox(Fernet.generate_key())

    async def deliver() -> int:
        async with webhook_client() as client:
            return await deliver_due(store, client, lambda: other_key, policy, lambda: now + 1)

    assert asyncio.run(deliver()) == 1
    (entry,) = store.deliveries("acme", "r", 10)
    (attempt,) = entry.tries
    assert attempt.error is not None
    assert "key" in attempt.error
    assert entry.next_attempt_ms is not None  # retried like any failed attempt
