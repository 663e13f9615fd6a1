"""SMTP TLS reporting (RFC 8460): count outbound TLS sessions and build the daily aggregate report.

Each node counts sessions in memory, keyed by UTC day, destination policy,
MX host and result, and adds the counts to ``tls_report_count`` every
``flush_seconds``. Counts not yet added when a node stops abruptly are
lost; a report is a statistic, and losing a minute of it loses no mail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import asyncpg

from mta.background import BackgroundTask
from mta.db import TRANSIENT_ERRORS

log = logging.getLogger("mta.tlsrpt")

SUCCESS = "success"
# Result types of RFC 8460 section 4.3 that this client detects.
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"

# OpenSSL verification codes (X509_V_ERR_*) behind ssl.SSLCertVerificationError.verify_code.
_EXPIRED_CODES = {10}
_HOST_MISMATCH_CODES = {62}
_UNTRUSTED_CODES = {2, 18, 19, 20, 21, 27}

# Distinct counters one node keeps between flushes; beyond it new keys are dropped and logged.
MAX_KEYS = 100_000

_ADD = """
INSERT INTO tls_report_count AS c (day, policy_domain, policy_type, policy_string, mx_host, result_type,
                                   sending_ip, receiving_ip, sessions)
SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::bigint[])
ON CONFLICT (day, policy_domain, policy_type, policy_string, mx_host, result_type, sending_ip, receiving_ip)
DO UPDATE SET sessions = c.sessions + excluded.sessions
"""


@dataclass(frozen=True)
class SessionKey:
    day: date
    policy_domain: str
    policy_type: str
    policy_string: str
    mx_host: str
    result_type: str
    sending_ip: str
    receiving_ip: str


def failure_type(error: BaseException) -> str:
    """Map a failed STARTTLS handshake to its RFC 8460 result type."""
    code = getattr(error, "verify_code", None)
    if code in _EXPIRED_CODES:
        return CERTIFICATE_EXPIRED
    if code in _HOST_MISMATCH_CODES:
        return CERTIFICATE_HOST_MISMATCH
    if code in _UNTRUSTED_CODES or isinstance(error, ssl.SSLCertVerificationError):
        return CERTIFICATE_NOT_TRUSTED
    return VALIDATION_FAILURE


class TlsSessionCounter(BackgroundTask):
    task_name = "tls-report-counter"

    def __init__(self, pool: asyncpg.Pool, flush_seconds: float):
        super().__init__()
        self.pool = pool
        self.flush_seconds = flush_seconds
        self.counts: Counter[SessionKey] = Counter()
        self._dropped = 0

    def record(self, policy_domain: str, policy_type: str, policy: tuple[str, ...], mx_host: str,
               result_type: str, sending_ip: str = "", receiving_ip: str = "") -> None:
        if result_type == SUCCESS:
            sending_ip = receiving_ip = ""
        key = SessionKey(datetime.now(UTC).date(), policy_domain.lower().rstrip("."), policy_type,
                         "\n".join(policy), mx_host.lower().rstrip("."), result_type, sending_ip, receiving_ip)
        if key not in self.counts and len(self.counts) >= MAX_KEYS:
            self._dropped += 1
            return
        self.counts[key] += 1

    async def stop(self) -> None:
        await super().stop()
        await self.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Add the counts to the database; on failure keep them for the next flush."""
        if self._dropped:
            log.warning("TLS report counters full (%d keys): %d sessions not counted", MAX_KEYS, self._dropped)
            self._dropped = 0
        if not self.counts:
            return

        counts, self.counts = self.counts, Counter()
        columns = [[getattr(key, name) for key in counts] for name in SessionKey.__dataclass_fields__]
        try:
            await self.pool.execute(_ADD, *columns, list(counts.values()))
        except TRANSIENT_ERRORS as error:
            log.warning("adding %d TLS report counts failed, keeping them for the next try: %r", len(counts), error)
            self.counts.update(counts)


def build_report(organization: str, contact: str, report_id: str, day: date, policy_domain: str,
                 rows: list[asyncpg.Record]) -> dict:
    """Build the JSON report of RFC 8460 section 4.4 for one policy domain and day from its count rows."""
    policies: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["policy_type"], row["policy_string"])
        entry = policies.setdefault(key, _policy_entry(policy_domain, row))
        summary = entry["summary"]
        if row["result_type"] == SUCCESS:
            summary["total-successful-session-count"] += row["sessions"]
            continue
        summary["total-failure-session-count"] += row["sessions"]
        entry["failure-details"].append({
            "result-type": row["result_type"],
            "sending-mta-ip": row["sending_ip"],
            "receiving-mx-hostname": row["mx_host"],
            "receiving-ip": row["receiving_ip"],
            "failed-session-count": row["sessions"],
        })

    start = datetime.combine(day, time.min, UTC)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "end-datetime": start.strftime("%Y-%m-%dT23:59:59Z")},
        "contact-info": contact,
        "report-id": report_id,
        "policies": [_without_empty_details(entry) for entry in policies.values()],
    }


def _policy_entry(policy_domain: str, row: asyncpg.Record) -> dict:
    policy = {"policy-type": row["policy_type"], "policy-domain": policy_domain}
    if row["policy_string"]:
        policy["policy-string"] = row["policy_string"].split("\n")
    return {"policy": policy,
            "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
            "failure-details": []}


def _without_empty_details(entry: dict) -> dict:
    if not entry["failure-details"]:
        del entry["failure-details"]
    return entry


def encode_report(report: dict) -> bytes:
    return json.dumps(report, indent=1).encode()
