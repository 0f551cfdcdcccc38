"""Alerts end to end on both stores: rules over HTTP, evaluation after ingest and as windows
slide, signed deliveries to a real local receiver, retries with the same delivery id, the
deliveries log, SSRF refusals, and the directory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from csatdist.buckets import MINUTE_MS
from csatdist.http import background, create_app
from csatdist.store import Store
from csatdist.webhooks import verify
from tests.conftest import add_key, make_settings
from tests.helpers import T_13_29, FakeClock, bearer


@dataclass
class Receiver:
    """A webhook receiver: records every request; answers with the statuses queued (then 200)."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [orjson.loads(body) for _, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with found.lock:
                found.requests.append((dict(self.headers.items()), body))
                status = found.statuses.pop(0) if found.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


@dataclass
class Setup:
    client: TestClient
    clock: FakeClock
    read: dict[str, str]
    write: dict[str, str]

    def rule(self, name: str, **fields: Any) -> Any:
        return self.client.put(
            f"/api/account/acme/csat/alerts/{name}", json=fields, headers=self.write
        )

    def log(self, name: str) -> list[dict[str, Any]]:
        reply = self.client.get(
            f"/api/account/acme/csat/alerts/{name}/deliveries", headers=self.read
        )
        deliveries: list[dict[str, Any]] = reply.json()["deliveries"]
        return deliveries

    def attempts(self, name: str) -> int:
        """Attempts of the rule's latest delivery (0 before there is one)."""
        log = self.log(name)
        return len(log[0]["attempts"]) if log else 0

    def ingest(self, *scores: int, skill: int = 12) -> None:
        answers = [
            {
                "id": f"a{time.monotonic_ns()}-{i}",
                "time": self.clock(),
                "score": s,
                "skillId": skill,
            }
            for i, s in enumerate(scores)
        ]
        response = self.client.post(
            "/api/account/acme/csat/answers", json={"answers": answers}, headers=self.write
        )
        assert response.status_code == 200, response.text


