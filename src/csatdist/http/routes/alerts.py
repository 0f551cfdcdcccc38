"""Alert rules: create, replace, read, delete, the deliveries log and a test delivery
(EXTENSIONS.md section 8). Evaluation and delivery run in the background
(:mod:`csatdist.alerting`, :mod:`csatdist.http.background`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from csatdist.alerting import rule_json, save_rule, send_test
from csatdist.errors import NotFound
from csatdist.http.deps import (
    IngestSlot,
    QuerySlot,
    ReadPrincipal,
    RuntimeDep,
    WritePrincipal,
    json_body,
)
from csatdist.http.responses import json_response
from csatdist.store import DeliveryRecord
from csatdist.webhooks import webhook_client

ALERTS_PATH = "/api/account/{account_id}/csat/alerts"
RULE_PATH = ALERTS_PATH + "/{name}"
RULE_BODY_BYTES = 64 * 1024
DELIVERIES_SHOWN = 50

router = APIRouter()


@router.put(RULE_PATH, summary="Create or replace an alert rule", response_class=Response)
async def put_rule(
    request: Request, name: str, principal: WritePrincipal, slot: IngestSlot, rt: RuntimeDep
) -> Response:
    document = await json_body(request, rt, RULE_BODY_BYTES)
    created, reply = await run_in_threadpool(
        save_rule,
        rt.store,
        rt.secret_box(),
        principal.account_id,
        name,
        document,
        rt.alert_policy,
        rt.clock(),
    )
    rt.alert_nudges.rule_saved()  # evaluate the new rule at once
    return json_response(reply, status=201 if created else 200)


@router.get(ALERTS_PATH, summary="The account's alert rules and their state")
async def list_rules(principal: ReadPrincipal, slot: QuerySlot, rt: RuntimeDep) -> Response:
    rules = await run_in_threadpool(rt.store.alert_rules, principal.account_id)
    full = "write" in principal.scopes
    return json_response({"alerts": [rule_json(rule, full_webhook=full) for rule in rules]})


async def _rule_or_404(rt: Any, account_id: str, name: str) -> Any:
    stored = await run_in_threadpool(rt.store.alert_rule, account_id, name)
    if stored is None:
        raise NotFound(f"no alert rule named {name[:64]!r}")
    return stored


@router.get(RULE_PATH, summary="One alert rule and its state")
async def get_rule(
    name: str, principal: ReadPrincipal, slot: QuerySlot, rt: RuntimeDep
) -> Response:
    stored = await _rule_or_404(rt, principal.account_id, name)
    return json_response(rule_json(stored, full_webhook="write" in principal.scopes))


@router.delete(RULE_PATH, summary="Delete an alert rule (and its pending deliveries)")
async def delete_rule(
    name: str, principal: WritePrincipal, slot: IngestSlot, rt: RuntimeDep
) -> Response:
    if not await run_in_threadpool(rt.store.delete_alert_rule, principal.account_id, name):
        raise NotFound(f"no alert rule named {name[:64]!r}")
    return Response(status_code=204)


def delivery_json(record: DeliveryRecord) -> dict[str, Any]:
    return {
        "id": record.delivery_id,
        "state": record.transition,
        "createdAt": record.created_ms,
        "outcome": record.outcome or "pending",
        "finishedAt": record.finished_ms,
        "nextAttemptAt": record.next_attempt_ms,
        "attempts": [
            {
                "at": a.at_ms,
                "status": a.status,
                "error": a.error,
                "durationMs": a.duration_ms,
                "response": a.response,
            }
            for a in record.tries
        ],
    }


@router.get(RULE_PATH + "/deliveries", summary="Recent deliveries of an alert rule")
async def deliveries(
    name: str, principal: ReadPrincipal, slot: QuerySlot, rt: RuntimeDep
) -> Response:
    await _rule_or_404(rt, principal.account_id, name)
    found = await run_in_threadpool(
        rt.store.deliveries, principal.account_id, name, DELIVERIES_SHOWN
    )
    return json_response({"deliveries": [delivery_json(d) for d in found]})


@router.post(RULE_PATH + "/test", summary="Send a signed test notification now")
async def test_rule(
    name: str, principal: WritePrincipal, slot: IngestSlot, rt: RuntimeDep
) -> Response:
    """Holds one of the account's write slots while the receiver answers (up to the webhook
    timeout): a tenant cannot keep the server calling out without bound."""
    async with webhook_client() as client:
        result = await send_test(
            rt.store,
            client,
            rt.secret_box(),
            rt.alert_policy,
            principal.account_id,
            name,
            now_ms=rt.clock(),
        )
    if result is None:
        raise NotFound(f"no alert rule named {name[:64]!r}")
    return json_response(result)
