"""The query endpoint over HTTP: every response shape and every 400/401 of CONTRACT.md §2."""

from __future__ import annotations

from typing import Any

import pytest

from csatdist.buckets import MINUTE_MS, window_for
from tests.conftest import Api, add_key
from tests.helpers import T_13_29, bearer
from tests.test_distribution import ZERO_METRICS

ZERO = ZERO_METRICS


def m(s1: int = 0, s2: int = 0, s3: int = 0, s4: int = 0, s5: int = 0) -> dict[str, Any]:
    total = s1 + s2 + s3 + s4 + s5
    return {
        "csat_score1_answers": s1,
        "csat_score2_answers": s2,
        "csat_score3_answers": s3,
        "csat_score4_answers": s4,
        "csat_score5_answers": s5,
        "total_answers": total,
        "positive_answers": s4 + s5,
        "csat_score": (s4 + s5) / total if total else 0.0,
    }


@pytest.fixture
def seeded(api: Api) -> Api:
    """skill 1: agent 10 (5, 5, 4), agent 11 (1); skill 2: agent 10 (3); unassigned: (2)."""
    t = T_13_29 - 2 * MINUTE_MS
    api.ingest(
        [
            {"id": "a", "time": t, "skillId": 1, "agentId": 10, "score": 5},
            {"id": "b", "time": t, "skillId": 1, "agentId": 10, "score": 5},
            {"id": "c", "time": t, "skillId": 1, "agentId": 10, "score": 4},
            {"id": "d", "time": t, "skillId": 1, "agentId": 11, "score": 1},
            {"id": "e", "time": t, "skillId": 2, "agentId": 10, "score": 3},
            {"id": "f", "time": t, "skillId": None, "agentId": None, "score": 2},
            # outside a 60-minute window, inside 1440
            {
                "id": "old",
                "time": T_13_29 - 300 * MINUTE_MS,
                "skillId": 1,
                "agentId": 10,
                "score": 1,
            },
        ]
    )
    return api


def test_account_level(seeded: Api) -> None:
    assert seeded.query(timeframe=60) == {"metricsTotals": m(1, 1, 1, 1, 2)}
    assert seeded.query(timeframe=1440) == {"metricsTotals": m(2, 1, 1, 1, 2)}


def test_skill_level_all(seeded: Api) -> None:
    body = seeded.query(timeframe=60, skillIds="all")
    assert body == {
        "skillsMetricsPerAgent": {
            "metricsPerSkill": {
                "-1": {"metricsPerAgent": {"-1": m(s2=1)}, "metricsTotals": m(s2=1)},
                "1": {
                    "metricsPerAgent": {"10": m(s4=1, s5=2), "11": m(s1=1)},
                    "metricsTotals": m(1, 0, 0, 1, 2),
                },
                "2": {"metricsPerAgent": {"10": m(s3=1)}, "metricsTotals": m(s3=1)},
            },
            "metricsTotals": m(1, 1, 1, 1, 2),
        }
    }


def test_explicit_skills_omit_ids_without_data(seeded: Api) -> None:
    body = seeded.query(timeframe=60, skillIds="2,99")
    assert body == {
        "skillsMetricsPerAgent": {
            "metricsPerSkill": {
                "2": {"metricsPerAgent": {"10": m(s3=1)}, "metricsTotals": m(s3=1)}
            },
            "metricsTotals": m(s3=1),
        }
    }


def test_agent_level(seeded: Api) -> None:
    assert seeded.query(timeframe=60, agentIds="10,11,12") == {
        "agentsMetrics": {
            "metricsPerAgent": {"10": m(0, 0, 1, 1, 2), "11": m(s1=1)},
            "metricsTotals": m(1, 0, 1, 1, 2),
        }
    }
    body = seeded.query(timeframe=60, agentIds="all")
    assert list(body["agentsMetrics"]["metricsPerAgent"]) == ["-1", "10", "11"]  # type: ignore[index]


def test_skills_and_agents_share_one_population(seeded: Api) -> None:
    body = seeded.query(timeframe=60, skillIds="1", agentIds="10")
    assert body == {
        "skillsMetricsPerAgent": {
            "metricsPerSkill": {
                "1": {"metricsPerAgent": {"10": m(s4=1, s5=2)}, "metricsTotals": m(s4=1, s5=2)}
            },
            "metricsTotals": m(s4=1, s5=2),
        },
        "agentsMetrics": {"metricsPerAgent": {"10": m(s4=1, s5=2)}, "metricsTotals": m(s4=1, s5=2)},
    }
    both_all = seeded.query(timeframe=60, skillIds="all", agentIds="all")
    assert both_all["agentsMetrics"]["metricsTotals"] == m(1, 1, 1, 1, 2)  # type: ignore[index]


