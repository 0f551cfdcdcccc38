"""The command line, run as real processes against a real SQLite file."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
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
    assert result.returncode == 1, result.stderr  # two answers rejected
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
    lines = [line.split("\t") for line in table.stdout.splitlines()]
    assert lines[0] == [
        "table", "interval end", "skill", "agent", "1", "2", "3", "4", "5", "total", "positive",
        "CSAT",
    ]  # fmt: skip
    assert ["per skill", "", "-1", "12", "0", "0", "0", "1", "0", "1", "1", "100.0%"] in lines
    assert lines[-1] == ["per skill", "", "", "", "0", "1", "0", "1", "1", "3", "2", "66.7%"]
    assert table.stderr.startswith("account acme, window ")

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


# --- ingest: CSV columns and exit status -----------------------------------------------------


def ingest(path: Path, db: Path, *extra: str) -> Any:
    return csatdist_cli("ingest", str(path), "--account", "acme", "--database", str(db), *extra)


def test_ingest_exits_1_when_answers_were_rejected_unless_partial_loads_are_allowed(
    tmp_path: Path,
) -> None:
    db, t = tmp_path / "i.db", now_ms() - 60_000
    good = tmp_path / "good.ndjson"
    good.write_bytes(orjson.dumps({"id": "g1", "time": t, "score": 5}) + b"\n")
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(
        orjson.dumps({"id": "m1", "time": t, "score": 4})
        + b"\n"
        + orjson.dumps({"id": "m2", "time": t, "score": 7})
    )
    loaded = ingest(good, db)
    assert (loaded.returncode, loaded.stdout) == (
        0,
        "accepted 1, updated 0, duplicates 0, rejected 0\n",
    )
    assert ingest(good, db).returncode == 0  # duplicates are not failures

    partial = ingest(mixed, db)
    assert partial.returncode == 1
    assert partial.stdout == (
        "accepted 1, updated 0, duplicates 0, rejected 1\n  #1 m2: score must be an integer "
        "from 1 to 5, "
        "got 7\n"
    )
    allowed = ingest(mixed, db, "--allow-partial", "--json")
    assert allowed.returncode == 0
    assert orjson.loads(allowed.stdout)["duplicates"] == 1
    assert len(orjson.loads(allowed.stdout)["rejected"]) == 1


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        (None, "columns id, time, score"),  # the first line is an answer, not a header
        ("id,time,skillId,agentId", "column score"),
        ("ID,Time,skillId,agentId,score", "columns id, time"),
    ],
)
def test_a_csv_without_its_header_or_a_required_column_is_refused_at_once(
    tmp_path: Path, header: str | None, missing: str
) -> None:
    db, t = tmp_path / "c.db", now_ms() - 60_000
    body = f"a1,{t},1,10,5\na2,{t},1,10,4\n"
    path = tmp_path / "answers.csv"
    path.write_text(body if header is None else f"{header}\n{body}")
    first_line = (header or f"a1,{t},1,10,5").strip()
    result = ingest(path, db)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}: the CSV header row lacks the {missing} (the first line reads "
        f"'{first_line}'); the first line must name the columns, e.g. "
        "id,time,skillId,agentId,score (skillId and agentId may be left out)\n"
    )
    assert not db.exists()  # refused before the store was even opened


def test_csv_optional_and_unknown_columns(tmp_path: Path) -> None:
    db, t = tmp_path / "c.db", now_ms() - 60_000
    path = tmp_path / "answers.csv"
    path.write_text(f"score,id,time,note\n5,a1,{t},great\n4,a2,{t},\n")
    result = ingest(path, db, "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["accepted"] == 2
    assert result.stderr == f"{path}: ignoring the column note\n"
    body = orjson.loads(
        csatdist_cli(
            "query", "--account", "acme", "--timeframe", "60", "--skills", "all", "--agents",
            "all", "--json", "--database", str(db),
        ).stdout
    )  # fmt: skip
    assert list(body["agentsMetrics"]["metricsPerAgent"]) == ["-1"]  # no column: unassigned


def test_ingest_help_documents_the_csv_columns_and_the_exit_status() -> None:
    result = csatdist_cli("ingest", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "header row naming its columns: id,time,skillId,agentId,score" in text
    assert "skillId and agentId are optional, and an empty cell (or no such column) means" in text
    assert "conversationId,comment,channel,updatedAt,skillName,agentName, in any order" in text
    assert "leaves the field absent" in text
    assert "Exits 1 when any answer was rejected" in text
    assert "--allow-partial" in text


# --- tables: complete in a pipe and on a terminal --------------------------------------------


LONG_LABEL = "wallboard on the third floor, near the coffee machine, for team blue"


def keys_db(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    db = tmp_path / "k.db"
    for account in ("56072331", "an-account-with-a-rather-long-identifier_0123456789"):
        created = csatdist_cli(
            "keys", "create", "--account", account, "--scopes", "read,write", "--label",
            LONG_LABEL, "--database", str(db),
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
    listed = orjson.loads(csatdist_cli("keys", "list", "--json", "--database", str(db)).stdout)
    return db, listed


def test_keys_list_in_a_pipe_prints_complete_tab_separated_rows(tmp_path: Path) -> None:
    db, keys = keys_db(tmp_path)
    result = csatdist_cli("keys", "list", "--database", str(db), env={"COLUMNS": "80"})
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0] == ["key id", "kind", "account", "scopes", "label", "created", "revoked"]
    assert [(r[0], r[2], r[4]) for r in rows[1:]] == [
        (k["key_id"], k["account"], LONG_LABEL) for k in keys
    ]
    assert all(len(row) == 7 for row in rows)


def run_in_terminal(*args: str, columns: int = 80) -> str:
    """The CLI's output on a terminal of ``columns`` (a pseudo-terminal), without colours."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "csatdist", *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env={**env, "NO_COLOR": "1", "TERM": "xterm"},
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert process.wait(timeout=60) == 0, output.decode()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode()).replace("\r", "")


