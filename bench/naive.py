"""Baseline (a): the naive design, raw answers in one table and GROUP BY at query time."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg

from csatdist.answers import Answer
from csatdist.distribution import CountRow
from csatdist.store import CountsRequest, sqlite_path


class NaiveStore:
    def __init__(self, url: str) -> None:
        self.postgres = url.startswith("postgresql")
        if self.postgres:
            self.pg = psycopg.connect(url, autocommit=True)
        else:
            self.lite = sqlite3.connect(sqlite_path(url) or url, isolation_level=None)
            self.lite.execute("PRAGMA journal_mode = WAL")
        self._run(
            "CREATE TABLE naive_answers (account_id TEXT NOT NULL, answer_id TEXT NOT NULL,"
            " time_ms BIGINT NOT NULL, skill_id BIGINT NOT NULL, agent_id BIGINT NOT NULL,"
            " score SMALLINT NOT NULL, PRIMARY KEY (account_id, answer_id))"
        )
        self._run("CREATE INDEX naive_by_time ON naive_answers (account_id, time_ms)")

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.postgres:
            cursor = self.pg.execute(sql.replace("?", "%s").encode(), params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []
        return self.lite.execute(sql, params).fetchall()

    def load(self, account_id: str, answers: Sequence[Answer]) -> None:
        rows = [(account_id, a.id, a.time_ms, a.skill_id, a.agent_id, a.score) for a in answers]
        sql = "INSERT INTO naive_answers VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        if self.postgres:
            with self.pg.cursor() as cursor:
                cursor.executemany(sql.replace("?", "%s"), rows)
        else:
            self.lite.execute("BEGIN")
            self.lite.executemany(sql, rows)
            self.lite.execute("COMMIT")

    def counts(self, request: CountsRequest) -> list[CountRow]:
        window, grouping = request.window, request.grouping
        bucket_end = "((time_ms / 300000) * 300000 + 300000)"
        columns = []
        if grouping.by_interval and request.interval_minutes:
            step = request.interval_minutes * 60_000
            columns.append(
                f"{window.end_ms} - (({window.end_ms} - {bucket_end}) / {step}) * {step}"
            )
        else:
            columns.append("NULL")
        columns.append("skill_id" if grouping.by_skill else "NULL")
        columns.append("agent_id" if grouping.by_agent else "NULL")
        scores = ", ".join(f"sum(CASE WHEN score = {s} THEN 1 ELSE 0 END)" for s in range(1, 6))
        sql = (
            f"SELECT {', '.join(columns)}, {scores} FROM naive_answers WHERE account_id = ?"
            " AND time_ms >= ? AND time_ms < ?"
        )
        params: list[Any] = [request.account_id, window.start_ms, window.end_ms]
        for column, selection in (("skill_id", request.skills), ("agent_id", request.agents)):
            if selection is not None and selection.ids is not None:
                sql += f" AND {column} IN ({', '.join(str(int(i)) for i in selection.ids)})"
        sql += " GROUP BY 1, 2, 3"
        return [
            CountRow(r[0], r[1], r[2], (int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7])))
            for r in self._run(sql, params)
        ]

    def close(self) -> None:
        if self.postgres:
            self.pg.close()
        else:
            self.lite.close()
