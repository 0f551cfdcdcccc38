"""Every Python example in docs/client.md runs, unchanged, against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from csatdist.http import create_app
from csatdist.store import Store
from csatdist.users import make_user
from tests.conftest import add_key, make_settings
from tests.helpers import live_server

DOC = Path(__file__).resolve().parents[1] / "docs" / "client.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def env(store: Store) -> Iterator[dict[str, str]]:
    store.add_user(make_user("acme", "docs", "a long enough password", 0))
    with live_server(create_app(make_settings(), store=store)) as url:
        yield {
            "CSATDIST_URL": url,
            "CSATDIST_ACCOUNT": "acme",
            "CSATDIST_TOKEN": add_key(store, "acme", "read,write"),
            "CSATDIST_USER": "docs",
            "CSATDIST_PASSWORD": "a long enough password",
        }


def run(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_examples_run(env: dict[str, str]) -> None:
    assert len(EXAMPLES) >= 5
    outputs = [run(code, env) for code in EXAMPLES]
    first = outputs[0].splitlines()
    assert first[0] == "2 0 0"
    assert first[1].startswith("2 doc-3 score must be an integer from 1 to 5")
    assert first[2] == "CSAT 50.0% over 2 answers"
    # A second run sends the same ids with a later time: corrections, not new answers.
    assert run(EXAMPLES[0], env).splitlines()[0] == "0 2 0"
    assert len(outputs[1].splitlines()) == 25  # 24 hours of intervals (+1 clipped)
    assert outputs[2].strip() == "2"
    assert outputs[3].strip() == "2"
    assert outputs[4].strip() == "2 2"