def test_keys_list_on_an_80_column_terminal_keeps_ids_whole_and_cuts_nothing(
    tmp_path: Path,
) -> None:
    db, keys = keys_db(tmp_path)
    screen = run_in_terminal("keys", "list", "--database", str(db))
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in screen
    for key in keys:
        assert any(line.startswith(key["key_id"] + " ") for line in lines)  # whole, one line
    # The folded accounts and labels read back whole from their columns, top to bottom.
    headers = ["key id", "kind", "account", "scopes", "label", "created", "revoked"]
    columns = read_columns(screen, headers)
    assert columns["account"] == "".join(k["account"] for k in keys)
    assert columns["label"] == LONG_LABEL.replace(" ", "") * len(keys)


def read_columns(screen: str, headers: list[str]) -> dict[str, str]:
    """Each column of a table on the screen, top to bottom, without whitespace (folding only
    breaks lines, so this is the column's values run together)."""
    lines = screen.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith(headers[0]))
    starts = [lines[top].index(header) for header in headers] + [None]
    return {
        header: "".join(
            "".join(line[starts[k] : starts[k + 1]].split()) for line in lines[top + 2 :]
        )
        for k, header in enumerate(headers)
    }


def test_settings_never_cut_in_a_pipe_or_on_a_terminal() -> None:
    from csatdist.settings import Settings

    piped = csatdist_cli("settings", env={"COLUMNS": "80"})
    rows = [line.split("\t") for line in piped.stdout.splitlines()]
    assert rows[0] == ["environment variable", "default", "meaning"]
    expected = {f"CSATDIST_{n.upper()}": f.description for n, f in Settings.model_fields.items()}
    assert {row[0]: row[2] for row in rows[1:]} == expected

    screen = run_in_terminal("settings")
    assert "…" not in screen
    assert max(len(line) for line in screen.splitlines()) <= 80
    for name in expected:
        assert any(line.startswith(name + " ") for line in screen.splitlines()), name
    meanings = read_columns(screen, ["environment variable", "default", "meaning"])["meaning"]
    assert meanings == "".join("".join((text or "").split()) for text in expected.values())


def test_column_widths_fit_the_room_and_keep_ids_whole() -> None:
    from csatdist.cli import column_widths

    assert column_widths([16, 6, 8], [16, 6, 8], [True, False, False], 40) == [16, 6, 8]
    widths = column_widths([32, 6, 60, 20], [32, 6, 9, 10], [True, False, False, False], 62)
    assert widths[0] == 32
    assert sum(widths) <= 62
    assert widths[1] == 6  # words (a kind, a date) are not split
    assert widths[3] >= 10
    tiny = column_widths([32, 6, 60, 20], [32, 6, 9, 10], [True, False, False, False], 20)
    assert sum(tiny) <= 20  # too narrow for whole ids: everything folds
    assert min(tiny) >= 1
