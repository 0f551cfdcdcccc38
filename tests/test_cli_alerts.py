"""`csatdist alerts …` and `csatdist directory …` as real processes on a real SQLite file: the
HTTP API's rules and bodies, signed test deliveries to a real receiver, the deliveries log of a
real server, and the receiver of docs/alerts.md run unchanged against a real delivery."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from csatdist.http import create_app
from csatdist.store import Store, open_store
from csatdist.webhooks import verify
from tests.conftest import add_key, make_settings
from tests.helpers import bearer, create_key, csatdist_cli, free_port, start_server
from tests.receivers import Receiver, running_receiver, wait_until

DOC = Path(__file__).resolve().parents[1] / "docs" / "alerts.md"
ALERTS = "/api/account/acme/csat/alerts"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as found:
        yield found


@pytest.fixture
def env(tmp_path: Path, receiver: Receiver) -> dict[str, str]:
    """The environment of every command: one database, one server key, the receiver allowed."""
    return {
        "CSATDIST_DATABASE_URL": f"sqlite:///{tmp_path / 'csat.db'}",
        "CSATDIST_SECRET_KEY_FILE": str(tmp_path / "server.key"),
        "CSATDIST_WEBHOOK_ALLOW": receiver.prefix,
    }


def cli(env: dict[str, str], *args: str) -> Any:
    return csatdist_cli(*args, env=env)


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def create(env: dict[str, str], name: str, *options: str) -> Any:
    return cli(env, "alerts", "create", "--account", "acme", "--name", name, *options)


@contextlib.contextmanager
def http_app(env: dict[str, str]) -> Iterator[tuple[TestClient, Store, dict[str, str]]]:
    """The HTTP API in-process on the commands' database, with the same settings."""
    store = open_store(env["CSATDIST_DATABASE_URL"])
    settings = make_settings(
        database_url=env["CSATDIST_DATABASE_URL"],
        secret_key_file=env["CSATDIST_SECRET_KEY_FILE"],
        webhook_allow=env["CSATDIST_WEBHOOK_ALLOW"],
    )
    try:
        with TestClient(create_app(settings, store=store)) as client:
            yield client, store, bearer(add_key(store, "acme", "read,write"))
    finally:
        store.close()


# -- alerts create / list / delete --------------------------------------------------------------


def test_create_shows_the_secret_once_and_follows_the_puts_rules(
    env: dict[str, str], receiver: Receiver
) -> None:
    created = create(
        env,
        "low-billing",
        *("--timeframe", "60", "--below", "0.7", "--min-answers", "20", "--skills", "12,13"),
        *("--webhook", receiver.url()),
    )
    assert created.returncode == 0, created.stderr
    assert "created alert rule low-billing for account acme" in created.stdout
    assert "is below 70 % with at least 20 answers; resolves at 72 %" in created.stdout
    found = re.search(r"secret \(shown once[^\n]*: (\S+)\n", created.stdout)
    assert found is not None, created.stdout
    assert len(found.group(1)) == 43  # 32 random bytes, URL-safe base64
    assert "created the server key" in created.stderr  # the first command to need one made it

    replaced = create(
        env, "low-billing", "--timeframe", "30", "--below", "0.6", "--webhook", receiver.url()
    )
    assert replaced.returncode == 0, replaced.stderr
    assert "replaced alert rule low-billing" in replaced.stdout
    assert found.group(1) not in replaced.stdout
    assert "secret is unchanged" in replaced.stdout

    # The same fields through PUT make the same rule; list --json is the GET body.
    with http_app(env) as (client, _, key):
        put = client.put(
            f"{ALERTS}/via-http",
            json={"timeframe": "30", "below": "0.6", "webhook": receiver.url()},
            headers=key,
        )
        assert put.status_code == 201, put.text
        listed = cli_json(env, "alerts", "list", "--account", "acme")
        assert listed == client.get(ALERTS, headers=key).json()
    rules = {rule.pop("name"): rule for rule in listed["alerts"]}
    assert rules["low-billing"] == rules["via-http"]
    assert rules["via-http"]["below"] == 0.6

    as_json = cli_json(
        env,
        *("alerts", "create", "--account", "acme", "--name", "slacky", "--timeframe", "5"),
        *("--below", "0.9", "--bound", "wilson_high", "--format", "slack"),
        *("--webhook", receiver.url()),
    )
    assert set(as_json) == set(put.json())  # the PUT reply: the rule, its state, the secret
    assert (as_json["bound"], as_json["format"], as_json["minAnswers"]) == (
        "wilson_high",
        "slack",
        1,
    )

    table = cli(env, "alerts", "list", "--account", "acme")
    lines = table.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["name", "state", "since"]
    assert [line.split("\t")[0] for line in lines[1:]] == ["low-billing", "slacky", "via-http"]
    cells = lines[1].split("\t")
    assert (cells[3], cells[5]) == (
        "score < 60 % over 30 min, \u2265 1 answer",
        f"{receiver.url()} (json)",
    )
    assert lines[2].split("\t")[3] == "CI high < 90 % over 5 min, \u2265 1 answer"

    deleted = cli(env, "alerts", "delete", "--account", "acme", "--name", "slacky")
    assert deleted.returncode == 0, deleted.stderr
    again = cli(env, "alerts", "delete", "--account", "acme", "--name", "slacky")
    assert again.returncode == 1
    assert "no alert rule named 'slacky'" in again.stderr
    names = [r["name"] for r in cli_json(env, "alerts", "list", "--account", "acme")["alerts"]]
    assert names == ["low-billing", "via-http"]


