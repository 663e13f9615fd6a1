"""Record the complaints in feedback reports sent to ``webhooks.complaints_address``.

The delivery agent hands every message for local recipients to
``ComplaintHandler.receive`` before delivering it. The handler acts when
the complaints address is among the recipients, the message was
authenticated as coming from a configured reporter (mta.complaints.reporters),
and it is a feedback report that names a message of ours. It then writes, in
one transaction, a ``complained`` webhook event per complaining recipient and
a suppression entry (source complaint, no expiry) for the original sender's
domain. A ``not-spam`` report (RFC 6430) gets its event but no suppression.
Only recipients to whom our queue delivered that message count, at most
report.MAX_RECIPIENTS of them, whatever the report names.

The report is then delivered to the complaints mailbox like any message, so
one that is unauthenticated, malformed or unusable is kept there for a person
to read, with one log line. ``receive`` never raises (except on
cancellation), so no report can hold up the delivery it rides in. A delivery
attempt can run again after a failure, so each event id is derived from the
report's queue id, the original's and the recipient, and the outbox ignores
an event id it already holds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import asyncpg

from mta.addresses import domain_of
from mta.complaints.report import FeedbackReport, ReportError, parse_report
from mta.complaints.reporters import reporter_of
from mta.inbound.results import passed_domains
from mta.delivery import suppression
from mta.delivery.body import MessageBody
from mta.webhooks.outbox import Event, Outbox
from mta.webhooks.settings import COMPLAINED

log = logging.getLogger("mta.complaints")

# Any fixed UUID: it only has to stay the same, so repeated attempts derive the same event ids.
_EVENT_NAMESPACE = uuid.UUID("6d746163-6f6d-706c-6169-6e7473000001")
NOT_SPAM = "not-spam"
# Largest report parsed, in octets. Reports that include the whole original
# message are mostly far smaller; a larger one is kept as ordinary mail.
MAX_REPORT_SIZE = 10 * 1024 * 1024

_ORIGINAL = "SELECT id, sender FROM message WHERE id = ANY($1::text[])"
# Recipients our queue delivered the message to: only their mailboxes could have complained about it.
_RECIPIENTS = """
SELECT DISTINCT lower(recipient) AS recipient FROM delivery_event WHERE message_id = $1 AND status = 'delivered'
"""


@dataclass(frozen=True)
class Complaint:
    queue_id: str
    sender: str
    # Empty when the report names no recipient that can be trusted.
    recipients: list[str]
    feedback_type: str


class ComplaintHandler:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox | None, address: str, reporters: list[str],
                 service_id: str):
        self.pool = pool
        self.outbox = outbox
        self.address = address.lower()
        self.reporters = reporters
        # This host's name in the Authentication-Results fields it adds at accept.
        self.service_id = service_id

    async def receive(self, report_id: str, recipients: list[str], body: MessageBody) -> None:
        """Record the complaint in body when it is a trusted feedback report to the complaints address.

        Never raises except on cancellation: the message is delivered as
        ordinary mail whatever happens here.
        """
        if self.address not in (recipient.lower() for recipient in recipients):
            return
        try:
            await self._receive(report_id, body)
        except Exception as error:
            # Deliberately broad: a report is hostile input, and a failure here must not fail the delivery.
            log.error("%s: feedback report not handled, delivered as ordinary mail: %s: %s",
                      report_id, type(error).__name__, error)

    async def _receive(self, report_id: str, body: MessageBody) -> None:
        reporter = reporter_of(body.header, self.service_id, self.reporters)
        if reporter is None:
            verified = ", ".join(sorted(passed_domains(body.header, self.service_id))) or "none"
            log.warning("%s: message to the complaints address is not from a configured feedback reporter "
                        "(authenticated domains: %s), delivered as ordinary mail", report_id, verified)
            return
        if body.size > MAX_REPORT_SIZE:
            log.warning("%s: feedback report from %s is %d octets, over %d, delivered as ordinary mail",
                        report_id, reporter, body.size, MAX_REPORT_SIZE)
            return

        data = await body.read()
        try:
            # In a thread, as parsing a large report would stall every other delivery on this loop.
            report = await asyncio.to_thread(parse_report, data)
        except ReportError as error:
            log.warning("%s: not used as a feedback report, kept as ordinary mail: %s", report_id, error)
            return

        async with self.pool.acquire(timeout=30) as connection:
            async with connection.transaction():
                complaint = await _match(connection, report)
                if complaint is None:
                    log.warning("%s: feedback report names no message of ours (queue ids %s), kept as ordinary mail",
                                report_id, ", ".join(report.queue_ids))
                    return
                await self._record(connection, report_id, complaint)

    async def _record(self, connection: asyncpg.Connection, report_id: str, complaint: Complaint) -> None:
        recipients = complaint.recipients or [""]
        if self.outbox is not None:
            await self.outbox.insert(connection, [_event(report_id, complaint, recipient) for recipient in recipients])

        suppressed = complaint.feedback_type != NOT_SPAM and complaint.sender
        if suppressed and complaint.recipients:
            entries = [suppression.Entry(domain_of(complaint.sender), recipient,
                                         f"complaint ({complaint.feedback_type})", "complaint")
                       for recipient in complaint.recipients]
            try:
                await suppression.add(connection, entries)
            except suppression.SuppressionError as error:
                log.warning("%s: complaint about %s not suppressed: %s", report_id, complaint.queue_id, error)
        log.info("%s: %s complaint about %s from %s%s", report_id, complaint.feedback_type, complaint.queue_id,
                 ", ".join(f"<{recipient}>" for recipient in complaint.recipients) or "an unnamed recipient",
                 ", suppressed" if suppressed and complaint.recipients else "")


async def _match(connection: asyncpg.Connection, report: FeedbackReport) -> Complaint | None:
    """Return the complaint about the first of the report's queue ids that is in our queue, or None."""
    rows = {row["id"]: row for row in await connection.fetch(_ORIGINAL, report.queue_ids)}
    queue_id = next((queue_id for queue_id in report.queue_ids if queue_id in rows), None)
    if queue_id is None:
        return None

    # Only recipients of that message count: a report cannot suppress any address it likes. Without
    # a usable Original-Rcpt-To (often redacted), a message to one recipient names it unambiguously.
    known = {row["recipient"] for row in await connection.fetch(_RECIPIENTS, queue_id)}
    named = [recipient for recipient in report.recipients if recipient in known]
    if not named and len(known) == 1:
        named = list(known)
    return Complaint(queue_id, rows[queue_id]["sender"], named, report.feedback_type)


def _event(report_id: str, complaint: Complaint, recipient: str) -> Event:
    event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{report_id}/{complaint.queue_id}/{recipient}")
    return Event(COMPLAINED, {"queue_id": complaint.queue_id, "sender": complaint.sender,
                              "recipient": recipient or None, "feedback_type": complaint.feedback_type,
                              "report_queue_id": report_id}, event_id=str(event_id))
