"""`csatdist answers list|export|erase` and the record fields of `csatdist ingest`, run as real
processes against a real SQLite file (and PostgreSQL where the store matters)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.js.errors
import orjson
import pytest
from fastapi.testclient import TestClient

from csatdist.http import create_app
from csatdist.store.sqlite import SQLiteStore
from tests.conftest import make_settings
from tests.helpers import bearer, create_key, csatdist_cli, start_server
from tests.test_cli import read_columns, run_in_terminal

ACCOUNT = "acme"
#: The columns of `answers list` in a pipe; a terminal's table has all but the id.
LISTING_HEADERS = ("id", "time", "conversation", "skill", "agent", "score", "comment")


def now_ms() -> int:
    return int(time.time() * 1000)


def rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def when(ms: int) -> str:
    """A time as tables show it."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cli(database: Path | str, *args: str, stdin: str | None = None) -> Any:
    return csatdist_cli(*args, "--database", str(database), stdin=stdin)


def answers(database: Path | str, command: str, *args: str, stdin: str | None = None) -> Any:
    return cli(database, "answers", command, "--account", ACCOUNT, *args, stdin=stdin)


def ingest_file(database: Path | str, path: Path, *extra: str) -> Any:
    return cli(database, "ingest", str(path), "--account", ACCOUNT, *extra)


def ingest_ndjson(database: Path | str, records: list[dict[str, object]]) -> None:
    body = b"\n".join(orjson.dumps(r) for r in records).decode()
    result = cli(database, "ingest", "-", "--account", ACCOUNT, "--json", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert orjson.loads(result.stdout)["accepted"] == len(records)


def export_csv(database: Path | str, *filters: str) -> list[dict[str, str]]:
    result = answers(database, "export", "--timeframe", "1440", *filters)
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout, newline="")))


def total_answers(database: Path | str) -> int:
    result = cli(database, "query", "--account", ACCOUNT, "--timeframe", "1440", "--json")
    assert result.returncode == 0, result.stderr
    total: int = orjson.loads(result.stdout)["metricsTotals"]["total_answers"]
    return total


# --- ingest: the record fields in CSV, round-tripped through an export ----------------------

#: Every column, with the texts a CSV writer must quote: commas, quotes, a line break, accents.
FULL_HEADER = (
    "id,time,skillId,agentId,score,conversationId,comment,channel,updatedAt,skillName,agentName"
)


def full_rows(t: int) -> list[dict[str, str]]:
    """Two answers with every field, and one with only the required ones (the others empty)."""
    return [
        {
            "id": "r1",
            "time": rfc3339(t),
            "skillId": "4",
            "agentId": "17",
            "score": "5",
            "conversationId": "conv-0001",
            "comment": 'Quick, kind and "spot on".\nThank you, Zoë!',
            "channel": "web",
            "updatedAt": rfc3339(t + 1500),
            "skillName": "Billing, EU",
            "agentName": "Ann Lee",
        },
        {
            "id": "r2",
            "time": rfc3339(t - 60_000),
            "skillId": "-1",
            "agentId": "18",
            "score": "2",
            "conversationId": "conv-0002",
            "comment": "too slow",
            "channel": "whatsapp",
            "updatedAt": rfc3339(t - 60_000),
            "skillName": "",
            "agentName": "Bob",
        },
        {
            "id": "r3",
            "time": rfc3339(t - 120_000),
            "skillId": "4",
            "agentId": "-1",
            "score": "3",
            "conversationId": "",
            "comment": "",
            "channel": "",
            "updatedAt": rfc3339(t - 120_000),  # an export writes time when none was given
            "skillName": "",
            "agentName": "",
        },
    ]


def write_csv(path: Path, rows: list[dict[str, str]], header: str = FULL_HEADER) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=header.split(","), lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v for k, v in row.items() if k in header.split(",")})
    path.write_text(buffer.getvalue(), newline="")