def test_bad_options_are_named_with_the_puts_reasons(
    env: dict[str, str], receiver: Receiver
) -> None:
    bad = {"timeframe": "0", "below": "70%", "minAnswers": "x", "bound": "mean", "format": "xml"}
    result = create(
        env,
        "bad",
        *("--timeframe", "0", "--below", "70%", "--min-answers", "x", "--bound", "mean"),
        *("--format", "xml", "--webhook", receiver.url()),
    )
    assert result.returncode == 2
    with http_app(env) as (client, _, key):
        reply = client.put(f"{ALERTS}/bad", json={**bad, "webhook": receiver.url()}, headers=key)
    assert reply.status_code == 400
    options = {
        "timeframe": "--timeframe",
        "below": "--below",
        "minAnswers": "--min-answers",
        "bound": "--bound",
        "format": "--format",
    }
    message = " ".join(result.stderr.split())  # one line, whatever the terminal
    for problem in reply.json()["invalid_params"]:
        assert f"{options[problem['name']]}: {problem['reason']}" in message
    assert cli_json(env, "alerts", "list", "--account", "acme") == {"alerts": []}
    bad_name = create(env, "no spaces", "--timeframe", "5", "--below", "0.5", "--webhook", "x")
    assert bad_name.returncode == 2
    assert "--name: must be 1 to 64 letters" in bad_name.stderr


@pytest.mark.parametrize(
    ("webhook", "reason"),
    [
        ("http://alerts.example.com/hook", "must be an https URL"),
        ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("https://10.1.2.3/hook", "10.1.2.3 is a private address"),
        (
            "https://localhost/hook",
            "the host 'localhost' resolves to an address that is not public",
        ),
    ],
)
def test_internal_webhooks_are_refused_without_an_allow_list(
    tmp_path: Path, webhook: str, reason: str
) -> None:
    env = {
        "CSATDIST_DATABASE_URL": f"sqlite:///{tmp_path / 'csat.db'}",
        "CSATDIST_SECRET_KEY_FILE": str(tmp_path / "server.key"),
        "CSATDIST_WEBHOOK_ALLOW": "",
    }
    result = create(env, "ssrf", "--timeframe", "60", "--below", "0.5", "--webhook", webhook)
    assert result.returncode == 2
    assert f"--webhook: {reason}" in " ".join(result.stderr.split())
    assert not (tmp_path / "server.key").exists()  # nothing to seal, no key made


# -- alerts test ----------------------------------------------------------------------------------


def test_a_test_delivery_is_signed_and_its_failure_exits_1(
    env: dict[str, str], receiver: Receiver
) -> None:
    created = cli_json(
        env,
        *("alerts", "create", "--account", "acme", "--name", "t", "--timeframe", "60"),
        *("--below", "0.5", "--skills", "12", "--webhook", receiver.url(), "--format", "slack"),
    )
    sent = cli(env, "alerts", "test", "--account", "acme", "--name", "t")
    assert sent.returncode == 0, sent.stderr
    (delivery,) = receiver.received()
    assert re.fullmatch(
        rf"test delivery {delivery.id}: the receiver answered 200 in \d+ ms\n", sent.stdout
    )
    assert verify(created["secret"], delivery.body, delivery.signature)
    assert 'CSAT alert "t" test for account acme' in delivery.json()["text"]

    receiver.status = 500
    failed = cli(env, "alerts", "test", "--account", "acme", "--name", "t", "--json")
    assert failed.returncode == 1
    result = orjson.loads(failed.stdout)
    assert (result["ok"], result["status"], result["error"]) == (
        False,
        500,
        "the receiver answered 500",
    )
    assert result["delivery"] == receiver.received()[1].id
    human = cli(env, "alerts", "test", "--account", "acme", "--name", "t")
    assert human.returncode == 1
    assert "test delivery failed: the receiver answered 500" in human.stderr

    missing = cli(env, "alerts", "test", "--account", "acme", "--name", "nope")
    assert missing.returncode == 1
    assert "no alert rule named 'nope'" in missing.stderr


