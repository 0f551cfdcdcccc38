"""The directory: names for skill and agent ids (EXTENSIONS.md section 9)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from csatdist.directory import directory_document, parse_directory_update
from csatdist.http.deps import (
    IngestSlot,
    QuerySlot,
    ReadPrincipal,
    RuntimeDep,
    WritePrincipal,
    json_body,
)
from csatdist.http.responses import json_response

DIRECTORY_PATH = "/api/account/{account_id}/directory"
#: A directory update of 10,000 names of 200 characters, with room for the JSON around them.
DIRECTORY_BODY_BYTES = 4 * 1024 * 1024

router = APIRouter()


@router.get(DIRECTORY_PATH, summary="Names for skill and agent ids", response_class=Response)
async def get_directory(principal: ReadPrincipal, slot: QuerySlot, rt: RuntimeDep) -> Response:
    directory = await run_in_threadpool(rt.store.directory, principal.account_id)
    return json_response(directory_document(directory))


@router.put(DIRECTORY_PATH, summary="Merge names (null removes one)", response_class=Response)
async def put_directory(
    request: Request, principal: WritePrincipal, slot: IngestSlot, rt: RuntimeDep
) -> Response:
    """A write like an ingest: it holds one of the account's write slots (its body can be
    4 MB)."""
    document = await json_body(request, rt, DIRECTORY_BODY_BYTES)
    update = parse_directory_update(None if not isinstance(document, dict) else document)
    account_id = principal.account_id
    await run_in_threadpool(rt.store.update_directory, account_id, update, rt.clock())
    directory = await run_in_threadpool(rt.store.directory, account_id)
    return json_response(directory_document(directory))
