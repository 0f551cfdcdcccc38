"""Drop-in compatibility: requests sent the way existing LivePerson clients send them."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from csatdist.http import create_app
from csatdist.store import Store
from tests.conftest import add_key, make_settings
from tests.helpers import bearer, create_key, free_port, live_server

QUERY = "/operations/api/account/{}/msgcsatdistribution"


@pytest.fixture
def server(store: Store) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    read = bearer(add_key(store, "56072331", "read"))
    write = bearer(add_key(store, "56072331", "write"))
    now = int(time.time() * 1000)
    answers = [
        {"id": "a", "time": now - 60_000, "skillId": 4, "agentId": 1001, "score": 5},
        {"id": "b", "time": now - 60_000, "skillId": 4, "agentId": 1002, "score": 2},
        {"id": "c", "time": now - 60_000, "skillId": None, "agentId": 1001, "score": 4},
        {"id": "d", "time": now - 60_000, "skillId": 15, "agentId": None, "score": 5},
    ]
    with live_server(create_app(make_settings(), store=store)) as url:
        response = requests.post(
            url + "/api/account/56072331/csat/answers",
            json={"answers": answers},
            headers=write,
            timeout=10,
        )
        assert response.json()["accepted"] == 4
        yield url, read, write


def test_requests_params_encoding_and_none_dropping(server: Any) -> None:
    url, read, _ = server
    params = {"timeframe": 60, "v": 1, "skillIds": ",".join(["4", "15"]), "agentIds": None}
    response = requests.get(url + QUERY.format("56072331"), params=params, headers=read, timeout=10)
    assert "%2C" in response.request.url  # type: ignore[operator]
    assert response.status_code == 200
    assert set(response.json()["skillsMetricsPerAgent"]["metricsPerSkill"]) == {"4", "15"}


def test_json_content_type_on_a_bodyless_get(server: Any) -> None:
    url, read, _ = server
    headers = {**read, "Content-Type": "application/json", "Accept": "application/json"}
    response = requests.get(
        url + QUERY.format("56072331") + "?timeframe=60&v=1", headers=headers, timeout=10
    )
    assert response.status_code == 200


def test_unknown_extra_parameters_are_ignored(server: Any) -> None:
    url, read, _ = server
    params = {"timeframe": 60, "v": 1, "company": "acme", "source": "ccuiDashboard"}
    response = requests.get(url + QUERY.format("56072331"), params=params, headers=read, timeout=10)
    assert response.json()["metricsTotals"]["total_answers"] == 4


def test_post_with_nulls_like_older_clients(server: Any) -> None:
    url, read, _ = server
    body = {"timeframe": 60, "v": 1, "skillIds": None, "agentIds": "1001,1002", "interval": None}
    response = requests.post(url + QUERY.format("56072331"), json=body, headers=read, timeout=10)
    assert response.status_code == 200
    assert set(response.json()["agentsMetrics"]["metricsPerAgent"]) == {"1001", "1002"}


def test_node_style_hand_built_query_with_raw_commas(server: Any) -> None:
    url, read, _ = server
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    path = QUERY.format("56072331") + "?timeframe=60&skillIds=4,15&agentIds=1001,1002&v=1"
    connection.request("GET", path, headers={**read, "Content-Type": "application/json"})
    reply = connection.getresponse()
    assert reply.status == 200
    body = json.loads(reply.read())
    connection.close()
    assert body["agentsMetrics"]["metricsTotals"]["total_answers"] == 2


def test_walk_the_reply_like_the_sample_dashboard(server: Any) -> None:
    """The traversal LivePerson's own sample dashboard does, and what it would render."""
    url, read, _ = server
    params = {"timeframe": 60, "v": 1, "skillIds": "all", "agentIds": "all"}
    data = requests.get(
        url + QUERY.format("56072331"), params=params, headers=read, timeout=10
    ).json()
    rows: list[tuple[str, str, str]] = []
    totals = data["skillsMetricsPerAgent"]["metricsTotals"]
    rows.append(("Total", "", f"{totals['csat_score'] * 100:.0f}%"))
    for agent_id, metrics in data["agentsMetrics"]["metricsPerAgent"].items():
        rows.append(("Agent", agent_id, f"{metrics['csat_score'] * 100:.0f}%"))
    assert data["agentsMetrics"]["metricsTotals"]["total_answers"] == 4
    for skill_id, skill in data["skillsMetricsPerAgent"]["metricsPerSkill"].items():
        name = "Unassigned" if skill_id == "-1" else f"Skill {skill_id}"
        rows.append((name, "", f"{skill['metricsTotals']['csat_score'] * 100:.0f}%"))
        for agent_id, metrics in skill["metricsPerAgent"].items():
            assert 0 <= metrics["csat_score"] * 100 <= 100
            rows.append((name, agent_id, str(metrics["total_answers"])))
    assert ("Total", "", "75%") in rows
    assert ("Unassigned", "", "100%") in rows
    assert ("Skill 4", "", "50%") in rows
    assert ("Skill 15", "-1", "1") in rows
    assert ("Agent", "1001", "100%") in rows


