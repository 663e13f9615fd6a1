"""``/v1/mailbox/{address}``: list a local mailbox, fetch a message or a stored attachment, as ``mta mailbox`` does.

Messages and attachments are decrypted piece by piece while they are sent
(mta.api.streaming), with no database connection held meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from mta.api.auth import require
from mta.api.context import ApiContext, get_context
from mta.api.errors import ApiError, ErrorCode, documented
from mta.api.paths import mailbox_address
from mta.api.streaming import stream
from mta.api.tokens import Token
from mta.mailbox import store
from mta.storage.keyring import KeyDestroyedError

router = APIRouter(prefix="/v1/mailbox/{address}/messages", tags=["mailbox"])

_MESSAGE_ID = Path(ge=1, le=2**63 - 1, description="the message's id in the listing")
_POSITION = Path(ge=1, le=2**31 - 1, description="the attachment's position in the attachment listing")


class MessageSummary(BaseModel):
    """A mailbox message's metadata, read from its header section at delivery."""

    id: int
    folder: str
    size: int = Field(description="octets of the message as delivered")
    date: datetime = Field(description="the Date: field, or the arrival time when it had none")
    from_: str = Field(alias="from", description="the decoded From: field")
    subject: str
    flags: list[str]
    queue_id: str
    received_at: datetime
    delivered_at: datetime
    attachments: int = Field(description="attachments stored on their own, listed by the attachments endpoint")


class MessagePage(BaseModel):
    messages: list[MessageSummary]
    next_cursor: int | None = Field(description="the cursor of the next page; null on the last page")


class StoredAttachment(BaseModel):
    position: int
    filename: str
    content_type: str
    size: int = Field(description="octets of the decoded content")


@router.get("", response_model=MessagePage, responses=documented(401, 403, 404, 422))
async def list_messages(address: str = Depends(mailbox_address),
                        folder: str | None = Query(None, max_length=255, description="only this folder"),
                        limit: int = Query(50, ge=1, le=store.MAX_LIMIT),
                        cursor: int | None = Query(None, ge=1, le=2**63 - 1,
                                                   description="next_cursor of the previous page"),
                        token: Token = Depends(require("mailbox:read")),
                        context: ApiContext = Depends(get_context)) -> MessagePage:
    """List a mailbox's messages, newest first, a page at a time; metadata only. Scope: `mailbox:read`."""
    _check_account(token, address)
    try:
        messages = await store.list_messages(context.pool, address, folder, limit, cursor)
    except store.MailboxNotFound as error:
        raise ApiError(404, ErrorCode.unknown_mailbox, str(error)) from None

    summaries = [MessageSummary(**message.as_json()) for message in messages]
    next_cursor = messages[-1].id if len(messages) == limit else None
    return MessagePage(messages=summaries, next_cursor=next_cursor)


@router.get("/{message_id}", response_class=StreamingResponse, responses={
    **documented(401, 403, 404, 410, 422), 200: {"content": {"message/rfc822": {}},
                                                 "description": "the message as delivered (RFC 5322)"}})
async def fetch_message(message_id: int = _MESSAGE_ID, address: str = Depends(mailbox_address),
                        token: Token = Depends(require("mailbox:read")),
                        context: ApiContext = Depends(get_context)) -> StreamingResponse:
    """Fetch one message as delivered, decrypted, as `message/rfc822`. Scope: `mailbox:read`."""
    _check_account(token, address)
    with _reading(address):
        content = await store.open_message(context.pool, context.store, context.bodies, address, message_id)
    return stream(content.pieces, "message/rfc822", f"message {message_id}", content.size)


@router.get("/{message_id}/attachments", response_model=list[StoredAttachment],
            responses=documented(401, 403, 404, 422))
async def list_attachments(message_id: int = _MESSAGE_ID, address: str = Depends(mailbox_address),
                           token: Token = Depends(require("mailbox:read")),
                           context: ApiContext = Depends(get_context)) -> list[StoredAttachment]:
    """List the message's attachments that are stored on their own. Scope: `mailbox:read`.

    Only attachments larger than `[mailbox] attachment_threshold` are; the
    others are only in the message itself.
    """
    _check_account(token, address)
    with _reading(address):
        attachments = await store.list_attachments(context.pool, address, message_id)
    return [StoredAttachment(**attachment.as_json()) for attachment in attachments]


@router.get("/{message_id}/attachments/{position}", response_class=StreamingResponse, responses={
    **documented(401, 403, 404, 410, 422), 200: {"content": {"*/*": {}},
                                                 "description": "the decoded attachment, with its own type"}})
async def fetch_attachment(message_id: int = _MESSAGE_ID, position: int = _POSITION,
                           address: str = Depends(mailbox_address), token: Token = Depends(require("mailbox:read")),
                           context: ApiContext = Depends(get_context)) -> StreamingResponse:
    """Fetch one stored attachment, decoded, with its content type and file name. Scope: `mailbox:read`."""
    _check_account(token, address)
    with _reading(address):
        info, content = await store.open_attachment(context.pool, context.store, context.bodies, address,
                                                    message_id, position)
    # Set as given: the stored type has no charset parameter, and Starlette would add utf-8 to a text type.
    headers = {"Content-Type": info.content_type,
               "Content-Disposition": f"attachment; filename*=UTF-8''{quote(info.filename, safe='')}"}
    return stream(content.pieces, None, f"attachment {position} of message {message_id}", content.size, headers)


def _check_account(token: Token, address: str) -> None:
    """Raise 403 when the token is bound to an account (``--account``) other than the mailbox's address."""
    if token.account is not None and token.account.lower() != address:
        raise ApiError(403, ErrorCode.mailbox_not_allowed,
                       f"the token {token.name} reads only the mailbox of its account {token.account}")


@contextlib.contextmanager
def _reading(address: str) -> Iterator[None]:
    """Turn the mailbox store's lookup and key errors into API errors."""
    try:
        yield
    except store.MailboxNotFound as error:
        raise ApiError(404, ErrorCode.unknown_mailbox, str(error)) from None
    except (store.MessageNotFound, store.AttachmentNotFound) as error:
        raise ApiError(404, ErrorCode.not_found, str(error)) from None
    except KeyDestroyedError:
        raise ApiError(410, ErrorCode.key_destroyed, f"the data key of mailbox {address} was destroyed, so its "
                       "mail cannot be decrypted any more") from None
