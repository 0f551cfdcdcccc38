"""The command line, run as real processes against a real SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from fastapi.testclient import TestClient

from csatdist.http import create_app
from csatdist.store.sqlite import SQLiteStore
from tests.conftest import make_settings
from tests.helpers import LATEST_SCHEMA, bearer, create_key, csatdist_cli


def now_ms() -> int:
    return int(time.time() * 1000)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    created = csatdist_cli(
        "keys",
        "create",
        "--account",
        "acme",
        "--scopes",
        "read,write",
        "--label",
        "wallboard",
        "--json",
        "--database",
        db,
    )
    assert created.returncode == 0, created.stderr
    key = orjson.loads(created.stdout)
    assert key["token"].startswith("csd_")
    assert key["scopes"] == ["read", "write"]

    listed = orjson.loads(csatdist_cli("keys", "list", "--json", "--database", db).stdout)
    assert [k["key_id"] for k in listed] == [key["key_id"]]
    assert "token" not in listed[0]
    assert key["token"].split("_", 2)[2] not in (tmp_path / "k.db").read_bytes().decode("latin-1")

    revoked = csatdist_cli("keys", "revoke", key["key_id"], "--json", "--database", db)
    assert orjson.loads(revoked.stdout)["revoked_ms"] is not None
    missing = csatdist_cli("keys", "revoke", "nope", "--database", db)
    assert missing.returncode == 1
    assert "no key with id" in missing.stderr


def test_keys_create_rejects_bad_input(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    bad_scope = csatdist_cli(
        "keys", "create", "--account", "acme", "--scopes", "admin", "--database", db
    )
    assert bad_scope.returncode == 2
    assert "--scopes" in bad_scope.stderr
    bad_account = csatdist_cli("keys", "create", "--account", "a b", "--database", db)
    assert bad_account.returncode == 2


def test_env_var_selects_the_database(tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    result = csatdist_cli(
        "keys",
        "create",
        "--account",
        "acme",
        "--json",
        env={"CSATDIST_DATABASE_URL": f"sqlite:///{db}"},
    )
    assert result.returncode == 0, result.stderr
    assert db.exists()


def test_ingest_ndjson_and_csv_then_query_json_equals_http_body(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    t = now_ms() - 60_000
    ndjson = tmp_path / "a.ndjson"
    ndjson.write_bytes(
        b"\n".join(
            [
                orjson.dumps({"id": "n1", "time": t, "skillId": 1, "agentId": 10, "score": 5}),
                orjson.dumps({"id": "n2", "time": t, "skillId": 2, "agentId": 10, "score": 2}),
                b"{broken",
                orjson.dumps({"id": "n3", "time": t, "skillId": 2, "agentId": 11, "score": 9}),
            ]
        )
    )
    result = csatdist_cli(
        "ingest", str(ndjson), "--account", "acme", "--json", "--database", str(db)
    )
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    assert (summary["accepted"], summary["duplicates"]) == (2, 0)
    assert [r["index"] for r in summary["rejected"]] == [2, 3]

    csv_file = tmp_path / "b.csv"
    csv_file.write_text(f"id,time,skillId,agentId,score\nn1,{t},1,10,5\nc1,{t},,12,4\n")
    summary = orjson.loads(
        csatdist_cli(
            "ingest", str(csv_file), "--account", "acme", "--json", "--database", str(db)
        ).stdout
    )
    assert (summary["accepted"], summary["duplicates"]) == (1, 1)

    table = csatdist_cli(
        "query", "--account", "acme", "--timeframe", "60", "--skills", "all", "--database", str(db)
    )
    assert table.returncode == 0, table.stderr
    assert "skill (unassigned)" in table.stdout

    cli_body = orjson.loads(
        csatdist_cli(
            "query",
            "--account",
            "acme",
            "--timeframe",
            "60",
            "--skills",
            "all",
            "--agents",
            "all",
            "--json",
            "--database",
            str(db),
        ).stdout
    )
    token = create_key(db, "acme", "read")
    store = SQLiteStore(db)
    try:
        with TestClient(create_app(make_settings(), store=store)) as client:
            http_body = client.get(
                "/operations/api/account/acme/msgcsatdistribution",
                params={"v": 1, "timeframe": 60, "skillIds": "all", "agentIds": "all"},
                headers=bearer(token),
            ).json()
    finally:
        store.close()
    assert cli_body == http_body
    assert cli_body["agentsMetrics"]["metricsTotals"]["total_answers"] == 3


def test_query_reports_bad_parameters(tmp_path: Path) -> None:
    result = csatdist_cli(
        "query", "--account", "acme", "--timeframe", "0", "--database", str(tmp_path / "q.db")
    )
    assert result.returncode == 2
    assert "timeframe" in result.stderr


def test_migrate_reports_the_schema_version(tmp_path: Path) -> None:
    result = csatdist_cli("migrate", "--json", "--database", str(tmp_path / "m.db"))
    assert orjson.loads(result.stdout) == {"schema_version": LATEST_SCHEMA}


def test_unsupported_database_url_is_a_clear_error(tmp_path: Path) -> None:
    result = csatdist_cli("migrate", "--database", "mysql://localhost/x")
    assert result.returncode == 2
    assert "unsupported database URL scheme 'mysql'" in result.stderr


def test_keys_create_oauth1_seals_secrets_with_a_private_key_file(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    key_file = tmp_path / "sealing.key"
    result = csatdist_cli(
        "keys",
        "create",
        "--account",
        "56072331",
        "--oauth1",
        "--json",
        "--database",
        str(db),
        env={"CSATDIST_SECRET_KEY_FILE": str(key_file)},
    )
    assert result.returncode == 0, result.stderr
    created = orjson.loads(result.stdout)
    assert created["kind"] == "oauth1"
    assert created["key_id"] == created["consumer_key"]
    assert {"consumer_secret", "token", "token_secret"} <= set(created)
    assert key_file.stat().st_mode & 0o777 == 0o600
    wal = tmp_path / "o.db-wal"
    stored = db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert created["consumer_secret"].encode() not in stored
    assert created["token_secret"].encode() not in stored
    listed = orjson.loads(csatdist_cli("keys", "list", "--json", "--database", str(db)).stdout)
    assert listed[0]["kind"] == "oauth1"
    assert "consumer_secret" not in listed[0]


def test_a_wrong_sealing_key_is_a_clear_error(tmp_path: Path) -> None:
    result = csatdist_cli(
        "keys",
        "create",
        "--account",
        "a",
        "--oauth1",
        "--database",
        str(tmp_path / "x.db"),
        env={"CSATDIST_SECRET_KEY": "not-a-fernet-key"},
    )
    assert result.returncode == 2
    assert "32 url-safe base64-encoded bytes" in result.stderr