@pytest.fixture
def setup(store: Store, receiver: Receiver, tmp_path: Any) -> Iterator[Setup]:
    clock = FakeClock(T_13_29)
    settings = make_settings(
        webhook_allow=receiver.url.rsplit("/", 1)[0] + "/",
        alert_check_seconds=0.05,
        secret_key_file=str(tmp_path / "server.key"),
    )
    with TestClient(create_app(settings, store=store, clock=clock)) as client:
        yield Setup(
            client,
            clock,
            bearer(add_key(store, "acme", "read")),
            bearer(add_key(store, "acme", "write")),
        )


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_rule_fires_and_resolves_with_signed_deliveries(setup: Setup, receiver: Receiver) -> None:
    created = setup.rule(
        "low-billing", timeframe=60, skillIds="12", below=0.7, minAnswers=4, webhook=receiver.url
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert created.json()["state"] == "ok"
    setup.ingest(1, 2, 5)  # 3 answers: under minAnswers, not firing
    time.sleep(0.3)
    assert receiver.requests == []
    setup.ingest(1)  # 4 answers, 25 %: firing
    wait_for(lambda: len(receiver.requests) == 1)
    headers, body = receiver.requests[0]
    assert verify(secret, body, headers["X-CSAT-Signature"])
    document = orjson.loads(body)
    assert (document["alert"], document["account"], document["state"]) == (
        "low-billing",
        "acme",
        "firing",
    )
    assert document["metrics"]["total_answers"] == 4
    assert document["metrics"]["csat_score_high"] < 1
    assert (
        setup.client.get("/api/account/acme/csat/alerts/low-billing", headers=setup.read).json()[
            "state"
        ]
        == "firing"
    )
    setup.clock.now_ms += 1000
    setup.ingest(5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5)  # 13 of 16 positive: 81 %, above 0.72
    wait_for(lambda: len(receiver.requests) == 2)
    assert receiver.bodies()[1]["state"] == "resolved"
    ids = [h["X-CSAT-Delivery"] for h, _ in receiver.requests]
    assert len(set(ids)) == 2
    wait_for(lambda: [d["outcome"] for d in setup.log("low-billing")] == ["delivered"] * 2)
    log = setup.log("low-billing")
    assert [d["state"] for d in log] == ["resolved", "firing"]
    assert [d["attempts"][0]["status"] for d in log] == [200, 200]


def test_a_sliding_window_resolves_without_new_answers(
    setup: Setup, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background, "EVALUATE_ALL_SECONDS", 0.2)  # a minute, in production
    setup.ingest(1, 1)
    assert setup.rule("quiet", timeframe=5, below=0.5, webhook=receiver.url).status_code == 201
    wait_for(lambda: len(receiver.requests) == 1)
    setup.clock.advance(11)  # the window moves past the answers; nothing else changes
    wait_for(lambda: len(receiver.requests) == 2)
    assert [b["state"] for b in receiver.bodies()] == ["firing", "resolved"]


def test_a_failing_receiver_gets_the_same_delivery_again_until_it_succeeds(
    setup: Setup, receiver: Receiver
) -> None:
    receiver.statuses[:] = [500, 503]
    assert setup.rule("flaky", timeframe=60, below=0.9, webhook=receiver.url).status_code == 201
    setup.ingest(1)
    for tried, gap_ms in ((1, 10_000), (2, 20_000)):  # on the server's clock
        wait_for(lambda tried=tried: setup.attempts("flaky") == tried)
        setup.clock.now_ms += gap_ms - 2_000
        time.sleep(0.3)
        assert len(receiver.requests) == tried, setup.log("flaky")  # not before its time
        setup.clock.now_ms += 2_000
    wait_for(lambda: setup.log("flaky")[0]["outcome"] == "delivered")
    ids = {h["X-CSAT-Delivery"] for h, _ in receiver.requests}
    assert len(ids) == 1
    assert [a["status"] for a in setup.log("flaky")[0]["attempts"]] == [500, 503, 200]


@pytest.mark.parametrize(
    "webhook",
    [
        "http://example.com/hook",  # not https
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.7/hook",
        "https://[::1]/hook",
        "https://localhost/hook",
    ],
)
def test_webhooks_to_internal_targets_are_refused(setup: Setup, webhook: str) -> None:
    response = setup.rule("ssrf", timeframe=60, below=0.5, webhook=webhook)
    assert response.status_code == 400, response.text
    assert response.json()["invalid_params"][0]["name"] == "webhook"


def test_rules_are_per_account_and_need_the_right_scope(setup: Setup, receiver: Receiver) -> None:
    refused = setup.client.put(
        "/api/account/acme/csat/alerts/x",
        json={"timeframe": 60, "below": 0.5, "webhook": receiver.url},
        headers=setup.read,
    )
    assert refused.status_code == 401
    assert setup.rule("x", timeframe=60, below=0.5, webhook=receiver.url).status_code == 201
    again = setup.rule("x", timeframe=30, below=0.6, webhook=receiver.url)
    assert again.status_code == 200
    assert "secret" not in again.json()  # shown once, at creation
    listed = setup.client.get("/api/account/acme/csat/alerts", headers=setup.read).json()
    assert [(r["name"], r["timeframe"], r["below"]) for r in listed["alerts"]] == [("x", 30, 0.6)]
    assert (
        setup.client.delete("/api/account/acme/csat/alerts/x", headers=setup.write).status_code
        == 204
    )
    assert (
        setup.client.get("/api/account/acme/csat/alerts/x", headers=setup.read).status_code == 404
    )


def test_a_read_only_credential_sees_where_a_webhook_points_not_its_url(
    setup: Setup, store: Store, receiver: Receiver
) -> None:
    """A webhook URL can itself be a credential (Slack's): only a writer sees it whole."""
    webhook = receiver.url + "/T0000/B0000/secret-path?token=abc"
    assert setup.rule("s", timeframe=60, below=0.5, webhook=webhook).status_code == 201
    host = receiver.url.split("/")[2]
    for path in ("/api/account/acme/csat/alerts", "/api/account/acme/csat/alerts/s"):
        read_only = setup.client.get(path, headers=setup.read).json()
        shown = read_only["alerts"][0] if "alerts" in read_only else read_only
        assert shown["webhook"] == f"http://{host}/\u2026"
        both = bearer(add_key(store, "acme", "read,write"))
        whole = setup.client.get(path, headers=both).json()
        assert (whole["alerts"][0] if "alerts" in whole else whole)["webhook"] == webhook


def test_a_test_delivery_reports_the_receivers_answer(setup: Setup, receiver: Receiver) -> None:
    created = setup.rule("t", timeframe=60, below=0.5, webhook=receiver.url, format="slack")
    tested = setup.client.post("/api/account/acme/csat/alerts/t/test", headers=setup.write)
    assert tested.json()["ok"] is True
    headers, body = receiver.requests[0]
    assert verify(created.json()["secret"], body, headers["X-CSAT-Signature"])
    assert "text" in orjson.loads(body)


def test_the_directory_merges_names_and_answers_name_ids(setup: Setup) -> None:
    url = "/api/account/acme/directory"
    put = setup.client.put(
        url,
        json={"skills": {"12": "Billing", "13": "Sales"}, "agents": {"1015": "Ana"}},
        headers=setup.write,
    )
    assert put.status_code == 200
    removed = setup.client.put(url, json={"skills": {"13": None}}, headers=setup.write).json()
    assert removed == {"skills": {"12": "Billing"}, "agents": {"1015": "Ana"}}
    answers = [
        {
            "id": "n1",
            "time": setup.clock() - MINUTE_MS,
            "score": 5,
            "agentId": 1015,
            "agentName": "Ana Lima",
            "updatedAt": setup.clock() + 1000,
        },
        {
            "id": "n2",
            "time": setup.clock() - 2 * MINUTE_MS,
            "score": 4,
            "skillId": 14,
            "skillName": "Returns",
        },
    ]
    setup.client.post(
        "/api/account/acme/csat/answers", json={"answers": answers}, headers=setup.write
    )
    names = setup.client.get(url, headers=setup.read).json()
    # The answer dated later than the PUT renames agent 1015; skill 14 gets its first name.
    assert names == {"skills": {"12": "Billing", "14": "Returns"}, "agents": {"1015": "Ana Lima"}}
    bad = setup.client.put(url, json={"skills": {"x": "y"}}, headers=setup.write)
    assert bad.status_code == 400


def test_writes_to_accounts_without_rules_cost_the_alert_loop_nothing(
    store: Store, receiver: Receiver, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop looks at once at the accounts this server wrote to, and only at those with
    rules: a busy account without rules makes it read nothing (no rules, versions or outbox
    claims per write), while a write to an account with a rule still fires it at once, long
    before the next periodic check (60 s here)."""
    clock = FakeClock(T_13_29)
    settings = make_settings(
        webhook_allow=receiver.url.rsplit("/", 1)[0] + "/",
        alert_check_seconds=60,
        secret_key_file=str(tmp_path / "server.key"),
    )
    calls: list[str] = []
    for name in ("alert_rules", "account_version", "claim_deliveries"):
        real = getattr(store, name)

        def counted(*args: Any, name: str = name, real: Any = real) -> Any:
            calls.append(name)
            return real(*args)

        monkeypatch.setattr(store, name, counted)
    write = bearer(add_key(store, "acme", "write"))
    other = bearer(add_key(store, "other", "write"))
    with TestClient(create_app(settings, store=store, clock=clock)) as client:
        created = client.put(
            "/api/account/acme/csat/alerts/low",
            json={"timeframe": 60, "below": 0.7, "minAnswers": 1, "webhook": receiver.url},
            headers=write,
        )
        assert created.status_code == 201, created.text
        wait_for(lambda: "claim_deliveries" in calls)  # the new rule evaluated, outbox looked at
        time.sleep(0.3)
        calls.clear()
        for number in range(20):
            answer = {"id": f"o{number}", "time": clock(), "score": 1, "skillId": 1}
            reply = client.post(
                "/api/account/other/csat/answers", json={"answers": [answer]}, headers=other
            )
            assert reply.status_code == 200, reply.text
        time.sleep(0.3)
        assert calls == []
        answer = {"id": "a1", "time": clock(), "score": 1, "skillId": 1}
        reply = client.post(
            "/api/account/acme/csat/answers", json={"answers": [answer]}, headers=write
        )
        assert reply.status_code == 200, reply.text
        wait_for(lambda: len(receiver.requests) == 1, seconds=20)
        assert receiver.bodies()[0]["state"] == "firing"
        assert "alert_rules" not in calls  # the rules are read every 10 s, not on every write
