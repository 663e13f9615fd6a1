"""Send the daily TLS reports (RFC 8460) to the domains that ask for them.

Once a UTC day has ended, each policy domain with counted sessions is
looked up at ``_smtp._tls.DOMAIN``. A valid ``v=TLSRPTv1`` record names
where reports go: ``mailto:`` addresses get a DKIM-signed message queued
like any other (section 5.3), ``https:`` URLs get a POST of the gzipped
JSON over verified TLS (section 5.4). A node takes on a report by
inserting its row in ``tls_report_sent``, so each report is sent once
across nodes. A node that stops between taking a report and sending it
loses that report: reports are sent at most once.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import secrets
import ssl
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import dns.asyncresolver
import dns.exception
import dns.resolver

from mta.addresses import domain_of
from mta.background import BackgroundTask
from mta.config import Config
from mta.db import TRANSIENT_ERRORS
from mta.delivery.tlsrpt import build_report, encode_report
from mta.dkim import DkimSigner
from mta.spool.enqueue import NewMessage, Spool, SpoolError

log = logging.getLogger("mta.tlsrpt")

POST_TIMEOUT = 60.0
# Days of counts and of sent-report rows kept after their day.
KEEP_COUNT_DAYS = 7
KEEP_SENT_DAYS = 60
MAX_DESTINATIONS = 10

_DUE = """
SELECT DISTINCT c.day, c.policy_domain FROM tls_report_count c
WHERE c.day < (now() AT TIME ZONE 'UTC')::date
  AND NOT EXISTS (SELECT 1 FROM tls_report_sent s WHERE s.day = c.day AND s.policy_domain = c.policy_domain)
