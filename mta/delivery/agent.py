"""One delivery attempt for a leased job, from loading the body to settling.

The attempt reads the envelope and the encrypted body, chooses local mailbox
delivery or SMTP (static route first, then MX), logs one line per recipient
in Postfix's form, and settles the row. A failure to read the message leaves
the row leased: the lease expires and another attempt starts later. A body
whose data key was destroyed is the exception, because it can never be read
again: its recipients fail at once.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from datetime import datetime, timezone

import asyncpg

from mta import metrics
from mta.config import Config
from mta.addresses import domain_of
from mta.db import TRANSIENT_ERRORS
from mta.complaints.handler import ComplaintHandler
from mta.delivery import feedback, suppression
from mta.delivery.body import MessageBody
from mta.delivery.stored_body import load_body
from mta.delivery.lmtp import LmtpSettings, deliver_lmtp, parse_destination
from mta.delivery.local import deliver_local
from mta.delivery.outcome import Outcome, Reply
from mta.delivery.mta_sts import MtaSts
from mta.delivery.resolve import ResolveError, Resolver, Target
from mta.delivery.sites import Sites, site_key
from mta.delivery.smtp import SmtpDeliverer
from mta.delivery.tls_policy import TlsRequirement
from mta.delivery.warmup import Warmup
from mta.spool.enqueue import Job
from mta.spool.scheduler import Slot
from mta.spool.settle import MessageInfo, Settler
from mta.storage.bodies import BodyCodec
from mta.storage.crypto import DecryptionError
from mta.storage.keyring import KeyDestroyedError
from mta.storage.store import BodyStore

log = logging.getLogger("mta.delivery")

# The body was erased by destroying its data key, so no later attempt can send it.
BODY_ERASED = Reply(554, "5.3.0 message body erased: its data key was destroyed")

_LOAD = f"""
SELECT m.sender, m.body_key, m.wrapped_key, m.data_key_id, m.received_at, m.delay_notified_at, m.dsn, b.data AS inline_data,
       {suppression.suppressed_column("m", "$2::text[]")} AS suppressed
