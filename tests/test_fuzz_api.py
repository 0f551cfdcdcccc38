"""Schemathesis against the app's own OpenAPI document: every operation, generated requests
(valid and invalid), every response checked — no 5xx, documented status codes, content types,
headers and bodies that conform to the schemas, and no request accepted without credentials.

A bounded, repeatable run here (CSATDIST_FUZZ_EXAMPLES, 25 per operation); `scripts/fuzz-api`
runs a longer, randomised one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from csatdist.http import create_app
from csatdist.store import open_store
from csatdist.users import make_user
from tests.conftest import add_key, make_settings
from tests.helpers import T_13_29, FakeClock, live_server

EXAMPLES = int(os.environ.get("CSATDIST_FUZZ_EXAMPLES", "25"))
SETTINGS = make_settings(max_ingest_answers=50)


@schemathesis.serializer("application/x-ndjson")
def ndjson(context: Any, value: Any) -> bytes:
    """The schema describes NDJSON bodies as an array; on the wire it is one value per line."""
    items = value if isinstance(value, list) else [value]
    # json, not orjson: generated integers may exceed 64 bits, which the server must refuse.
    return "\n".join(json.dumps(item) for item in items).encode()


# The document as the app serves it. The push stream never ends by design: it has its own tests.
schema = schemathesis.openapi.from_dict(create_app(SETTINGS).openapi()).exclude(
    path_regex="/csat/stream$"
)


@dataclass
class Target:
    url: str
    token: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    store = open_store(f"sqlite:///{tmp / 'fuzz.db'}")
    token = add_key(store, "acme", "read,write")
    store.add_user(make_user("acme", "fuzz", "a long enough password", 0))
    config = SETTINGS.model_copy(update={"secret_key_file": str(tmp / "k.key")})
    with live_server(create_app(config, store=store, clock=FakeClock(T_13_29))) as url:
        yield Target(url, token)
    store.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("CSATDIST_FUZZ_RANDOM") != "1",
)
def test_every_operation_conforms_and_never_fails(case: Any, target: Target) -> None:
    headers = {} if case.path.endswith("/login") else {"Authorization": f"Bearer {target.token}"}
    case.call_and_validate(base_url=target.url, headers=headers, timeout=30)
