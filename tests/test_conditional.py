"""Strong ETags (RFC 9110): one per exact body, the same in every process, and If-None-Match."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from csatdist.conditional import etag_for, none_match
from csatdist.distribution import assemble_table
from csatdist.incremental import render_body
from csatdist.query import ALL, DistributionQuery
from tests.test_incremental import WINDOW, table


def test_the_etag_is_a_quoted_128_bit_hex_digest() -> None:
    etag = etag_for(b'{"a":1}')
    assert etag[0] == etag[-1] == '"'
    assert len(etag) == 34
    assert all(c in "0123456789abcdef" for c in etag[1:-1])


def test_known_values_pin_the_function_across_versions_and_replicas() -> None:
    """Replicas (and a replica restarted on a newer release) answer each other's
    If-None-Match: the ETag must stay this exact function of the bytes (BLAKE3, 128 bits)."""
    assert etag_for(b"") == '"af1349b9f5f9a1a6a0404dea36dcc949"'
    assert etag_for(b"abc") == '"6437b3ac38465133ffb63b75273a8db5"'


def test_the_same_bytes_get_the_same_etag_in_another_process() -> None:
    body = orjson.dumps({"metricsTotals": {"totalResponses": 7, "csat": 0.71}})
    script = (
        "import sys; from csatdist.conditional import etag_for; "
        "print(etag_for(sys.stdin.buffer.read()))"
    )
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=body,
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
        )
        assert out.stdout.decode().strip() == etag_for(body)


def test_any_change_of_a_byte_changes_the_etag() -> None:
    body = bytearray(orjson.dumps({str(i): {"totalResponses": i} for i in range(2_000)}))
    seen = {etag_for(bytes(body))}
    for position in range(0, len(body), 997):
        changed = bytearray(body)
        changed[position] ^= 1
        seen.add(etag_for(bytes(changed)))
    seen.add(etag_for(bytes(body) + b" "))
    seen.add(etag_for(bytes(body[:-1])))
    assert len(seen) == 3 + len(range(0, len(body), 997))


@pytest.mark.parametrize(
    "query", [DistributionQuery(1440, agents=ALL), DistributionQuery(1440, skills=ALL, agents=ALL)]
)
def test_a_rebuilt_body_gets_the_etag_of_the_same_body_built_whole(
    query: DistributionQuery,
) -> None:
    """The ETag follows the bytes, not how they were made: a body rebuilt from the previous
    one's parts (one replica) and the same body built whole (another) get one ETag."""
    state = {(skill, agent): (agent, 0, skill, 1, 2) for skill in (1, 2, 7) for agent in range(9)}
    first = table(state, query)
    state[(2, 5)] = (5, 0, 2, 1, 3)  # one new answer
    second = table(state, query)
    _, parts = render_body(query, WINDOW, first, None)
    rebuilt, _ = render_body(query, WINDOW, second, parts)
    whole = orjson.dumps(assemble_table(query, WINDOW, second))
    assert rebuilt == whole
    assert etag_for(rebuilt) == etag_for(whole)
    assert etag_for(rebuilt) != etag_for(orjson.dumps(assemble_table(query, WINDOW, first)))


def test_if_none_match() -> None:
    etag = etag_for(b"x")
    assert none_match(etag, etag)
    assert none_match(f'"other", W/{etag}', etag)
    assert none_match("*", etag)
    assert not none_match(None, etag)
    assert not none_match('"other"', etag)