FROM message m LEFT JOIN message_body b ON b.message_id = m.id
WHERE m.id = $1
"""


class DeliveryAgent:
    def __init__(self, config: Config, pool: asyncpg.Pool, store: BodyStore, bodies: BodyCodec,
                 resolver: Resolver, smtp: SmtpDeliverer, settler: Settler, sites: Sites,
                 mta_sts: MtaSts | None = None, warmup: Warmup | None = None):
        self.config = config
        self.pool = pool
        self.store = store
        self.bodies = bodies
        self.resolver = resolver
        self.smtp = smtp
        self.settler = settler
        self.sites = sites
        self.mta_sts = mta_sts
        self.warmup = warmup
        self.lmtp = {domain.lower().rstrip("."): parse_destination(text)
                     for domain, text in config.delivery.lmtp.items()}
        self.lmtp_settings = LmtpSettings(config.server.hostname, config.delivery.connect_timeout,
                                          config.delivery.connect_timeout, config.delivery.data_timeout)
        address = config.webhooks.complaints_address
        self.complaints = (ComplaintHandler(pool, settler.outbox, address, config.webhooks.complaints_from,
                                            config.server.hostname) if address else None)

    async def run(self, job: Job, slot: Slot) -> None:
        started = time.monotonic()
        row = await self.pool.fetchrow(_LOAD, job.message_id, [recipient.lower() for recipient in job.recipients])
        if row is None:
            log.warning("%s: message row missing, dropping delivery %d", job.message_id, job.delivery_id)
            return

        message = MessageInfo(job.message_id, row["sender"], row["received_at"],
                              delay_notified=row["delay_notified_at"] is not None,
                              dsn=json.loads(row["dsn"]) if row["dsn"] else None)
        opened = await self._open_body(job, row, message)
        if opened is None:
            return
        body, content_key = opened

        suppressed = set(row["suppressed"]) if self.config.delivery.suppression.enabled else set()
        outcome = await self._attempt(job, message, body, content_key, slot, suppressed)
        await self._settle(job, message, outcome, body, row["body_key"], started)

    async def _settle(self, job: Job, message: MessageInfo, outcome: Outcome, body: MessageBody,
                      body_key: str | None, started: float) -> None:
        """Settle the attempt, log it, and delete the body object once no row needs it."""
        settlement = await self.settler.settle(job, message, outcome, body)
        if not settlement.applied:
            return

        self._log(job, message, outcome, time.monotonic() - started)
        if settlement.notification is not None:
            log.info("%s: sender non-delivery notification: %s",
                     message.queue_id, settlement.notification.queue_id)
        if settlement.body_unused:
            if body_key is not None:
                await self.store.delete(body_key)
            log.info("%s: removed", message.queue_id)

    async def _open_body(self, job: Job, row: asyncpg.Record,
                         message: MessageInfo) -> tuple[MessageBody, bytes] | None:
        """Read and decrypt the body, or log why not and return None, leaving the row leased until it expires.

        Returns the body and its content key. A large body is only checked
        here and streamed from the store again when sent (mta.delivery.body).
        A StoreError propagates to the scheduler, which logs it the same way.
        A body under a destroyed data key fails its recipients instead.
        """
        data = row["inline_data"]
        try:
            if data is not None:
                opened = await self.bodies.open(job.message_id, data, row["wrapped_key"], row["data_key_id"])
                return MessageBody.whole(opened.body), opened.content_key
            content_key = await self.bodies.content_key(job.message_id, row["wrapped_key"], row["data_key_id"])
            return await load_body(self.store, job.message_id, content_key, row["body_key"]), content_key
        except KeyDestroyedError as error:
            log.error("%s: body erased, failing delivery %d permanently: %s", job.message_id, job.delivery_id, error)
            await self._fail_erased(job, message, row)
            return None
        except DecryptionError as error:
            log.error("%s: cannot decrypt the body, delivery %d retried after its lease: %s",
                      job.message_id, job.delivery_id, error)
            return None

    async def _fail_erased(self, job: Job, message: MessageInfo, row: asyncpg.Record) -> None:
        """Fail every recipient of the job with BODY_ERASED, in a notification without any part of the body."""
        outcome = Outcome(relay="none")
        outcome.add_all(job.recipients, BODY_ERASED)
        await self._settle(job, message, outcome, MessageBody.whole(b""), row["body_key"], time.monotonic())

    async def _attempt(self, job: Job, message: MessageInfo, body: MessageBody, content_key: bytes, slot: Slot,
                       suppressed: set[str]) -> Outcome:
        local = self.config.is_local_domain(job.domain) and self.resolver.route_for(job.domain) is None
        if local:
            if self.complaints is not None:
                await self.complaints.receive(job.message_id, job.recipients, body)
            destination = self.lmtp.get(job.domain.lower())
            if destination is not None:
                return await deliver_lmtp(destination, self.lmtp_settings, message.sender, job.recipients, body)
            return await deliver_local(self.pool, self.bodies, self.store, job.message_id, job.recipients, body,
                                       content_key, message.received_at, self.config.mailbox.attachment_threshold)

        recipients = [recipient for recipient in job.recipients if recipient.lower() not in suppressed]
        if len(recipients) < len(job.recipients):
            outcome = await self._send(job, message, body, slot, recipients) if recipients else Outcome()
            blocked = [recipient for recipient in job.recipients if recipient.lower() in suppressed]
            outcome.add_all(blocked, suppression.suppressed_reply(domain_of(message.sender)))
            return outcome
        return await self._send(job, message, body, slot, recipients)

    async def _send(self, job: Job, message: MessageInfo, body: MessageBody, slot: Slot,
                    recipients: list[str]) -> Outcome:
        try:
            targets = await self.resolver.targets(job.domain)
        except ResolveError as error:
            outcome = Outcome(relay="none")
            outcome.add_all(recipients, error.reply)
            return outcome

        key = site_key(targets)
        requirement = self.smtp.tls.for_domain(job.domain)
        if self.mta_sts is not None and self.resolver.route_for(job.domain) is None:
            targets, requirement, rejection = await self._apply_mta_sts(job.domain, targets, requirement)
            if rejection is not None:
                outcome = Outcome(relay="none", site=key)
                outcome.add_all(recipients, rejection)
                return outcome

        limits = self.sites.limits(job.domain)
        window = self.sites.window(key, limits)
        await window.acquire(slot)
        try:
            # Checked once there is room, as a suspension may have begun during the wait.
            reply = self.sites.suspended_reply(key) or await self.sites.take_rate(key, limits)
            if reply is not None:
                outcome = Outcome(relay="none", site=key)
                outcome.add_all(recipients, reply)
                return outcome
            pool = self.smtp.settings.sources.pool_for(domain_of(message.sender), job.domain)
            if self.warmup is not None:
                families = {ipaddress.ip_address(target.address).version for target in targets}
                pool, deferral = await self.warmup.narrow(pool, key, families)
                if deferral is not None:
                    outcome = Outcome(relay="none", site=key)
                    outcome.add_all(recipients, deferral)
                    return outcome
            outcome = await self.smtp.deliver(message.sender, recipients, body, targets, requirement, pool)
        finally:
            window.release()
        outcome.site = key
        await self.sites.record(key, outcome)
        await self._act_on_replies(key, message, outcome)
        return outcome

    async def _apply_mta_sts(self, domain: str, targets: list[Target],
                             requirement: TlsRequirement) -> tuple[list[Target], TlsRequirement, Reply | None]:
        """Narrow the targets and raise the TLS requirement as the domain's MTA-STS policy demands.

        An entry of the TLS policy table is the operator's explicit choice and is kept.
        """
        policy = await self.mta_sts.policy(domain)
        if policy is None or policy.mode == "none" or requirement.source == "policy table":
            return targets, requirement, None

        allowed = [target for target in targets if policy.allows(target.host)]
        if policy.mode == "testing":
            for target in targets:
                if target not in allowed:
                    log.warning("MTA-STS testing policy of %s does not list MX host %s", domain, target.host)
            return targets, requirement, None
        if not allowed:
            return [], requirement, Reply(451, f"4.7.5 no MX host of {domain} matches its MTA-STS policy "
                                               f"(mx: {', '.join(policy.mx)})")
        return allowed, TlsRequirement("verify", "MTA-STS", policy_lines=policy.lines()), None

    async def _act_on_replies(self, key: str, message: MessageInfo, outcome: Outcome) -> None:
        """Slow a site that throttles, and suppress recipients whose mailbox does not exist."""
        if outcome.relay == "none":
            return
        for _, reply in outcome.deferred + outcome.failed:
            metrics.REMOTE_REPLIES.labels(reply_class=feedback.classify(reply)).inc()
        throttling = [reply for _, reply in outcome.deferred if feedback.classify(reply) == feedback.THROTTLED]
        if throttling:
            await self.sites.throttled(key, throttling[0])
            if self.warmup is not None:
                try:
                    await self.warmup.throttled(outcome.source, key)
                except TRANSIENT_ERRORS as error:
                    # Settling must still happen: the recipients it delivered must not be sent again.
                    log.warning("%s: holding the warm-up of %s for site %s failed: %r", message.queue_id,
                                outcome.source, key, error)

        settings = self.config.delivery.suppression
        if not settings.enabled:
            return
        for recipient, reply in outcome.failed:
            if feedback.classify(reply) == feedback.UNKNOWN_USER:
                try:
                    await suppression.add_bounce(self.pool, message.sender, recipient, reply, settings.bounce_days)
                except TRANSIENT_ERRORS as error:
                    log.warning("%s: adding <%s> to the suppression list failed: %r", message.queue_id,
                                recipient, error)

    def _log(self, job: Job, message: MessageInfo, outcome: Outcome, attempt_seconds: float) -> None:
        delay = (datetime.now(timezone.utc) - message.received_at).total_seconds()
        for status, pairs in (("sent", outcome.delivered), ("deferred", outcome.deferred),
                              ("bounced", outcome.failed)):
            for recipient, reply in pairs:
                log.info("%s: to=<%s>, relay=%s, delay=%.2f, attempt=%d, took=%.3f, dsn=%s, status=%s (%s)",
                         message.queue_id, recipient, outcome.relay, delay, job.attempt,
                         attempt_seconds, reply.enhanced, status, _printable(reply))
                metrics.DELIVERIES.labels(outcome=status).inc()
                if status == "sent":
                    metrics.DELIVERY_SECONDS.observe(delay)


def _printable(reply: Reply) -> str:
    return " ".join(str(reply).split())