ORDER BY c.day LIMIT 100
"""
_CLAIM = """
INSERT INTO tls_report_sent (day, policy_domain) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING day
"""
_ROWS = """
SELECT policy_type, policy_string, mx_host, result_type, sending_ip, receiving_ip, sessions
FROM tls_report_count WHERE day = $1 AND policy_domain = $2
ORDER BY policy_type, policy_string, result_type, mx_host
"""
_DONE = "UPDATE tls_report_sent SET report_id = $3, detail = $4 WHERE day = $1 AND policy_domain = $2"
_PRUNE_COUNTS = "DELETE FROM tls_report_count WHERE day < (now() AT TIME ZONE 'UTC')::date - $1::int"
_PRUNE_SENT = "DELETE FROM tls_report_sent WHERE day < (now() AT TIME ZONE 'UTC')::date - $1::int"


@dataclass(frozen=True)
class ReportSettings:
    organization: str
    contact: str
    sender: str
    # The submitter named in reports and subjects: this host's name.
    submitter: str
    interval: float


def report_settings(config: Config) -> ReportSettings:
    """Fill the report settings left empty from the host name and the first local domain."""
    reports = config.delivery.tls_reports
    domain = config.domains.local[0].lower().rstrip(".")
    return ReportSettings(organization=reports.organization or config.server.hostname,
                          contact=reports.contact or f"postmaster@{domain}",
                          sender=reports.sender or f"noreply-tlsrpt@{domain}",
                          submitter=config.server.hostname, interval=reports.interval)


def parse_tlsrpt(texts: list[str]) -> list[str] | None:
    """Return the rua URIs of the one TLSRPT record among the TXT strings, or None (RFC 8460 section 3)."""
    records = [text for text in texts if text.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(records) != 1:
        return None

    for field in records[0].split(";")[1:]:
        name, _, value = field.strip().partition("=")
        if name.strip().lower() == "rua":
            uris = [uri.strip() for uri in value.split(",") if uri.strip()]
            valid = [uri for uri in uris if uri.lower().startswith(("mailto:", "https://"))]
            return valid[:MAX_DESTINATIONS] or None
    return None


class TlsReporter(BackgroundTask):
    task_name = "tls-reporter"

    def __init__(self, pool: asyncpg.Pool, resolver: dns.asyncresolver.Resolver, spool: Spool,
                 signer: DkimSigner, settings: ReportSettings, ca_file: str = ""):
        super().__init__()
        self.pool = pool
        self.resolver = resolver
        self.spool = spool
        self.signer = signer
        self.settings = settings
        self.context = ssl.create_default_context(cafile=ca_file or None)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    async def _loop(self) -> None:
        while True:
            try:
                await self.send_due()
            except TRANSIENT_ERRORS as error:
                log.warning("sending TLS reports failed, trying again in %.0f s: %r", self.settings.interval, error)
            await asyncio.sleep(self.settings.interval)

    async def send_due(self) -> int:
        """Send the reports of ended days not yet taken on by any node; return how many were sent."""
        sent = 0
        for row in await self.pool.fetch(_DUE):
            day, domain = row["day"], row["policy_domain"]
            if await self.pool.fetchval(_CLAIM, day, domain) is None:
                continue
            if await self._send_one(day, domain):
                sent += 1

        await self.pool.execute(_PRUNE_COUNTS, KEEP_COUNT_DAYS)
        await self.pool.execute(_PRUNE_SENT, KEEP_SENT_DAYS)
        return sent

    async def _send_one(self, day: date, domain: str) -> bool:
        destinations = await self._destinations(domain)
        if destinations is None:
            await self.pool.execute(_DONE, day, domain, None, "no valid TLSRPT record")
            return False

        report_id = f"{day.isoformat()}.{secrets.token_hex(8)}@{self.settings.submitter}"
        rows = await self.pool.fetch(_ROWS, day, domain)
        report = build_report(self.settings.organization, self.settings.contact, report_id, day, domain, rows)
        compressed = gzip.compress(encode_report(report))

        results = []
        for uri in destinations:
            results.append(f"{uri}: {await self._deliver(uri, day, domain, report_id, compressed)}")
        await self.pool.execute(_DONE, day, domain, report_id, "; ".join(results))
        log.info("TLS report %s for %s on %s: %s", report_id, domain, day.isoformat(), "; ".join(results))
        return True

    async def _destinations(self, domain: str) -> list[str] | None:
        try:
            answer = await self.resolver.resolve(f"_smtp._tls.{domain}", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as error:
            log.info("TLSRPT lookup for %s failed, no report sent: %r", domain, error)
            return None
        return parse_tlsrpt([b"".join(record.strings).decode("utf-8", "replace") for record in answer])

    async def _deliver(self, uri: str, day: date, domain: str, report_id: str, compressed: bytes) -> str:
        if uri.lower().startswith("mailto:"):
            return await self._mail(uri[len("mailto:"):], day, domain, report_id, compressed)
        return await self._post(uri, compressed)

    async def _mail(self, address: str, day: date, domain: str, report_id: str, compressed: bytes) -> str:
        # A mailto URI may carry a size limit ("!10m") or a query; neither is part of the address.
        address = address.split("!", 1)[0].split("?", 1)[0]
        body = self._message(address, day, domain, report_id, compressed)
        sender_domain = domain_of(self.settings.sender)
        if self.signer.has_key(sender_domain):
            body = self.signer.sign(body, sender_domain) + body
        try:
            queue_id = await self.spool.enqueue(NewMessage(self.settings.sender, [address], body, "tlsrpt",
                                                           "tlsrpt"))
        except SpoolError as error:
            return f"queueing failed: {error}"
        return f"queued as {queue_id}"

    def _message(self, address: str, day: date, domain: str, report_id: str, compressed: bytes) -> bytes:
        """Build the report message of RFC 8460 section 5.3."""
        submitter = self.settings.submitter
        start = int(datetime.combine(day, time.min, UTC).timestamp())
        message = EmailMessage(policy=SMTP)
        message["From"] = self.settings.sender
        message["To"] = address
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=submitter)
        message["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>"
        message["TLS-Report-Domain"] = domain
        message["TLS-Report-Submitter"] = submitter
        message.set_content(f"This is an aggregate TLS report from {submitter} for {domain} on {day.isoformat()}.\n")
        message.add_attachment(compressed, maintype="application", subtype="tlsrpt+gzip",
                               filename=f"{submitter}!{domain}!{start}!{start + 86399}!{report_id.split('@')[0]}.json.gz")
        message.set_type("multipart/report")
        message.set_param("report-type", "tlsrpt")
        return message.as_bytes()

    async def _post(self, uri: str, compressed: bytes) -> str:
        """POST the report over verified TLS, resolving the host with the configured nameservers."""
        parts = urlsplit(uri)
        host = parts.hostname or ""
        try:
            answer = await self.resolver.resolve(host, "A")
            address = answer[0].address
            url = parts._replace(netloc=f"{address}:{parts.port or 443}").geturl()
            timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url, data=compressed, headers={"Host": host,
                                        "Content-Type": "application/tlsrpt+gzip"},
                                        server_hostname=host, ssl=self.context, allow_redirects=False) as response:
                    return f"HTTP {response.status}"
        except (aiohttp.ClientError, OSError, TimeoutError, dns.exception.DNSException) as error:
            return f"POST failed: {error!r}"
