"""Queue a message sent through the API with the policy of SMTP submission.

The steps and their order follow ``Handler.handle_DATA`` for the submission
listener: size and recipient limits, the content policy (no bare CR or LF,
no NUL, exactly one From), From owned by the sender, long lines re-encoded,
Date and Message-ID added, DKIM signature, the content checks configured
for ``submission``, a Received field, then the spool's durable commit. The
API returns 202 only after that commit, as SMTP returns 250.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mta import metrics
from mta.api.context import ApiContext
from mta.api.errors import ApiError, ErrorCode
from mta.api.tokens import Token
from mta.auth import users
from mta.dkim import DuplicateFromError
from mta.ids import new_queue_id, new_session_id
from mta.inbound.results import remove_forged
from mta.smtp import policy, replies
from mta.smtp.hooks import CheckRequest
from mta.smtp.longlines import LineTooLong, shorten_lines
from mta.smtp.stamp import Arrival, add_missing_fields, author_address, author_domain, received_field
from mta.spool.enqueue import NewMessage, SpoolError

log = logging.getLogger("mta.api")

# The NewMessage origin and metrics label of mail sent through the API.
ORIGIN = "api"
# The listener whose limits and content checks API mail shares.
LIMITS_OF = "submission"


@dataclass(frozen=True)
class Upload:
    data: bytes
    recipients: list[str]
    client_address: str


async def submit(context: ApiContext, token: Token, upload: Upload) -> str:
    """Check, stamp, sign and queue the message; return its queue id or raise ApiError."""
    request_id = new_session_id()
    max_size, max_recipients = context.config.listener_limits(LIMITS_OF)
    if len(upload.data) > max_size:
        raise ApiError(413, ErrorCode.message_too_large, f"the message exceeds the limit of {max_size} octets")
    recipients = await _checked_recipients(context, upload.recipients, max_recipients)

    reply = policy.check_content(upload.data, require_one_from=True)
    if reply is not None:
        raise ApiError(422, ErrorCode.invalid_message, reply.text)
    sender = author_address(upload.data)
    await _check_sender(context, token, sender)

    queue_id = new_queue_id()
    data = _stamped(context, upload.data, queue_id)
    data = await _run_checks(context, token, request_id, upload, sender, recipients, queue_id, data)
    arrival = Arrival(helo="api", peer_address=upload.client_address, hostname=context.config.server.hostname,
                      protocol="HTTP", tls="", queue_id=queue_id,
                      recipient=recipients[0] if len(recipients) == 1 else "")
    data = received_field(arrival) + data

    message = NewMessage(sender=sender, recipients=recipients, body=data, origin=ORIGIN, session_id=request_id,
                         queue_id=queue_id)
    try:
        await context.spool.enqueue(message)
    except SpoolError as error:
        log.error("api %s: not queued, 503 sent: %s", request_id, error)
        raise ApiError(503, ErrorCode.temporarily_unavailable,
                       f"the message could not be queued, try again later (ref {request_id})") from None

    log.info("api %s: %s: from=<%s>, size=%d, nrcpt=%d, token=%s (queued)", request_id, queue_id, sender,
             len(data), len(recipients), token.name)
    metrics.MESSAGES_ACCEPTED.labels(listener=ORIGIN).inc()
    return queue_id


async def _checked_recipients(context: ApiContext, recipients: list[str], max_recipients: int) -> list[str]:
    """Return the recipients without repeats, or raise ApiError naming the first bad one."""
    distinct = list(dict.fromkeys(recipients))
    if not distinct:
        raise ApiError(422, ErrorCode.invalid_message, "the message has no recipient")
    if len(distinct) > max_recipients:
        raise ApiError(422, ErrorCode.too_many_recipients,
                       f"{len(distinct)} recipients exceed the limit of {max_recipients}")
    for address in distinct:
        if not policy.valid_address(address):
            raise ApiError(422, ErrorCode.invalid_address, f"invalid recipient address {address!r}")

    # Local mailboxes must exist, as RCPT checks on submission. Routed local domains are checked by their server.
    mailbox_recipients = [address for address in distinct if _is_mailbox_domain(context, address)]
    known = await users.existing_users(context.pool, mailbox_recipients) if mailbox_recipients else set()
    for address in mailbox_recipients:
        if address.lower() not in known:
            raise ApiError(422, ErrorCode.unknown_recipient, f"no mailbox {address} here")
    return distinct


def _is_mailbox_domain(context: ApiContext, address: str) -> bool:
    domain = address.rpartition("@")[2]
    return context.config.is_local_domain(domain) and domain.lower().rstrip(".") not in context.config.delivery.routes


async def _check_sender(context: ApiContext, token: Token, sender: str) -> None:
    # The From domain chooses the DKIM key, so a token signs only for what it was given.
    if not sender or not token.may_send_as(sender):
        allowed = token.account or ", ".join(sorted(token.sender_domains))
        raise ApiError(403, ErrorCode.sender_not_allowed,
                       f"the From address {sender or '(none)'} is not allowed for this token: {allowed}")
    if token.account is not None and not await users.can_log_in(context.pool, token.account):
        raise ApiError(403, ErrorCode.sender_not_allowed, f"the account {token.account} is deleted or locked")


def _stamped(context: ApiContext, data: bytes, queue_id: str) -> bytes:
    """Return the message with forged results removed, long lines encoded, fields added and signed."""
    hostname = context.config.server.hostname
    data, _ = remove_forged(data, hostname)
    try:
        data = shorten_lines(data)
    except LineTooLong as error:
        raise ApiError(422, ErrorCode.invalid_message, f"{error}; fold or encode it before sending") from None
    data = add_missing_fields(data, hostname, queue_id)

    domain = author_domain(data)
    if not context.signer.has_key(domain):
        return data
    try:
        return context.signer.sign(data, domain) + data
    except DuplicateFromError:
        raise ApiError(422, ErrorCode.invalid_message, replies.ONE_FROM_REQUIRED.text) from None


async def _run_checks(context: ApiContext, token: Token, request_id: str, upload: Upload, sender: str,
                      recipients: list[str], queue_id: str, data: bytes) -> bytes:
    checks = context.checks
    if checks is None or not checks.applies_to(LIMITS_OF):
        return data
    request = CheckRequest(queue_id=queue_id, session_id=request_id, listener=LIMITS_OF,
                           client_address=upload.client_address, helo="api", sender=sender,
                           recipients=tuple(recipients), data=data,
                           authenticated_user=token.account or f"api:{token.name}")
    outcome = await checks.run(request)
    log.info("api %s: %s: content checks: %s", request_id, queue_id, " ".join(outcome.summary) or "none")
    if outcome.reply is not None:
        status, code = (503, ErrorCode.temporarily_unavailable) if outcome.reply.startswith("4") \
            else (422, ErrorCode.message_rejected)
        raise ApiError(status, code, outcome.reply)
    return outcome.header + data