def test_a_csv_with_every_column_exports_back_the_same_values(
    database_url: str, tmp_path: Path
) -> None:
    t = now_ms() - 5 * 60_000
    rows = full_rows(t)
    source = tmp_path / "answers.csv"
    write_csv(source, [{**rows[2], "updatedAt": ""}, *rows[:2]])  # any row order
    loaded = ingest_file(database_url, source)
    assert (loaded.returncode, loaded.stdout) == (
        0,
        "accepted 3, updated 0, duplicates 0, rejected 0\n",
    )
    assert loaded.stderr == ""  # every column is known: none is "ignored"

    exported = answers(database_url, "export", "--timeframe", "60", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.splitlines()[0] == FULL_HEADER
    assert list(csv.DictReader(io.StringIO(exported.stdout, newline=""))) == rows  # newest first

    # The export itself loads back: the same ids, nothing changed.
    again = tmp_path / "again.csv"
    again.write_text(exported.stdout, newline="")
    reloaded = ingest_file(database_url, again)
    assert reloaded.stdout == "accepted 0, updated 0, duplicates 3, rejected 0\n"

    as_ndjson = answers(database_url, "export", "--timeframe", "60", "--format", "ndjson")
    records = [orjson.loads(line) for line in as_ndjson.stdout.splitlines()]
    assert records[0] == {
        "id": "r1",
        "time": t,
        "skillId": 4,
        "agentId": 17,
        "score": 5,
        "conversationId": "conv-0001",
        "comment": 'Quick, kind and "spot on".\nThank you, Zoë!',
        "channel": "web",
        "updatedAt": t + 1500,
        "skillName": "Billing, EU",
        "agentName": "Ann Lee",
    }
    assert records[2]["conversationId"] is None  # an empty cell is absent, not ""
    assert records[2]["comment"] is None


def test_a_later_updated_at_in_a_csv_corrects_the_record_and_moves_its_count(
    tmp_path: Path,
) -> None:
    db, t = tmp_path / "c.db", now_ms() - 5 * 60_000
    first = tmp_path / "first.csv"
    first.write_text(f"id,time,score,comment,updatedAt\nq1,{t},1,awful,{t}\n")
    assert ingest_file(db, first).returncode == 0
    correction = tmp_path / "correction.csv"
    correction.write_text(
        f"id,time,score,comment,updatedAt\nq1,{t},4,fine after all,{t + 60_000}\n"
        f"q1,{t},2,an older version,{t + 30_000}\n"  # within one file the latest wins
    )
    result = ingest_file(db, correction)
    assert (result.returncode, result.stdout) == (
        0,
        "accepted 0, updated 1, duplicates 1, rejected 0\n",
    )
    assert [(r["score"], r["comment"]) for r in export_csv(db)] == [("4", "fine after all")]
    body = orjson.loads(
        cli(db, "query", "--account", ACCOUNT, "--timeframe", "60", "--json").stdout
    )
    totals = body["metricsTotals"]
    assert (totals["csat_score1_answers"], totals["csat_score4_answers"]) == (0, 1)
    assert "updated" in orjson.loads(ingest_file(db, correction, "--json").stdout)


def test_csv_record_fields_are_checked_like_json_ones(tmp_path: Path) -> None:
    db, t = tmp_path / "c.db", now_ms() - 60_000
    path = tmp_path / "bad.csv"
    path.write_text(
        f"id,time,score,channel,updatedAt,agentName\n"
        f"b1,{t},5,{'x' * 65},,\n"
        f"b2,{t},5,,yesterday,\n"
        f"b3,{t},5,,,   \n"  # blank: absent, not an empty name
    )
    result = ingest_file(db, path)
    assert result.returncode == 1
    assert result.stdout == (
        "accepted 1, updated 0, duplicates 0, rejected 2\n"
        "  #0 b1: channel is longer than 64 characters (65)\n"
        "  #1 b2: updatedAt 'yesterday' is not RFC 3339 with an offset (e.g. "
        "2026-11-27T13:29:00Z)\n"
    )


# --- list: pages, a cursor, the table -------------------------------------------------------


def many(count: int, newest: int, *, prefix: str = "m") -> list[dict[str, object]]:
    """``count`` answers, three to a millisecond (ties are ordered by id), newest first."""
    return [
        {
            "id": f"{prefix}{i:05d}",
            "time": newest - (i // 3) * 7,
            "skillId": i % 4,
            "agentId": 10 + i % 6,
            "score": i % 5 + 1,
            "comment": f"comment {i}",
        }
        for i in range(count)
    ]


def test_list_pages_with_the_cursor_cover_every_record_once_while_answers_arrive(
    database_url: str,
) -> None:
    newest = now_ms() - 60_000
    ingest_ndjson(database_url, many(130, newest))
    seen: list[str] = []
    cursor: list[str] = []
    for page_number in range(10):
        result = answers(
            database_url, "list", "--timeframe", "60", "--limit", "50", "--json", *cursor
        )
        assert result.returncode == 0, result.stderr
        page = orjson.loads(result.stdout)
        seen += [record["id"] for record in page["answers"]]
        if page_number == 0:  # new answers arrive while the pages are read: none is ahead
            ingest_ndjson(database_url, many(20, now_ms(), prefix="late"))
        if page["next"] is None:
            break
        cursor = ["--cursor", page["next"]]
    assert seen == [f"m{i:05d}" for i in range(130)]  # newest first, then by id; once each
    assert page_number == 2


def test_list_prints_rows_in_a_pipe_and_the_next_cursor_on_stderr(tmp_path: Path) -> None:
    db, newest = tmp_path / "l.db", now_ms() - 60_000
    ingest_ndjson(
        db,
        [
            {"id": "p1", "time": newest, "skillId": 4, "agentId": 17, "score": 5,
             "conversationId": "c-1", "comment": "tabs\tand\nlines", "skillName": "Billing"},
            {"id": "p2", "time": newest - 1000, "skillId": None, "agentId": 18, "score": 1},
        ],
    )  # fmt: skip
    first = answers(db, "list", "--timeframe", "60", "--limit", "1")
    assert first.returncode == 0, first.stderr
    assert first.stdout == (
        "id\ttime\tconversation\tskill\tagent\tscore\tcomment\n"
        f"p1\t{when(newest)}\tc-1\t4 (Billing)\t17\t5\ttabs and lines\n"
    )
    lines = first.stderr.splitlines()
    assert lines[0].startswith("account acme, answers from ")
    assert lines[0].endswith(" (end exclusive)")
    assert lines[1].startswith("next page: --cursor ")
    cursor = lines[1].removeprefix("next page: --cursor ")
    second = answers(db, "list", "--timeframe", "60", "--limit", "1", "--cursor", cursor)
    assert second.stdout.splitlines()[1:] == [f"p2\t{when(newest - 1000)}\t\t-1\t18\t1\t"]
    assert second.stderr.count("\n") == 2  # a full page: there may be more
    last = answers(db, "list", "--timeframe", "60", "--limit", "5", "--scores", "1")
    assert len(last.stdout.splitlines()) == 2
    assert "next page" not in last.stderr


def test_list_json_is_the_http_listing_body(tmp_path: Path) -> None:
    db, newest = tmp_path / "j.db", now_ms() - 60_000
    ingest_ndjson(db, many(7, newest))
    start, end = rfc3339(newest - 3600_000), str(newest + 1)
    arguments = ["--from", start, "--to", end, "--skills", "0,1", "--scores", "1,2,3"]
    cli_body = orjson.loads(answers(db, "list", *arguments, "--limit", "2", "--json").stdout)
    token = create_key(db, ACCOUNT, "read")
    store = SQLiteStore(db)
    try:
        with TestClient(create_app(make_settings(), store=store)) as client:
            http_body = client.get(
                f"/api/account/{ACCOUNT}/csat/answers",
                params={"from": start, "to": end, "skillIds": "0,1", "scores": "1,2,3",
                        "limit": 2},
                headers=bearer(token),
            ).json()  # fmt: skip
    finally:
        store.close()
    assert cli_body == http_body
    assert [r["id"] for r in cli_body["answers"]] == ["m00000", "m00001"]


def test_a_long_comment_folds_on_a_terminal_and_nothing_is_cut(tmp_path: Path) -> None:
    db, newest = tmp_path / "t.db", now_ms() - 60_000
    comment = (
        "The agent was kind, but the answer took three transfers and forty minutes; "
        "I would like a call back about the refund of order 123456 before Friday."
    )
    ingest_ndjson(
        db,
        [{"id": "answer-000123", "time": newest, "skillId": 4, "agentId": 17,
          "score": 2, "conversationId": "c-42", "comment": comment, "skillName": "Billing"}],
    )  # fmt: skip
    screen = run_in_terminal(
        "answers", "list", "--account", ACCOUNT, "--timeframe", "60", "--database", str(db)
    )
    sentence, *lines = screen.splitlines()  # a sentence wraps where the terminal wraps it
    assert sentence.startswith("account acme, answers from ")
    assert max(len(line) for line in lines) <= 80
    assert "…" not in screen
    assert "answer-000123" not in screen  # the table is for reading; a pipe gives the ids
    columns = read_columns(screen, list(LISTING_HEADERS[1:]))
    assert columns["comment"] == "".join(comment.split())
    assert columns["skill"] == "4(Billing)"  # folded between its words
    assert columns["score"] == "2"
    header, _, first = lines[:3]
    assert header.split() == list(LISTING_HEADERS[1:])  # headers stay whole
    assert first.split()[:4] == [when(newest)[:10], "c-42", "4", "17"]
    assert len(lines) < 10  # the comment has the room: a few lines, not one word per line


def test_prose_columns_get_the_room_values_keep_their_words() -> None:
    from csatdist.cli import prose_widths

    # id, time, skill, comment: the values get their longest word, the comment the rest.
    natural, words = [6, 20, 11, 150], [6, 10, 9, 12]
    assert prose_widths(natural, words, [False, False, False, True], 62) == [6, 10, 9, 37]
    # Room to spare once the comment is whole: the others widen.
    assert prose_widths([6, 20, 11, 30], words, [False, False, False, True], 62) == [6, 15, 11, 30]
    # Not even 12 columns for the comment: None (everything folds alike).
    assert prose_widths([40, 20, 11, 150], [40, 10, 9, 12], [False] * 3 + [True], 62) is None
    assert prose_widths(natural, words, [False] * 4, 62) is None


# --- the filters' errors: HTTP's, word for word ----------------------------------------------

#: (the options, the same as HTTP query parameters, the message).
BAD_FILTERS = [
    (["--timeframe", "0"], {"timeframe": "0"}, "timeframe: must be whole minutes, 1 to 1440"),
    (
        ["--timeframe", "60", "--from", "0"],
        {"timeframe": "60", "from": "0"},
        "timeframe: give either timeframe or from and to",
    ),
    ([], {}, "timeframe: is required, or from and to (RFC 3339 or epoch ms)"),
    (
        ["--from", "yesterday", "--to", "now"],
        {"from": "yesterday", "to": "now"},
        "from: 'yesterday' is not RFC 3339 with an offset (e.g. 2026-11-27T13:29:00Z); "
        "to: 'now' is not RFC 3339 with an offset (e.g. 2026-11-27T13:29:00Z)",
    ),
    (
        ["--from", "2000", "--to", "1000"],
        {"from": "2000", "to": "1000"},
        "to: must be later than from",
    ),
    (
        ["--timeframe", "60", "--scores", "0,6"],
        {"timeframe": "60", "scores": "0,6"},
        "scores: must be scores 1 to 5, comma-separated",
    ),
    (
        ["--timeframe", "60", "--skills", "4,x"],
        {"timeframe": "60", "skillIds": "4,x"},
        "skillIds: 'x' is not an integer id; expected 'all' or a comma-separated list of integers",
    ),
    (
        ["--timeframe", "60", "--limit", "1001"],
        {"timeframe": "60", "limit": "1001"},
        "limit: must be a whole number from 1 to 1000",
    ),
    (
        ["--timeframe", "60", "--cursor", "bm9wZQ=="],
        {"timeframe": "60", "cursor": "bm9wZQ=="},
        "cursor: is not a cursor this server gave (use the reply's next)",
    ),
]


def http_details(db: Path) -> list[str]:
    """What the HTTP listing answers to each of :data:`BAD_FILTERS`."""
    token = create_key(db, ACCOUNT, "read")
    store = SQLiteStore(db)
    try:
        with TestClient(create_app(make_settings(), store=store)) as client:
            replies = [
                client.get(
                    f"/api/account/{ACCOUNT}/csat/answers", params=params, headers=bearer(token)
                )
                for _, params, _ in BAD_FILTERS
            ]
    finally:
        store.close()
    assert {reply.status_code for reply in replies} == {400}
    return [reply.json()["detail"] for reply in replies]


def test_bad_filters_exit_2_with_the_http_reply_s_message(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    for (arguments, _, message), detail in zip(BAD_FILTERS, http_details(db), strict=True):
        assert detail == message
        listed = answers(db, "list", *arguments)
        assert (listed.returncode, listed.stdout, listed.stderr) == (2, "", f"error: {message}\n")
    # export reads its filters through the same function: a few of them show it.
    for arguments, _, message in (BAD_FILTERS[0], BAD_FILTERS[3], BAD_FILTERS[5]):
        exported = answers(db, "export", *arguments)
        assert (exported.returncode, exported.stdout) == (2, "")
        assert exported.stderr == f"error: {message}\n"
    too_old = answers(db, "list", "--from", "1000", "--to", "2000")
    assert too_old.returncode == 2
    assert too_old.stderr.startswith("error: from: is before the retention of 1445 minutes (")


def test_list_and_export_refuse_a_bad_account_or_format(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    bad_account = cli(db, "answers", "list", "--account", "a b", "--timeframe", "5")
    assert (bad_account.returncode, bad_account.stderr) == (
        2,
        "error: account id 'a b' must be 1-64 letters, digits, '-' or '_'\n",
    )
    bad_format = answers(db, "export", "--timeframe", "5", "--format", "xml")
    assert (bad_format.returncode, bad_format.stderr) == (
        2,
        "error: --format must be csv or ndjson, not 'xml'\n",
    )
    nowhere = answers(db, "export", "--timeframe", "5", "-o", str(tmp_path / "no" / "x.csv"))
    assert nowhere.returncode == 2
    assert (
        nowhere.stderr
        == f"error: cannot write {tmp_path / 'no' / 'x.csv'}: No such file or directory\n"
    )


# --- export: every record, a page at a time --------------------------------------------------


def test_export_writes_every_record_across_pages_to_a_file(tmp_path: Path) -> None:
    db, newest = tmp_path / "x.db", now_ms() - 60_000
    records = many(2345, newest)
    ingest_ndjson(db, records)
    output = tmp_path / "all.ndjson"  # the format follows the name
    screen = run_in_terminal(
        "answers", "export", "--account", ACCOUNT, "--timeframe", "60", "--output", str(output),
        "--database", str(db),
    )  # fmt: skip
    assert "exported 2,345 answers" in screen  # the count, on stderr, as it is a terminal
    lines = output.read_bytes().splitlines()
    assert [orjson.loads(line)["id"] for line in lines] == [r["id"] for r in records]
    assert output.stat().st_mode & 0o777 == 0o600  # personal data: its owner's only
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []

    piped = answers(db, "export", "--timeframe", "60", "--agents", "10,11", "--scores", "1")
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""  # no progress in a pipe
    rows = list(csv.DictReader(io.StringIO(piped.stdout, newline="")))
    wanted = [r for r in records if r["agentId"] in (10, 11) and r["score"] == 1]
    assert [row["id"] for row in rows] == [r["id"] for r in wanted]
    assert len(rows) > 100


def test_an_export_cut_short_by_its_reader_stops_quietly(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    ingest_ndjson(db, many(3000, now_ms() - 60_000))
    command = [sys.executable, "-m", "csatdist", "answers", "export", "--account", ACCOUNT]
    command += ["--timeframe", "60", "--database", str(db)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.readline().startswith(b"id,time,")
        process.stdout.close()  # like `| head -1`
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 1
    assert stderr == b""


# --- erase -----------------------------------------------------------------------------------


def test_erase_from_a_file_and_with_id(database_url: str, tmp_path: Path) -> None:
    newest = now_ms() - 60_000
    ingest_ndjson(database_url, many(6, newest, prefix="e"))
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"e00000\r\n\ne00001\ne00000\nnever-seen\n")  # CRLF, blank, repeated
    result = answers(database_url, "erase", str(ids))
    assert (result.returncode, result.stdout) == (0, "erased 2, unknown 1\n  never-seen\n")
    assert total_answers(database_url) == 4

    again = answers(database_url, "erase", "--id", "e00001", "--id", "e00002", "--json")
    assert again.returncode == 0, again.stderr
    assert orjson.loads(again.stdout) == {"erased": 2, "unknown": []}  # erased again counts
    from_stdin = answers(database_url, "erase", "-", "--json", stdin="e00003\nnope\n")
    assert orjson.loads(from_stdin.stdout) == {"erased": 1, "unknown": ["nope"]}
    assert [row["id"] for row in export_csv(database_url)] == ["e00004", "e00005"]
    assert total_answers(database_url) == 2

    # A replayed copy of an erased answer, or a late first copy of an unknown id, is refused.
    replay = tmp_path / "replay.ndjson"
    replay.write_bytes(
        orjson.dumps(many(1, newest, prefix="e")[0])
        + b"\n"
        + orjson.dumps({"id": "never-seen", "time": newest, "score": 5})
    )
    refused = ingest_file(database_url, replay)
    assert refused.returncode == 1
    assert refused.stdout == (
        "accepted 0, updated 0, duplicates 0, rejected 2\n  #0 e00000: erased\n"
        "  #1 never-seen: erased\n"
    )
    assert total_answers(database_url) == 2


def test_erase_batches_more_ids_than_one_transaction_takes(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    ingest_ndjson(db, many(4, now_ms() - 60_000, prefix="k"))
    ids = [f"u{i}" for i in range(12_000)]
    ids[3], ids[11_999] = "k00000", "k00003"  # one in the first batch, one in the second
    result = answers(db, "erase", "-", "--json", stdin="\n".join(ids) + "\n")
    assert result.returncode == 0, result.stderr
    reply = orjson.loads(result.stdout)
    assert reply["erased"] == 2
    assert reply["unknown"] == [i for i in ids if not i.startswith("k")]
    assert [row["id"] for row in export_csv(db)] == ["k00001", "k00002"]


def test_erase_refuses_what_is_not_an_id_list_and_erases_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    ingest_ndjson(db, many(2, now_ms() - 60_000, prefix="s"))
    ids = tmp_path / "ids.txt"
    ids.write_text(f"s00000\n{'x' * 129}\n")
    too_long = answers(db, "erase", str(ids))
    assert (too_long.returncode, too_long.stdout) == (2, "")
    assert too_long.stderr == (
        f"error: {ids} line 2: must be an answer id: a string of 1 to 128 characters\n"
    )
    for arguments in ([], ["--id", "s00000", str(ids)]):
        neither = answers(db, "erase", *arguments)
        assert (neither.returncode, neither.stderr) == (
            2,
            "error: give the ids to erase with --id (repeatable) or in a FILE, one of the two\n",
        )
    missing = answers(db, "erase", str(tmp_path / "nope.txt"))
    assert (missing.returncode, missing.stderr) == (
        2,
        f"error: cannot read {tmp_path / 'nope.txt'}: No such file or directory\n",
    )
    assert total_answers(db) == 2


# --- publish and consume keep the record fields ----------------------------------------------


@pytest.fixture
def stream_env(nats_url: str) -> Iterator[dict[str, str]]:
    """Streams and a consumer of this test's own on the session's NATS, deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "CSATDIST_NATS_URL": nats_url,
        "CSATDIST_STREAM_NAME": f"R{tag}",
        "CSATDIST_STREAM_SUBJECT_PREFIX": f"r{tag}.answers",
        "CSATDIST_DEAD_LETTER_STREAM": f"R{tag}_DLQ",
        "CSATDIST_DEAD_LETTER_PREFIX": f"r{tag}.dlq",
        "CSATDIST_CONSUMER_NAME": "workers",
    }
    yield env

    async def delete() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for stream in (env["CSATDIST_STREAM_NAME"], env["CSATDIST_DEAD_LETTER_STREAM"]):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


@pytest.mark.slow
def test_a_published_csv_keeps_its_record_fields_through_consume(
    stream_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "s.db"
    t = now_ms() - 5 * 60_000
    rows = full_rows(t)
    source = tmp_path / "answers.csv"
    write_csv(source, rows)
    assert csatdist_cli("streams", "create", env=stream_env).returncode == 0
    published = csatdist_cli("publish", str(source), "--account", ACCOUNT, env=stream_env)
    assert published.returncode == 0, published.stderr

    command = [sys.executable, "-m", "csatdist", "consume", "--json", "--database", str(db)]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **stream_env},
    ) as consumer:
        try:
            deadline = time.monotonic() + 60
            while len(exported := export_csv(db) if db.exists() else []) < len(rows):
                assert consumer.poll() is None, "consume exited"
                assert time.monotonic() < deadline, exported
                time.sleep(0.2)
        finally:
            consumer.send_signal(signal.SIGTERM)
            stdout, _ = consumer.communicate(timeout=30)
    assert exported == rows
    stats = orjson.loads(stdout.splitlines()[-1])
    assert (stats["accepted"], stats["updated"]) == (3, 0)


# --- data protection: the server's log ---------------------------------------------------------


@pytest.mark.slow
def test_the_server_log_holds_no_answer_content(tmp_path: Path) -> None:
    db, log_path = tmp_path / "log.db", tmp_path / "server.log"
    write, read = create_key(db, ACCOUNT, "write"), create_key(db, ACCOUNT, "read")
    t = now_ms() - 60_000
    private = {
        "id": "secret-answer-id-7f3a",
        "time": t,
        "skillId": 4,
        "agentId": 17,
        "score": 1,
        "conversationId": "secret-conversation-9c1e",
        "comment": "call me on +44 7700 900123",
        "agentName": "Secret Agent Name",
    }
    others = [{**private, "id": f"other-{i}", "comment": f"other comment {i}"} for i in range(3)]
    server = start_server(db, log_path, "--log-level", "debug")
    try:
        base = f"{server.url}/api/account/{ACCOUNT}/csat"
        with httpx.Client(timeout=30) as client:
            body = b"\n".join(orjson.dumps(a) for a in [private, *others])
            ingested = client.post(
                f"{base}/answers",
                content=body,
                headers={**bearer(write), "Content-Type": "application/x-ndjson"},
            )
            assert ingested.json()["accepted"] == 4
            page = client.get(f"{base}/answers?timeframe=60&limit=1", headers=bearer(read))
            cursor = page.json()["next"]
            assert client.get(
                f"{base}/answers", params={"timeframe": 60, "cursor": cursor}, headers=bearer(read)
            ).json()["answers"]
            exported = client.get(
                f"{base}/answers?timeframe=60", headers={**bearer(read), "Accept": "text/csv"}
            )
            assert private["comment"] in exported.text
            erased = client.post(
                f"{base}/erasures", json={"ids": [private["id"]]}, headers=bearer(write)
            )
            assert erased.json() == {"erased": 1, "unknown": []}
    finally:
        server.stop()
    log = log_path.read_text()
    assert "/csat/erasures" in log  # the requests were logged, at debug level
    for value in (private["id"], private["conversationId"], private["comment"], cursor):
        assert str(value) not in log
    assert "Secret Agent Name" not in log
    assert "other comment" not in log
