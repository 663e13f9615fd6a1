"""The ``[webhooks]`` settings and their checks.

Kept apart from mta.config so that module does not grow by a whole feature.
The checks raise ValueError, which mta.config turns into ConfigError.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ACCEPTED = "accepted"
DELIVERED = "delivered"
DEFERRED = "deferred"
BOUNCED = "bounced"
# A recipient removed from the queue by an operator (mta queue delete).
DELETED = "deleted"
# A recipient's feedback report (ARF) about a message of ours.
COMPLAINED = "complained"
EVENTS = (ACCEPTED, DELIVERED, DEFERRED, BOUNCED, DELETED, COMPLAINED)

# An HMAC key much shorter than the hash output weakens the signature.
MIN_SECRET_LENGTH = 16

_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class WebhookEndpoint:
    """One receiver of webhook events."""

    # https://..., or http:// to a loopback address when allow_insecure_loopback is set.
    url: str = ""
    # The HMAC-SHA256 key of the Mta-Signature header; give secret or secret_file, not both.
    secret: str = ""
    # A file whose first line is the secret; a relative path is taken from server.data_dir.
    secret_file: str = ""
    events: list[str] = field(default_factory=lambda: list(EVENTS))
    # Seconds one POST may take, connection included.
    timeout: float = 10.0
    # POSTs in flight at once to this endpoint from one worker, over kept-alive connections.
    concurrency: int = 8
    # An event is given up (state failed) after this many attempts, or once it is max_age seconds old.
    max_attempts: int = 12
    max_age: float = 86400.0
    # Seconds before attempt 2, 3, ...; the last one repeats.
    backoff: list[float] = field(default_factory=lambda: [10.0, 30.0, 60.0, 300.0, 900.0, 3600.0])


@dataclass
class WebhooksConfig:
    # Receivers by name: [webhooks.endpoints.NAME]. None configured: no events are written.
    endpoints: dict[str, WebhookEndpoint] = field(default_factory=dict)
    # Allow http:// URLs to 127.0.0.0/8 and ::1, for tests and a receiver on the same host.
    allow_insecure_loopback: bool = False
    # Seconds between looks for due events on each node when no NOTIFY arrives:
    # new events wake the dispatchers at once, retries are found by this poll.
    poll_interval: float = 1.0
    # Events of one endpoint one node claims at once (fewer when the lease
    # could not cover sending them all; see mta.webhooks.lane).
    batch_size: int = 50
    # Seconds a claimed event stays with its node before another node may send it again.
    lease_seconds: float = 120.0
    # Days delivered and failed events stay in webhook_outbox.
    retention_days: int = 7
    # A local mailbox for feedback loop reports (ARF): each report about a
    # message of ours becomes a complained event and suppresses the recipient
    # who complained (mta.complaints). Empty: reports are ordinary mail.
    complaints_address: str = ""
    # Domains (each with its subdomains) whose reports are trusted: the report's
    # DKIM d= or its SPF-verified MAIL FROM domain must be one of them.
    complaints_from: list[str] = field(default_factory=list)


def check_webhooks(webhooks: WebhooksConfig) -> None:
    """Raise ValueError naming the key of the first invalid webhook setting."""
    _check_range("webhooks.poll_interval", webhooks.poll_interval, 0.05, 3600.0)
    _check_range("webhooks.batch_size", webhooks.batch_size, 1, 10_000)
    _check_range("webhooks.lease_seconds", webhooks.lease_seconds, 1.0, 86400.0)
    _check_range("webhooks.retention_days", webhooks.retention_days, 1, 3650)
    for name, endpoint in webhooks.endpoints.items():
        if not _ENDPOINT_NAME.fullmatch(name):
            raise ValueError(f"webhooks.endpoints: invalid name {name!r}, use 1 to 64 letters, digits, - or _")
        _check_endpoint(f"webhooks.endpoints.{name}", endpoint, webhooks)


def _check_endpoint(key: str, endpoint: WebhookEndpoint, webhooks: WebhooksConfig) -> None:
    _check_url(f"{key}.url", endpoint.url, webhooks.allow_insecure_loopback)
    if bool(endpoint.secret) == bool(endpoint.secret_file):
        raise ValueError(f"{key}: set exactly one of secret and secret_file")
    if endpoint.secret and len(endpoint.secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"{key}.secret must be at least {MIN_SECRET_LENGTH} characters")

    unknown = sorted(set(endpoint.events) - set(EVENTS))
    if unknown or not endpoint.events:
        raise ValueError(f"{key}.events must name one or more of {', '.join(EVENTS)}, got {endpoint.events!r}")

    _check_range(f"{key}.timeout", endpoint.timeout, 0.1, 300.0)
    _check_range(f"{key}.concurrency", endpoint.concurrency, 1, 256)
    if endpoint.timeout >= webhooks.lease_seconds:
        raise ValueError(f"{key}.timeout ({endpoint.timeout:g} s) must be shorter than webhooks.lease_seconds "
                         f"({webhooks.lease_seconds:g} s), or another node may send the event meanwhile")
    _check_range(f"{key}.max_attempts", endpoint.max_attempts, 1, 1000)
    _check_range(f"{key}.max_age", endpoint.max_age, 60.0, 30 * 86400.0)
    if not endpoint.backoff:
        raise ValueError(f"{key}.backoff must name at least one interval")
    for index, seconds in enumerate(endpoint.backoff):
        _check_range(f"{key}.backoff[{index}]", seconds, 0.1, 86400.0)


def _check_url(key: str, url: str, allow_insecure_loopback: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        if allow_insecure_loopback:
            return
        raise ValueError(f"{key}: http:// is allowed only with webhooks.allow_insecure_loopback = true, got {url!r}")
    raise ValueError(f"{key} must be an https:// URL (http:// only to a loopback address), got {url!r}")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name could resolve anywhere, so only literal addresses count.
        return False


def _check_range(key: str, value: float, minimum: float, maximum: float) -> None:
    if not minimum <= value <= maximum:
        raise ValueError(f"{key} must be between {minimum:g} and {maximum:g}, got {value!r}")


def read_secrets(webhooks: WebhooksConfig, resolve: Callable[[str], Path]) -> dict[str, bytes]:
    """Return each endpoint's secret, reading secret_file (resolved by resolve) where set; raise ValueError."""
    secrets = {}
    for name, endpoint in webhooks.endpoints.items():
        if endpoint.secret:
            secrets[name] = endpoint.secret.encode()
            continue

        path = resolve(endpoint.secret_file)
        try:
            secret = path.read_text().partition("\n")[0].rstrip("\r")
        except OSError as error:
            raise ValueError(f"webhooks.endpoints.{name}.secret_file {path} could not be read: "
                             f"{error.strerror}") from None
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"webhooks.endpoints.{name}.secret_file {path}: the first line must contain "
                             f"at least {MIN_SECRET_LENGTH} characters")
        secrets[name] = secret.encode()
    return secrets