def test_unassigned_can_be_asked_for(seeded: Api) -> None:
    body = seeded.query(timeframe=60, skillIds="-1")
    assert list(body["skillsMetricsPerAgent"]["metricsPerSkill"]) == ["-1"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"metricsTotals": ZERO}),
        (
            {"skillIds": "all"},
            {"skillsMetricsPerAgent": {"metricsPerSkill": {}, "metricsTotals": ZERO}},
        ),
        (
            {"skillIds": "5"},
            {"skillsMetricsPerAgent": {"metricsPerSkill": {}, "metricsTotals": ZERO}},
        ),
        ({"agentIds": "all"}, {"agentsMetrics": {"metricsPerAgent": {}, "metricsTotals": ZERO}}),
        (
            {"skillIds": "1", "agentIds": "2"},
            {
                "skillsMetricsPerAgent": {"metricsPerSkill": {}, "metricsTotals": ZERO},
                "agentsMetrics": {"metricsPerAgent": {}, "metricsTotals": ZERO},
            },
        ),
    ],
)
def test_no_data_gives_empty_maps_and_zero_totals(
    api: Api, params: dict[str, str], expected: dict[str, Any]
) -> None:
    assert api.query(timeframe=60, **params) == expected


def test_window_headers(api: Api) -> None:
    response = api.client.get(api.query_url(), params={"v": 1, "timeframe": 7}, headers=api.read)
    window = window_for(T_13_29, 7)
    assert response.headers["X-CSAT-Window-Start"] == str(window.start_ms)
    assert response.headers["X-CSAT-Window-End"] == str(window.end_ms)
    assert response.headers["content-type"] == "application/json"


def test_original_example_counts_data_from_1320(api: Api) -> None:
    """now 13:29, timeframe 7: an answer at 13:21 (before 13:22) is still counted."""
    api.ingest(
        [
            {"id": "x", "time": T_13_29 - 8 * MINUTE_MS, "score": 5},
            {"id": "y", "time": T_13_29 - 10 * MINUTE_MS, "score": 5},
        ]
    )
    assert api.query(timeframe=7)["metricsTotals"]["total_answers"] == 1  # type: ignore[index]


def test_intervals(api: Api) -> None:
    # now 8:07 → timeframe 20, interval 10 → intervals ending 7:50, 8:00, 8:10.
    api.clock.now_ms = T_13_29 - (5 * 60 + 22) * MINUTE_MS  # 08:07
    now = api.clock.now_ms
    api.ingest(
        [
            {
                "id": "a",
                "time": now - 20 * MINUTE_MS,
                "skillId": 1,
                "agentId": 1,
                "score": 5,
            },  # 7:47
            {
                "id": "b",
                "time": now - 1 * MINUTE_MS,
                "skillId": 1,
                "agentId": 2,
                "score": 1,
            },  # 8:06
        ]
    )
    body = api.query(timeframe=20, interval=10, agentIds="all")
    window = window_for(now, 20)
    assert body["agentsMetrics"]["metricsTotals"] == m(s1=1, s5=1)  # type: ignore[index]
    intervals = body["metricsByIntervals"]
    assert [i["timestamp"] for i in intervals] == [  # type: ignore[attr-defined]
        window.start_ms + 5 * MINUTE_MS,
        window.start_ms + 15 * MINUTE_MS,
        window.end_ms,
    ]
    assert intervals[0]["metricsData"] == {  # type: ignore[index]
        "agentsMetrics": {"metricsPerAgent": {"1": m(s5=1)}, "metricsTotals": m(s5=1)}
    }
    assert intervals[1]["metricsData"] == {  # type: ignore[index]
        "agentsMetrics": {"metricsPerAgent": {}, "metricsTotals": ZERO}
    }
    assert intervals[2]["metricsData"]["agentsMetrics"]["metricsPerAgent"] == {"2": m(s1=1)}  # type: ignore[index]


def test_account_level_intervals(api: Api) -> None:
    body = api.query(timeframe=60, interval=30)
    assert body["metricsTotals"] == ZERO  # type: ignore[index]
    assert len(body["metricsByIntervals"]) == 3  # type: ignore[arg-type]
    assert body["metricsByIntervals"][0]["metricsData"] == {"metricsTotals": ZERO}  # type: ignore[index]


def test_post_form_with_json_body(seeded: Api) -> None:
    response = seeded.client.post(
        seeded.query_url(),
        json={"timeframe": 60, "v": 1, "skillIds": None, "agentIds": "10,11", "interval": None},
        headers=seeded.read,
    )
    assert response.status_code == 200
    assert response.json() == seeded.query(timeframe=60, agentIds="10,11")


def test_post_body_values_override_query(seeded: Api) -> None:
    response = seeded.client.post(
        seeded.query_url() + "?v=1&timeframe=5", json={"timeframe": "60"}, headers=seeded.read
    )
    assert response.json() == seeded.query(timeframe=60)


def test_post_with_bad_json_is_400(api: Api) -> None:
    for body in (b"{", b"[1]"):
        response = api.client.post(api.query_url(), content=body, headers=api.read)
        assert response.status_code == 400
        assert response.json()["invalid_params"][0]["name"] == "body"


