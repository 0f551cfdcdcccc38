from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from csatdist.answers import Answer
from csatdist.buckets import MINUTE_MS
from csatdist.http import create_app
from csatdist.settings import Settings, load_settings
from csatdist.store import Store
from tests.conftest import make_settings
from tests.helpers import T_13_29, FakeClock

ROOT = Path(__file__).resolve().parent.parent


def test_flags_beat_env_beat_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().port == 8080
    monkeypatch.setenv("CSATDIST_PORT", "9000")
    assert load_settings().port == 9000
    assert load_settings(port=9100).port == 9100
    assert load_settings(port=None).port == 9000


def test_retention_cannot_go_below_a_full_window() -> None:
    with pytest.raises(ValidationError, match="retention_minutes"):
        Settings(retention_minutes=1440)


def test_unknown_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `CSATDIST_([A-Z_]+)` \|", readme, re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_readme_settings_table_is_what_csatdist_settings_prints() -> None:
    """The README's table, row for row, is ``csatdist settings --markdown``'s: a setting's
    meaning or default changed in the code is changed in the README too."""
    printed = subprocess.run(
        [sys.executable, "-m", "csatdist", "settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line for line in printed.splitlines() if line.startswith("| `CSATDIST_")]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert [line for line in readme if line.startswith("| `CSATDIST_")] == rows


def test_background_purge_drops_expired_data(store: Store) -> None:
    clock = FakeClock()
    store.record_answers("acme", [Answer(0, "old", T_13_29 - 10 * MINUTE_MS, 1, 1, 5)])
    clock.advance(1445)  # the answer is now older than the retention
    app = create_app(make_settings(purge_interval_seconds=0.05), store=store, clock=clock)
    with TestClient(app):
        deadline = time.monotonic() + 10
        while store.record_answers("acme", [Answer(0, "old", clock(), 1, 1, 5)]) == 0:
            assert time.monotonic() < deadline, "the purge never ran"
            time.sleep(0.05)
