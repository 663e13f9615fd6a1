"""``/v1/gdpr/{address}``: export and erase one person's data, and legal holds, as ``mta gdpr`` does.

Each action writes the audit entry that the command writes, under the
actor ``api:TOKEN_NAME``, naming the address by its keyed pseudonym only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, BackgroundTasks, Depends, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from mta import audit
from mta.api.auth import actor, require
from mta.api.context import ApiContext, get_context
from mta.api.errors import ApiError, ErrorCode, documented
from mta.api.paths import mailbox_address
from mta.api.streaming import stream
from mta.api.tokens import Token
from mta.db import TRANSIENT_ERRORS
from mta.gdpr import holds, pseudonym_of
from mta.gdpr.erase import NothingStored, erase_and_record, vacuum_erased_tables
from mta.gdpr.export import Archive, read_snapshot

log = logging.getLogger("mta.api")

router = APIRouter(prefix="/v1/gdpr/{address}", tags=["gdpr"])


class ErasureReport(BaseModel):
    pseudonym: str = Field(description="what the log and the audit log call the address from now on")
    mailbox_messages: int
    bodies: int
    deliveries_removed: int
    deliveries_in_flight: int = Field(description="deliveries being attempted during the erasure, which may still "
                                                  "be sent: erase again after [delivery] lease_seconds")
    events_pseudonymised: int
    messages_pseudonymised: int
    suppression_entries: int
    accounts: int
    auth_failure_counts: int
    api_tokens: int = Field(description="API tokens that sent as the account, deleted with it")
    webhook_events_pseudonymised: int = Field(description="webhook events, sent or waiting, that named the address")
    data_keys_destroyed: list[int]
    objects_deleted: int
    objects_failed: int = Field(description="objects left in the body store; the next erasure or retention run "
                                            "deletes them")
    audit_entries_naming_address: list[int] = Field(description="older audit entries that name the address in "
                                                                "clear, which the hash chain keeps")


class NewHold(BaseModel):
    reason: str = Field(min_length=1, max_length=1000,
                        description="why, such as a case reference; stored in the audit log as given")


class Hold(BaseModel):
    address: str
    reason: str
    created: bool = Field(description="false when the address was already held; its reason is then replaced")


@router.post("/export", response_class=StreamingResponse, responses={
    **documented(401, 403, 422), 200: {"content": {"application/zip": {}},
                                       "description": "the zip archive that `mta gdpr export` writes"}})
async def export_person(address: str = Depends(mailbox_address), token: Token = Depends(require("gdpr")),
                        context: ApiContext = Depends(get_context)) -> StreamingResponse:
    """Export what is stored about one person (GDPR articles 15 and 20) as a zip archive. Scope: `gdpr`.

    The archive has the person's mail as mbox, its metadata, delivery
    history, suppression entries, account and audit entries, as
    `mta gdpr export` writes it. An address nothing is stored about gets an
    archive with empty lists. The audit entry, with the archive's SHA-256,
    is written once the last octet is sent.
    """
    pseudonym = await _pseudonym(context, address)
    async with context.pool.acquire() as connection:
        snapshot = await read_snapshot(connection, address, pseudonym)
    archive = Archive(snapshot, context.pool, context.store, context.bodies)
    headers = {"Content-Disposition": 'attachment; filename="gdpr-export.zip"'}
    return stream(_audited(archive, context, actor(token), pseudonym), "application/zip",
                  f"the export of {pseudonym}", headers=headers)


async def _audited(archive: Archive, context: ApiContext, actor_name: str, pseudonym: str) -> AsyncIterator[bytes]:
    complete = False
    try:
        async for piece in archive.pieces():
            yield piece
        complete = True
    finally:
        if not complete:
            # NOTE: the octets already sent are not audited, as the archive has no SHA-256 to record.
            log.warning("api: the export of %s stopped before its end, so no audit entry was written", pseudonym)

    async with context.pool.acquire() as connection:
        await audit.append(connection, actor_name, "gdpr.export", archive.summary().as_audit_detail(pseudonym))


async def _vacuum(context: ApiContext, pseudonym: str) -> None:
    """Vacuum after an erasure, logging a failure: the next erasure or autovacuum does it then."""
    try:
        async with context.pool.acquire() as connection:
            await vacuum_erased_tables(connection)
    except TRANSIENT_ERRORS as error:
        log.warning("vacuum after the erasure of %s failed, autovacuum removes the old row versions later: %r",
                    pseudonym, error)
        return
    log.info("vacuum after the erasure of %s done", pseudonym)


@router.post("/erase", response_model=ErasureReport, responses=documented(401, 403, 404, 409, 422))
async def erase_person(background: BackgroundTasks, address: str = Depends(mailbox_address),
                       token: Token = Depends(require("gdpr")),
                       context: ApiContext = Depends(get_context)) -> ErasureReport:
    """Erase one person's mail, queued mail, account and keys (GDPR article 17), as `mta gdpr erase` does. Scope: `gdpr`.

    Under a legal hold nothing changes and the reply is 409 `legal_hold`.
    When nothing is stored about the address, never or no longer, the
    reply is 404 `nothing_stored` and no audit entry is written. The
    tables are vacuumed after the reply, which on a long history takes a while.
    """
    pseudonym = await _pseudonym(context, address)
    async with context.pool.acquire() as connection:
        try:
            erasure = await erase_and_record(connection, context.store, address, pseudonym, actor(token),
                                             missing_ok=False, vacuum=False,
                                             outbox=context.spool.outbox if context.spool is not None else None)
        except holds.HeldError as error:
            raise ApiError(409, ErrorCode.legal_hold,
                           f"{address} is under a legal hold since {error.since:%Y-%m-%d} ({error.reason}): "
                           f"nothing was erased; end the hold first with DELETE /v1/gdpr/{address}/hold") from None
        except NothingStored as error:
            raise ApiError(404, ErrorCode.nothing_stored, str(error)) from None
    background.add_task(_vacuum, context, pseudonym)
    return ErasureReport(pseudonym=pseudonym, **{name: getattr(erasure, name) for name in ErasureReport.model_fields
                                                 if name != "pseudonym"})


@router.put("/hold", response_model=Hold, responses=documented(401, 403, 422))
async def hold(request: NewHold, address: str = Depends(mailbox_address), token: Token = Depends(require("gdpr")),
               context: ApiContext = Depends(get_context)) -> Hold:
    """Put the address under a legal hold, which blocks erasure and retention purges. Scope: `gdpr`."""
    pseudonym = await _pseudonym(context, address)
    async with context.pool.acquire() as connection:
        async with connection.transaction():
            created = await holds.hold_and_record(connection, address, request.reason, actor(token), pseudonym)
    return Hold(address=address, reason=request.reason, created=created)


@router.delete("/hold", status_code=204, response_class=Response, responses=documented(401, 403, 404, 422))
async def release(address: str = Depends(mailbox_address), token: Token = Depends(require("gdpr")),
                  context: ApiContext = Depends(get_context)) -> Response:
    """End the address's legal hold. Scope: `gdpr`."""
    pseudonym = await _pseudonym(context, address)
    async with context.pool.acquire() as connection:
        async with connection.transaction():
            released = await holds.release_and_record(connection, address, actor(token), pseudonym)
    if not released:
        raise ApiError(404, ErrorCode.not_found, f"{address} has no legal hold")
    return Response(status_code=204)


async def _pseudonym(context: ApiContext, address: str) -> str:
    try:
        # The first call may create the key file, so it runs in a thread.
        return await asyncio.to_thread(pseudonym_of, context.config, address)
    except (OSError, ValueError) as error:
        log.error("api: the pseudonym key %s is unusable: %r",
                  context.config.data_path(context.config.logging.pseudonym_key_file), error)
        raise ApiError(500, ErrorCode.internal_error, "the pseudonym key is unusable; the log names the file") \
            from None