def test_encoded_commas_spaces_repeats_and_unknown_params(seeded: Api) -> None:
    expected = seeded.query(timeframe=60, agentIds="10,11")
    url = seeded.query_url()
    for query in (
        "v=1&timeframe=60&agentIds=10%2C11",
        "v=1&timeframe=60&agentIds=10,%2011",
        "v=1&timeframe=60&agentIds=10&agentIds=11",
        "v=1&timeframe=60&agentIds=10,11&company=x&source=dashboard&skillIds=",
    ):
        response = seeded.client.get(f"{url}?{query}", headers=seeded.read)
        assert response.json() == expected, query


def test_json_content_type_on_get_is_fine(seeded: Api) -> None:
    headers = {**seeded.read, "Content-Type": "application/json"}
    response = seeded.client.get(seeded.query_url() + "?v=1&timeframe=60", headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("timeframe=60", {"v"}),
        ("v=2&timeframe=60", {"v"}),
        ("v=1", {"timeframe"}),
        ("v=1&timeframe=0", {"timeframe"}),
        ("v=1&timeframe=-5", {"timeframe"}),
        ("v=1&timeframe=1441", {"timeframe"}),
        ("v=1&timeframe=abc", {"timeframe"}),
        ("v=1&timeframe=1.5", {"timeframe"}),
        ("v=1&timeframe=60&skillIds=abc", {"skillIds"}),
        ("v=1&timeframe=60&agentIds=1,,2", {"agentIds"}),
        ("v=1&timeframe=60&agentIds=99999999999999999999", {"agentIds"}),
        ("v=1&timeframe=60&interval=7", {"interval"}),
        ("v=1&timeframe=60&interval=120", {"interval"}),
        ("v=1&timeframe=60&interval=25", {"interval"}),
        ("v=9&timeframe=x&interval=y", {"v", "timeframe", "interval"}),
    ],
)
def test_bad_parameters_are_400_problems(api: Api, query: str, names: set[str]) -> None:
    response = api.client.get(f"{api.query_url()}?{query}", headers=api.read)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 400
    assert body["type"] == "urn:csatdist:problem:invalid-request"
    assert {p["name"] for p in body["invalid_params"]} == names
    assert all(p["reason"] for p in body["invalid_params"])


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing credentials"),
        ({"Authorization": ""}, "missing credentials"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed Authorization header"),
        ({"Authorization": "Bearer"}, "malformed Authorization header"),
        ({"Authorization": "Bearer not-a-key"}, "malformed bearer token"),
        (
            {"Authorization": "Bearer csd_0000000000000000_" + "A" * 43},
            "not valid for this account",
        ),
    ],
)
def test_bad_credentials_are_401_problems(api: Api, headers: dict[str, str], detail: str) -> None:
    response = api.client.get(api.query_url() + "?v=1&timeframe=60", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_secret_for_a_real_key_is_401(api: Api) -> None:
    token = api.read["Authorization"]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = api.client.get(
        api.query_url() + "?v=1&timeframe=60", headers={"Authorization": tampered}
    )
    assert response.status_code == 401


def test_other_accounts_key_is_401_and_looks_like_an_unknown_key(api: Api) -> None:
    other = bearer(add_key(api.store, "other", "read"))
    response = api.client.get(api.query_url() + "?v=1&timeframe=60", headers=other)
    assert response.status_code == 401
    unknown = api.client.get(api.query_url("nobody") + "?v=1&timeframe=60", headers=other)
    assert unknown.status_code == 401
    assert response.json()["detail"] == unknown.json()["detail"]


def test_revoked_key_is_401(api: Api) -> None:
    key_id = api.read["Authorization"].split("_")[1]
    api.store.revoke_key(key_id, 1)
    response = api.client.get(api.query_url() + "?v=1&timeframe=60", headers=api.read)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_write_only_key_cannot_query(api: Api) -> None:
    response = api.client.get(api.query_url() + "?v=1&timeframe=60", headers=api.write)
    assert response.status_code == 401
    assert "'read' scope" in response.json()["detail"]


@pytest.mark.parametrize("account", ["a" * 65, "has.dot", "sp ace", "%00"])
def test_malformed_account_ids_are_401(api: Api, account: str) -> None:
    response = api.client.get(
        f"/operations/api/account/{account}/msgcsatdistribution?v=1&timeframe=5", headers=api.read
    )
    assert response.status_code == 401


def test_auth_is_checked_before_parameters(api: Api) -> None:
    response = api.client.get(api.query_url() + "?v=9")
    assert response.status_code == 401


def test_unknown_route_and_method_are_problems(api: Api) -> None:
    missing = api.client.get("/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = api.client.delete(api.query_url(), headers=api.read)
    assert wrong.status_code == 405
    assert wrong.json()["status"] == 405