# -- the deliveries log of a real server, received by the documented receiver ---------------------


def documented_receiver() -> str:
    """The Python block of docs/alerts.md marked as tested, unchanged."""
    text = DOC.read_text()
    found = re.search(r"<!-- tested: tests/test_cli_alerts.py -->\n```python\n(.*?)```", text, re.S)
    assert found is not None, "docs/alerts.md lost its tested receiver block"
    return found.group(1)


def test_the_documented_receiver_is_about_ten_lines_of_standard_library() -> None:
    code = [line for line in documented_receiver().splitlines() if line.strip()]
    assert len(code) <= 13
    imports = {word for line in code if "import" in line for word in re.findall(r"\w+", line)}
    assert imports <= {"import", "from", "hashlib", "hmac", "os", "http", "server"} | {
        "BaseHTTPRequestHandler",
        "HTTPServer",
    }


def read_line(process: subprocess.Popen[str], seconds: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    assert ready, "the receiver printed nothing"
    return process.stdout.readline()


def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    def listening() -> bool:
        assert process.poll() is None, "the documented receiver exited"
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 15, "the documented receiver to listen")


@pytest.mark.slow
def test_a_real_delivery_is_logged_and_verified_by_the_documented_receiver(
    tmp_path: Path, env: dict[str, str]
) -> None:
    port = free_port()
    env = {**env, "CSATDIST_WEBHOOK_ALLOW": f"http://127.0.0.1:{port}/"}
    created = cli_json(
        env,
        *("alerts", "create", "--account", "acme", "--name", "low", "--timeframe", "60"),
        *("--below", "0.7", "--webhook", f"http://127.0.0.1:{port}/csat"),
    )
    script = tmp_path / "receiver.py"
    script.write_text(documented_receiver())
    hook = subprocess.Popen(
        [sys.executable, str(script)],
        env={"ALERT_SECRET": created["secret"], "PORT": str(port), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    server = None
    try:
        wait_listening(port, hook)
        # Forged or unsigned: refused, and nothing is printed.
        forged = httpx.post(
            f"http://127.0.0.1:{port}/csat",
            content=b'{"state": "firing"}',
            headers={"X-CSAT-Signature": "sha256=" + "0" * 64},
        )
        assert forged.status_code == 401
        assert httpx.post(f"http://127.0.0.1:{port}/csat", content=b"{}").status_code == 401

        database = env["CSATDIST_DATABASE_URL"]
        token = create_key(database, "acme", "read")
        server = start_server(
            database,
            tmp_path / "server.log",
            "--log-level",
            "warning",
            env={**env, "CSATDIST_ALERT_CHECK_SECONDS": "0.2"},
        )
        answers = tmp_path / "answers.ndjson"
        now = int(time.time() * 1000)
        answers.write_text(orjson.dumps({"id": "a1", "time": now, "score": 2}).decode() + "\n")
        ingested = cli(env, "ingest", str(answers), "--account", "acme")
        assert ingested.returncode == 0, ingested.stderr

        delivery_id, body = read_line(hook, 30).rstrip("\n").split(" ", 1)
        document = orjson.loads(body)
        assert (document["alert"], document["account"], document["state"]) == (
            "low",
            "acme",
            "firing",
        )
        assert document["metrics"]["total_answers"] == 1

        def log() -> Any:
            reply = httpx.get(
                f"{server.url}{ALERTS}/low/deliveries", headers=bearer(token), timeout=10
            )
            assert reply.status_code == 200, reply.text
            return reply.json()

        wait_until(lambda: log()["deliveries"][0]["outcome"] == "delivered", 15, "the log")
        from_cli = cli_json(env, "alerts", "deliveries", "--account", "acme", "--name", "low")
        assert from_cli == log()
        (entry,) = from_cli["deliveries"]
        assert entry["id"] == delivery_id
        assert [a["status"] for a in entry["attempts"]] == [204]
        writer = bearer(create_key(database, "acme", "read,write"))  # sees the whole webhook
        listed = httpx.get(f"{server.url}{ALERTS}", headers=writer, timeout=10).json()
        assert cli_json(env, "alerts", "list", "--account", "acme") == listed
        assert listed["alerts"][0]["state"] == "firing"

        table = cli(env, "alerts", "deliveries", "--account", "acme", "--name", "low")
        header, row = table.stdout.splitlines()
        assert header.split("\t") == [
            *("delivery", "state", "created", "outcome", "attempt", "at", "status", "ms"),
            "error",
        ]
        cells = row.split("\t")
        assert (cells[0], cells[1], cells[3], cells[4], cells[6]) == (
            delivery_id,
            "firing",
            "delivered",
            "1",
            "204",
        )
    finally:
        if server is not None:
            server.stop()
        hook.kill()
        hook.wait(10)
        assert hook.stdout is not None
        hook.stdout.close()


# -- directory ------------------------------------------------------------------------------------


def test_directory_import_and_show(env: dict[str, str], tmp_path: Path) -> None:
    names = tmp_path / "names.csv"
    names.write_text(
        "kind,id,name\n"
        "skill,12,Billing\n"
        'agent,1015,"Lima, Ana"\n'
        "skill,13,Sales\n"
        "\n"
        "Agent, -1 , Nobody \n"
        "skill,13,Sales and Renewals\n"  # the last row of an id wins
    )
    imported = cli(env, "directory", "import", str(names), "--account", "acme")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == (
        "account acme: named 2 skills and 2 agents, removed 0 names (5 rows of "
        + str(names)
        + ")\n"
    )
    removal = tmp_path / "removal.csv"
    removal.write_text("name,id,kind\n,12,skill\n")  # columns in any order; empty: removed
    summary = cli_json(env, "directory", "import", str(removal), "--account", "acme")
    assert summary == {
        "account": "acme",
        "rows": 1,
        "named": {"skills": 0, "agents": 0},
        "removed": 1,
    }

    shown = cli_json(env, "directory", "show", "--account", "acme")
    assert shown == {
        "skills": {"13": "Sales and Renewals"},
        "agents": {"-1": "Nobody", "1015": "Lima, Ana"},
    }
    with http_app(env) as (client, _, key):
        assert client.get("/api/account/acme/directory", headers=key).json() == shown
    table = cli(env, "directory", "show", "--account", "acme")
    assert table.stdout.splitlines() == [
        "kind\tid\tname",
        "skill\t13\tSales and Renewals",
        "agent\t-1\tNobody",
        "agent\t1015\tLima, Ana",
    ]


def test_directory_import_names_the_line_and_column_of_bad_rows(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "kind,id,name\n"
        "skill,12,Billing\n"
        "team,1,Ops\n"
        "skill,012,Billing\n"
        "agent,5,Lima, Ana\n"
        'agent,7,"two\nlines"\n'
        f"agent,8,{'x' * 201}\n"
        "skill,99999999999999999999,Huge\n"
        "agent,9\n"
    )
    result = cli(env, "directory", "import", str(bad), "--account", "acme")
    assert result.returncode == 2
    problems = [line.removeprefix("error: ") for line in result.stderr.splitlines()]
    assert problems == [
        f"{bad} line 3, column 1 (kind): must be skill or agent, got 'team'",
        f"{bad} line 4, column 2 (id): must be a whole number within int64 written plainly "
        "(12, -1; no leading zeros or '+'), got '012'",
        f"{bad} line 5: 4 fields, the header has 3 (a name with a comma goes in double quotes)",
        f"{bad} line 6, column 3 (name): must not contain control characters (line breaks, "
        "tabs ...)",
        f"{bad} line 8, column 3 (name): must have at most 200 characters, got 201",
        f"{bad} line 9, column 2 (id): must be a whole number within int64 written plainly "
        "(12, -1; no leading zeros or '+'), got '99999999999999999999'",
        f"{bad} line 10: 2 fields, the header has 3",
        "nothing was imported",
    ]
    assert cli_json(env, "directory", "show", "--account", "acme") == {"skills": {}, "agents": {}}

    headless = tmp_path / "headless.csv"
    headless.write_text("skill,12,Billing\n")
    refused = cli(env, "directory", "import", str(headless), "--account", "acme")
    assert refused.returncode == 2
    assert "line 1: the header lacks kind, id, name" in refused.stderr


def test_directory_import_writes_more_than_one_puts_worth_in_batches(
    env: dict[str, str], tmp_path: Path
) -> None:
    count = 25_001  # more than one PUT may carry (10,000): three batches
    names = tmp_path / "agents.csv"
    names.write_text("kind,id,name\n" + "".join(f"agent,{i},Agent {i}\n" for i in range(count)))
    summary = cli_json(env, "directory", "import", str(names), "--account", "acme")
    assert summary["named"] == {"skills": 0, "agents": count}
    shown = cli_json(env, "directory", "show", "--account", "acme")
    assert len(shown["agents"]) == count
    assert shown["agents"]["25000"] == "Agent 25000"