@pytest.mark.parametrize("service", ["leDataReporting", "agentVep", "msgEwtAPI", "anyThing"])
def test_domain_lookup(server: Any, service: str) -> None:
    url, _, _ = server
    response = requests.get(
        f"{url}/api/account/56072331/service/{service}/baseURI.json",
        params={"version": "1.0"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json() == {
        "service": service,
        "account": "56072331",
        "baseURI": url.removeprefix("http://"),
    }


def test_domain_lookup_of_every_service(server: Any) -> None:
    url, _, _ = server
    body = requests.get(
        f"{url}/api/account/56072331/service/baseURI.json?version=1.0", timeout=10
    ).json()
    assert {
        "service": "leDataReporting",
        "account": "56072331",
        "baseURI": url.removeprefix("http://"),
    } in body["baseURIs"]


def test_domain_lookup_uses_the_external_url(store: Store) -> None:
    app = create_app(make_settings(external_url="https://csat.example.com:8443"), store=store)
    with live_server(app) as url:
        body = requests.get(
            f"{url}/api/account/56072331/service/leDataReporting/baseURI.json?version=1.0",
            timeout=10,
        ).json()
    assert body["baseURI"] == "csat.example.com:8443"


def test_domain_lookup_refuses_malformed_accounts(server: Any) -> None:
    url, _, _ = server
    response = requests.get(f"{url}/api/account/bad.id/service/agentVep/baseURI.json", timeout=10)
    assert response.status_code == 401


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])  # 2: each connection handed to a worker
def test_tls_serve(tmp_path: Path, workers: str) -> None:
    import subprocess
    import sys

    cert, key = self_signed(tmp_path)
    db = tmp_path / "tls.db"
    token = create_key(db, "56072331", "read")
    port = free_port()
    log = (tmp_path / "tls.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "csatdist",
            "serve",
            "--database",
            str(db),
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--workers",
            workers,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        url = f"https://localhost:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/healthz", verify=str(cert), timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "tls.log").read_text()
                time.sleep(0.1)
        response = requests.get(
            url + QUERY.format("56072331"),
            params={"v": 1, "timeframe": 5},
            headers=bearer(token),
            verify=str(cert),
            timeout=10,
        )
        assert response.status_code == 200
        # A large upload refused before its body is read: over TLS there is no half-close,
        # but the lingering close still lets the client read its 401.
        refused = requests.post(
            url + "/api/account/56072331/csat/answers",
            data=b"x\n" * 10_000_000,
            headers=bearer("not-a-key"),
            verify=str(cert),
            timeout=20,
        )
        assert refused.status_code == 401
        assert refused.headers["connection"] == "close"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + "/healthz", timeout=5)  # not trusted without the certificate
    finally:
        process.terminate()
        # An aborted TLS handshake keeps a connection open until the graceful shutdown timeout.
        process.wait(timeout=30)


def test_tls_flags_go_together(tmp_path: Path) -> None:
    from tests.helpers import csatdist_cli

    cert, _ = self_signed(tmp_path)
    result = csatdist_cli("serve", "--database", str(tmp_path / "x.db"), "--tls-cert", str(cert))
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr
