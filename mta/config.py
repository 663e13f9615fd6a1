"""The typed configuration tree, loaded from TOML and checked at start-up.

Every field carries its unit in its name or docstring and a default that runs
the embedded setup: a private PostgreSQL under ``data_dir``, bodies in a local
directory, a self-signed certificate and unprivileged loopback ports. A value
that fails a check raises ``ConfigError`` with the key and the fix, and
``mta check-config`` prints it.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from mta.delivery.lmtp import parse_destination
from mta.inbound.dmarc import is_public_suffix
from mta.webhooks.settings import WebhooksConfig, check_webhooks


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of bounds."""


@dataclass
class ServerConfig:
    hostname: str = "mta.localhost"
    data_dir: str = "./var"
    workers: int = 1
    log_level: str = "info"


@dataclass
class LoggingConfig:
    # "plain": Postfix-style lines; "json": one object per line (mta/logs.py).
    format: str = "plain"
    # Replace every email address in the log by a keyed pseudonym that keeps the domain (mta/pseudonym.py).
    pseudonymise_addresses: bool = False
    # 32 random octets, created with mode 0600 on first use. A relative path is taken
    # from server.data_dir. Nodes that share a database need the same file for their
    # pseudonyms to match.
    pseudonym_key_file: str = "keys/log-pseudonym.key"


@dataclass
class DatabaseConfig:
    # Empty means: start the embedded PostgreSQL under data_dir/pg.
    url: str = ""
    # A file whose first line is the password for url, such as a container
    # secret or a systemd credential, so the URL can be written without it.
    password_file: str = ""
    pool_min: int = 2
    pool_max: int = 10


@dataclass
class StorageConfig:
    # "local": a directory on this host (path). "s3": an S3 bucket in an EU
    # region, one of those mta/storage/residency.py lists with their endpoint hosts.
    kind: str = "local"
    # Relative paths are taken from server.data_dir.
    path: str = "blobs"
    master_key_file: str = "keys/master.key"
    # The name of an environment variable that contains the master key as
    # base64 of 32 octets. When set, it replaces master_key_file.
    master_key_env: str = ""
    # A master key used only to unwrap data keys during a rotation (mta keys
    # rotate-master), never to wrap new ones. Empty: none.
    previous_master_key_file: str = ""
    # Unwrapped data keys each worker keeps in memory, and seconds each entry
    # is kept before it is read again. A destroyed key can stay usable in a
    # running worker for at most data_key_cache_seconds.
    data_key_cache_size: int = 10000
    data_key_cache_seconds: float = 300.0
    # Encrypted bodies up to this many octets are kept in PostgreSQL, committed
    # with their envelope; larger ones go to the body store. 0 sends all there.
    inline_max_size: int = 65536
    bucket: str = ""
    region: str = ""
    # Empty: the region's standard endpoint, such as https://s3.eu-west-3.amazonaws.com.
    endpoint_url: str = ""
    # Host patterns of an S3 service in the EU that is not built in, such as
    # one you run yourself; "*" matches one DNS label.
    extra_endpoint_hosts: list[str] = field(default_factory=list)
    # Allow an endpoint on 127.0.0.0/8, ::1 or localhost, also over plain
    # HTTP. For tests and development only.
    allow_loopback_endpoint: bool = False
    # Empty: taken from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    # AWS_SESSION_TOKEN in the environment. Never logged or printed.
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    # Put before every object name, such as "mta/".
    prefix: str = ""
    # Octets per multipart upload part. Bodies up to this size go in one PutObject.
    part_size: int = 8 * 1024 * 1024
    # Seconds to connect and to wait for each read, and tries per request with the first included.
    timeout: float = 30.0
    max_attempts: int = 3
    # HTTP connections to the endpoint per worker process.
    max_connections: int = 50
    # Seconds between sweeps for orphaned objects (mta/storage/sweep.py), one
    # node at a time; 0 turns the background sweep off.
    sweep_interval: float = 21600.0
    # Seconds an object must exist before a sweep may delete it, far above
    # the time between writing a body and committing its envelope.
    sweep_min_age: float = 86400.0


@dataclass
class CertificateFiles:
    cert_file: str = ""
    key_file: str = ""


@dataclass
class TlsConfig:
    # Empty means: make a self-signed certificate under data_dir/tls.
    cert_file: str = ""
    key_file: str = ""
    # Certificates for the names clients ask for with SNI, exact or as a
    # wildcard: "mail.example.org" = { cert_file = "...", key_file = "..." }.
    sni: dict[str, CertificateFiles] = field(default_factory=dict)


@dataclass
class ListenerConfig:
    address: str = "127.0.0.1"
    port: int = 2525
    enabled: bool = True
    # Expect a PROXY protocol header (v1 or v2) from a load balancer before
    # the greeting. The client address in it is used for policy and logs,
    # so enable it only where nothing but the load balancer can connect.
    proxy_protocol: bool = False
    # Limits of this listener; 0 takes the [smtp] value.
    max_message_size: int = 0
    max_recipients: int = 0


@dataclass
class CheckConfig:
    """One before-queue content check (a virus scanner, a spam filter)."""

    # "package.module:callable": called with ``options``, it returns a
    # mta.smtp.hooks.BeforeQueueCheck.
    factory: str = ""
    # Seconds one message's check may take before on_failure applies.
    timeout: float = 30.0
    # What a check that fails or times out means: "tempfail" (451 4.7.1, the
    # client retries later) or "accept" (the message goes on unchecked).
    on_failure: str = "tempfail"
    listeners: list[str] = field(default_factory=lambda: ["mx"])
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SmtpConfig:
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    # Seconds a client may stay silent before the session is closed with
    # 421 4.4.2 (RFC 5321 section 4.5.3.2.7 recommends at least 300).
    idle_timeout: float = 300.0
    # Seconds from 354 to the end of data, however slowly the octets arrive.
    data_timeout: float = 600.0
    # Seconds a whole session may last, for clients that never go idle.
    session_timeout: float = 1800.0
    # NOOP, RSET, VRFY, EXPN and HELP commands a session may send since its
    # last message before it is closed with 421 (Postfix's junk command limit).
    max_junk_commands: int = 100
    # Seconds the MX greeting waits between its first line and its last, for
    # clients outside relay_networks: a client that sends anything before
    # the last line gets 554 5.5.1 and is closed, like Postfix's postscreen
    # pregreet test. 0 still refuses a client whose data is there already.
    greet_pause: float = 0.0
    # Seconds to wait for the PROXY header on listeners with proxy_protocol.
    proxy_timeout: float = 10.0
    # Before-queue checks by name, run in name order after the end of data.
    checks: dict[str, CheckConfig] = field(default_factory=dict)
    # Sessions one client address may hold at once on one listener of one
    # worker process; the next gets 421 instead of the greeting.
    max_connections_per_client: int = 50
    # Error replies (4xx and 5xx) a session may get before it is closed with 421.
    max_errors: int = 20
    # Failed AUTH attempts from one client address (IPv6: its /64), and for
    # one login name, within auth_failure_window seconds, shared by all
    # nodes. Past either, AUTH gets 454 4.7.0 until the window ends.
    auth_max_failures_per_client: int = 10
    auth_max_failures_per_account: int = 30
    auth_failure_window: float = 900.0
    # Seconds before the reply to a failed AUTH.
    auth_failure_delay: float = 1.0
    # Client networks (CIDR) that may relay through the MX listener without
    # AUTH, like Postfix's mynetworks. Their mail is treated as outbound:
    # missing Date and Message-ID are added and it is DKIM-signed when the
    # From domain has a key. Empty: only authenticated users relay.
    relay_networks: list[str] = field(default_factory=list)
    mx: ListenerConfig = field(default_factory=lambda: ListenerConfig(port=2525))
    submission: ListenerConfig = field(default_factory=lambda: ListenerConfig(port=5870))
    # Submission over implicit TLS (RFC 8314), as on port 465.
    submissions: ListenerConfig = field(default_factory=lambda: ListenerConfig(port=4650))


@dataclass
class DomainsConfig:
    # Domains this MTA receives mail for on its MX listener.
    local: list[str] = field(default_factory=lambda: ["example.com"])
    dkim_selector: str = "mta"
    # Selector of a second, Ed25519 key (RFC 8463) per local domain. When set, each
    # message gets an RSA and an Ed25519 signature. Empty: RSA only.
    dkim_ed25519_selector: str = ""
    # Directory of DKIM key files (DOMAIN.SELECTOR.pem) from before keys moved into
    # the database. Each file is imported once at start; the table dkim_key has the keys.
    dkim_key_dir: str = "dkim"
    # Seconds between checks of pending DKIM keys against [delivery] nameservers.
    # One node at a time checks, and activates a key once DNS serves its record.
    dkim_check_interval: float = 300.0
    # Seconds a replaced DKIM key stays published (retiring) before it is retired,
    # so that mail signed with it and still in transit verifies (default 7 days).
    dkim_retire_grace: float = 604800.0
    # Seconds between each worker's checks for changed signing keys.
    dkim_reload_interval: float = 10.0


@dataclass
class SiteLimits:
    """Limits for one destination site (its MX set), given per destination domain."""

    # Parallel connections one node opens to the site at most (Postfix:
    # default_destination_concurrency_limit).
    max_concurrency: int = 20
    # Messages per second and per hour to the site, over all nodes. 0 is no limit.
    rate_per_second: float = 0.0
    rate_per_hour: float = 0.0


@dataclass
class SitesConfig:
    # Parallel connections a node starts with for a site. Each success widens
    # the window by 1/window, up to max_concurrency, and each failed
    # connection narrows it by 1, down to 1 (Postfix's concurrency feedback).
    initial_concurrency: int = 5
    max_concurrency: int = 20
    # Consecutive connection failures after which the whole site is suspended,
    # for all nodes, for suspend_seconds.
    dead_after_failures: int = 5
    suspend_seconds: float = 300.0
    # Seconds a site pauses, for all nodes, after a receiver's throttling
    # reply (421, X.7.x temporary, "rate limit"...); its window narrows too.
    throttle_pause_seconds: float = 60.0
    # Limits for the site of a destination domain, for example lower ones for
    # a large mailbox provider: "gmail.com" = { max_concurrency = 10, rate_per_second = 5 }.
    overrides: dict[str, SiteLimits] = field(default_factory=dict)


@dataclass
class OutboundTlsConfig:
    # none, may (STARTTLS when offered), encrypt (STARTTLS required) or
    # verify (required, with a trusted certificate naming the MX host).
    default: str = "may"
    # Per destination domain, or ".example.org" for its subdomains: "example.org" = "verify".
    policy: dict[str, str] = field(default_factory=dict)
    # CA certificates for verify, in PEM; empty: the system's.
    ca_file: str = ""
    # DANE (RFC 7672) for hosts whose MX, address and TLSA answers the
    # nameservers mark DNSSEC-validated (AD flag). Trust that flag only from a
    # validating resolver on this host or a protected network.
    dane: bool = True


@dataclass
class SourceConfig:
    """Declared source addresses, pools of them, and the rules that choose a pool."""

    # Every address mail may leave from -> the host name used in EHLO from it.
    addresses: dict[str, str] = field(default_factory=dict)
    # Pools of declared addresses by name; "default" serves messages no rule names.
    pools: dict[str, list[str]] = field(default_factory=dict)
    # Sender domain (or a parent) -> pool, checked first; then the sender's
    # tenant -> pool; then destination domain (or a parent) -> pool.
    sender_rules: dict[str, str] = field(default_factory=dict)
    # Tenants (customers of the operator) by name -> their sender domains.
    tenants: dict[str, list[str]] = field(default_factory=dict)
    tenant_rules: dict[str, str] = field(default_factory=dict)
    destination_rules: dict[str, str] = field(default_factory=dict)


@dataclass
class WarmupConfig:
    # Messages per day to each destination site on each day of an address's
    # ramp; after the last day the address is warm.
    schedule: list[int] = field(default_factory=lambda: [50, 100, 500, 1000, 5000, 10000, 20000, 50000])
    # Source addresses on their ramp -> the day it began, "YYYY-MM-DD".
    addresses: dict[str, str] = field(default_factory=dict)


@dataclass
class MtaStsConfig:
    # Look up and apply destinations' MTA-STS policies (RFC 8461).
    enabled: bool = True
    # Port of the policy hosts' HTTPS servers; only test setups change it.
    port: int = 443


@dataclass
class TlsReportsConfig:
    """Daily TLS reports (RFC 8460) to destinations that publish a _smtp._tls record."""

    enabled: bool = True
    # Named in reports; empty: server.hostname.
    organization: str = ""
    # Contact address in reports; empty: postmaster at the first local domain.
    contact: str = ""
    # Envelope and From address of report mail, DKIM-signed when its domain
    # has a key; empty: noreply-tlsrpt at the first local domain.
    sender: str = ""
    # Seconds between adding a node's session counts to the database.
    flush_seconds: float = 60.0
    # Seconds between checks for reports of ended days to send.
    interval: float = 3600.0


@dataclass
class SuppressionConfig:
    # Fail recipients on their sender domain's suppression list before sending.
    enabled: bool = True
    # Days an address stays suppressed after a receiver replied that it does not exist.
    bounce_days: int = 90


@dataclass
class DeliveryConfig:
    nameservers: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    dns_port: int = 53
    # Outbound connections bind to one of these; empty means the kernel picks.
    source_addresses: list[str] = field(default_factory=list)
    # Static routes, like Postfix transport maps: domain -> "host:port".
    routes: dict[str, str] = field(default_factory=dict)
    # Port of remote MX hosts; only test setups change it.
    smtp_port: int = 25
    concurrency: int = 100
    connect_timeout: float = 30.0
    # Seconds to wait for the reply after the final dot (RFC 5321 4.5.3.2.6).
    data_timeout: float = 600.0
    lease_seconds: float = 300.0
    # Seconds a stopping worker lets delivery attempts in flight finish. It
    # then cancels the rest and releases their rows, to be tried again at once.
    stop_grace: float = 20.0
    retry_schedule: list[float] = field(
        default_factory=lambda: [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0])
    max_age: float = 5 * 86400.0
    # Seconds after arrival when the sender of a message still deferred gets
    # one notice of the delay (Postfix: delay_warning_time). 0: no notice.
    delay_notice_after: float = 4 * 3600.0
    # Days of delivery history (attempts and their replies) kept, in daily partitions.
    history_days: int = 30
    # Seconds between queue scans when no NOTIFY arrives.
    poll_interval: float = 5.0
    # Seconds an SMTP connection stays open after a message, waiting for the
    # next one to the same host (Postfix: smtp_connection_cache_time_limit).
    # 0 closes every connection after its message.
    connection_cache_seconds: float = 2.0
    # Messages one SMTP connection carries before it is closed.
    connection_reuse_limit: int = 100
    # Local domains whose mail goes to a mailbox server over LMTP instead of
    # the mailbox store: domain -> "unix:/path", "host:port" or "[ipv6]:port".
    lmtp: dict[str, str] = field(default_factory=dict)
    sites: SitesConfig = field(default_factory=SitesConfig)
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)
    tls: OutboundTlsConfig = field(default_factory=OutboundTlsConfig)
    mta_sts: MtaStsConfig = field(default_factory=MtaStsConfig)
    tls_reports: TlsReportsConfig = field(default_factory=TlsReportsConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)


@dataclass
class InboundConfig:
    """Authentication of mail arriving on MX from hosts outside relay_networks."""

    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    # Mail that fails DMARC for a domain publishing p=reject: "reject" (550
    # 5.7.1), "quarantine" (accept with the quarantine flag), or "accept".
    dmarc_reject_action: str = "reject"


@dataclass
class AuditConfig:
    """The message auditor (mta/message_audit.py), which one node at a time runs."""

    # Seconds between audit rounds: an accepted message or delivery outcome
    # is normally in the audit log within about this long.
    interval: float = 1.0
    # Messages and delivery events read per transaction, each at most.
    batch_size: int = 500


@dataclass
class HttpConfig:
    address: str = "127.0.0.1"
    port: int = 8025
    enabled: bool = True
    # /health returns 503 once more than this many deliveries are queued.
    backlog_threshold: int = 100_000


@dataclass
class DnsConfig:
    """The records that ``mta dns records`` prints for a local domain and ``mta dns check`` expects."""

    # TTL in seconds of every printed record.
    ttl: int = 3600
    # Public MX host names in order of preference (printed with priority 10,
    # 20, ...); empty: server.hostname.
    mx: list[str] = field(default_factory=list)
    # p= of the _dmarc record: none, quarantine or reject.
    dmarc_policy: str = "quarantine"
    # Address for DMARC aggregate reports (rua=mailto:); empty: postmaster@ the domain.
    dmarc_rua: str = ""
    # mode of the MTA-STS policy (RFC 8461): testing, enforce or none.
    mta_sts_mode: str = "testing"
    # Seconds senders may cache the MTA-STS policy.
    mta_sts_max_age: int = 604800
    # Address for TLS reports (RFC 8460, rua=mailto:); empty: tls-reports@ the domain.
    tlsrpt_rua: str = ""


@dataclass
class MailboxConfig:
    """The mailbox store of local deliveries (mta/mailbox)."""

    # Octets: a decoded attachment larger than this is also stored as an
    # object of its own, listed and fetched separately. The message body
    # keeps it too, so such attachments take their size twice. 0: never.
    attachment_threshold: int = 256 * 1024


@dataclass
class RetentionConfig:
    """How long mailbox messages are kept after delivery (mta/gdpr/retention.py).

    Days count from delivery to the mailbox; 0 keeps mail until it is deleted
    or erased. A mailbox entry takes precedence over its domain's entry, and
    that over mailbox_days. Addresses under a legal hold are never purged.
    """

    mailbox_days: int = 0
    # Domain -> days, such as "example.com" = 365.
    domains: dict[str, int] = field(default_factory=dict)
    # Address -> days, such as "archive@example.com" = 0.
    mailboxes: dict[str, int] = field(default_factory=dict)
    # Seconds between purges; one node at a time runs each.
    interval: float = 3600.0
    # Mailbox messages removed per transaction.
    batch_size: int = 500


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir).resolve()

    def data_path(self, value: str) -> Path:
        """Resolve a configured path against ``server.data_dir``."""
        path = Path(value)
        return path if path.is_absolute() else self.data_dir / path

    def listener_limits(self, name: str) -> tuple[int, int]:
        """Return the max message size and max recipients of a listener, with its overrides applied."""
        listener: ListenerConfig = getattr(self.smtp, name)
        return (listener.max_message_size or self.smtp.max_message_size,
                listener.max_recipients or self.smtp.max_recipients)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.local_domains

    def route_table(self) -> dict[str, tuple[str, int]]:
        """Return the static routes as domain -> (host, port)."""
        return {domain: parse_route(f"delivery.routes.{domain}", target)
                for domain, target in self.delivery.routes.items()}

    @property
    def local_domains(self) -> frozenset[str]:
        return frozenset(d.lower().rstrip(".") for d in self.domains.local)


def load(path: Path | None) -> Config:
    """Load a TOML file over the embedded defaults and check the result."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"invalid TOML in {path}: {error}") from None

    config = _build(Config, raw, "")
    check(config)
    return config


def _suggestion(name: str, known: set[str]) -> str:
    """Return " (did you mean X?)" for the known key closest to a misspelt one, or "" when none is close."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table")

    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        names = ", ".join(prefix + name + _suggestion(name, known) for name in sorted(unknown))
        raise ConfigError(f"unknown configuration key: {names}")

    instance = cls()
    for name, value in raw.items():
        key = prefix + name
        default = getattr(instance, name)
        if is_dataclass(default):
            setattr(instance, name, _build(type(default), value, key + "."))
        else:
            setattr(instance, name, _coerce(key, hints[name], default, value))
    return instance


def _coerce(key: str, hint: Any, default: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}: {value!r}")
        (element,) = get_args(hint)
        return [_scalar(f"{key}[{index}]", element, item) for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__}: {value!r}")
        _, element = get_args(hint)
        if get_origin(element) is list:
            return {name: _coerce(f"{key}.{name}", element, None, items) for name, items in value.items()}
        if element is Any:
            # Options passed through to code that checks them itself.
            return dict(value)
        if is_dataclass(element):
            return {name: _build(element, item, f"{key}.{name}.") for name, item in value.items()}
        return {name: _scalar(f"{key}.{name}", element, item) for name, item in value.items()}
    return _scalar(key, type(default), value)


def _scalar(key: str, expected: type, value: Any) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"{key} must be of type {expected.__name__}, got {type(value).__name__}: {value!r}")
    return value


# Inclusive bounds of numeric settings: (table, field) -> (minimum, maximum).
_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("server", "workers"): (1, 256),
    ("database", "pool_min"): (1, 1000),
    ("database", "pool_max"): (1, 1000),
    ("smtp", "max_message_size"): (1024, 2 ** 31 - 1),
    # RFC 5321 section 4.5.3.1.8: a server must take at least 100 recipients.
    ("smtp", "max_recipients"): (100, 100_000),
    ("smtp", "idle_timeout"): (1.0, 86400.0),
    ("smtp", "data_timeout"): (1.0, 86400.0),
    ("smtp", "session_timeout"): (1.0, 86400.0),
    ("smtp", "max_junk_commands"): (1, 100_000),
    ("smtp", "proxy_timeout"): (1.0, 3600.0),
    ("smtp", "greet_pause"): (0.0, 60.0),
    ("smtp", "max_connections_per_client"): (1, 100_000),
    ("smtp", "max_errors"): (1, 10_000),
    ("smtp", "auth_max_failures_per_client"): (2, 100_000),
    ("smtp", "auth_max_failures_per_account"): (2, 100_000),
    ("smtp", "auth_failure_window"): (1.0, 86400.0),
    ("smtp", "auth_failure_delay"): (0.0, 30.0),
    ("storage", "inline_max_size"): (0, 16 * 1024 * 1024),
    ("storage", "data_key_cache_size"): (1, 10_000_000),
    ("storage", "data_key_cache_seconds"): (1.0, 86400.0),
    # S3 rejects parts under 5 MiB, and each upload holds one part in a worker's memory.
    ("storage", "part_size"): (5 * 1024 * 1024, 512 * 1024 * 1024),
    ("storage", "timeout"): (1.0, 3600.0),
    ("storage", "max_attempts"): (1, 10),
    ("storage", "max_connections"): (1, 1000),
    ("storage", "sweep_interval"): (0.0, 30 * 86400.0),
    ("storage", "sweep_min_age"): (3600.0, 365 * 86400.0),
    ("delivery", "dns_port"): (1, 65535),
    ("delivery", "smtp_port"): (1, 65535),
    ("delivery", "concurrency"): (1, 100_000),
    ("delivery", "connect_timeout"): (0.1, 3600.0),
    ("delivery", "data_timeout"): (1.0, 86400.0),
    ("delivery", "lease_seconds"): (1.0, 86400.0),
    ("delivery", "stop_grace"): (0.0, 3600.0),
    ("delivery", "max_age"): (60.0, 365 * 86400.0),
    ("delivery", "delay_notice_after"): (0.0, 365 * 86400.0),
    ("delivery", "history_days"): (1, 3650),
    ("delivery.suppression", "bounce_days"): (1, 3650),
    ("delivery.mta_sts", "port"): (1, 65535),
    ("delivery", "poll_interval"): (0.05, 3600.0),
    ("delivery", "connection_cache_seconds"): (0.0, 300.0),
    ("delivery", "connection_reuse_limit"): (1, 100_000),
    ("audit", "interval"): (0.05, 3600.0),
    ("audit", "batch_size"): (1, 100_000),
    ("http", "port"): (1, 65535),
    ("http", "backlog_threshold"): (0, 2 ** 31 - 1),
    ("dns", "ttl"): (60, 604800),
    ("mailbox", "attachment_threshold"): (0, 2 ** 31 - 1),
    ("retention", "mailbox_days"): (0, 36500),
    ("retention", "interval"): (1.0, 86400.0),
    ("retention", "batch_size"): (1, 100_000),
    # RFC 8461 section 3.2: max_age is at most 31557600 seconds (about a year).
    ("dns", "mta_sts_max_age"): (60, 31_557_600),
}

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("plain", "json")
LISTENERS = ("mx", "submission", "submissions")


def _check_bounds(config: "Config") -> None:
    for (table, name), (minimum, maximum) in _BOUNDS.items():
        section = config
        for part in table.split("."):
            section = getattr(section, part)
        value = getattr(section, name)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{table}.{name} must be between {minimum:g} and {maximum:g}, got {value!r}")


def _check_warmup(delivery: DeliveryConfig) -> None:
    warmup = delivery.warmup
    if not warmup.schedule or any(not 1 <= step <= 10_000_000 for step in warmup.schedule):
        raise ConfigError(f"delivery.warmup.schedule must list daily caps from 1 to 10000000, got {warmup.schedule}")
    declared = set(delivery.source.addresses) | set(delivery.source_addresses)
    for address, day in warmup.addresses.items():
        if address not in declared:
            raise ConfigError(f"delivery.warmup.addresses: {address} is not a declared source address")
        try:
            date.fromisoformat(day)
        except ValueError:
            raise ConfigError(f"delivery.warmup.addresses.{address!r}: invalid date {day!r}, "
                              "expected YYYY-MM-DD") from None


def _check_tls_files(tls: TlsConfig) -> None:
    """Refuse certificate and key files that do not exist, naming them."""
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("tls.cert_file and tls.key_file go together: set both, or neither for a self-signed one")
    pairs = [("tls", tls.cert_file, tls.key_file)]
    pairs += [(f"tls.sni.{name}", files.cert_file, files.key_file) for name, files in tls.sni.items()]
    for key, cert_file, key_file in pairs:
        for field_name, path in (("cert_file", cert_file), ("key_file", key_file)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{key}.{field_name} not found: {path}")


def _check_source(delivery: DeliveryConfig) -> None:
    source = delivery.source
    if not (source.addresses or source.pools or source.sender_rules or source.destination_rules
            or source.tenants or source.tenant_rules):
        return
    if delivery.source_addresses:
        raise ConfigError("use either delivery.source_addresses or [delivery.source], not both")
    for address, helo_name in source.addresses.items():
        _check_address("delivery.source.addresses", address)
        if not helo_name.strip() or " " in helo_name:
            raise ConfigError(f"delivery.source.addresses.{address!r}: invalid EHLO host name {helo_name!r}")
    if "default" not in source.pools:
        raise ConfigError("delivery.source.pools needs a pool named default, for messages no rule names")
    for name, addresses in source.pools.items():
        if not addresses:
            raise ConfigError(f"delivery.source.pools.{name} is empty")
        for address in addresses:
            if address not in source.addresses:
                raise ConfigError(f"delivery.source.pools.{name}: {address} is not a declared source address "
                                  "(delivery.source.addresses)")
    tables = (("sender_rules", source.sender_rules), ("tenant_rules", source.tenant_rules),
              ("destination_rules", source.destination_rules))
    for table, rules in tables:
        for domain, pool in rules.items():
            if pool not in source.pools:
                raise ConfigError(f"delivery.source.{table}.{domain}: unknown pool {pool!r}")
    _check_tenants(source)


def _check_tenants(source: SourceConfig) -> None:
    owners: dict[str, str] = {}
    for tenant, domains in source.tenants.items():
        for domain in domains:
            domain = domain.lower().rstrip(".")
            if domain in owners:
                raise ConfigError(f"delivery.source.tenants: {domain} belongs to both {owners[domain]} and {tenant}")
            owners[domain] = tenant
    for tenant in source.tenant_rules:
        if tenant not in source.tenants:
            raise ConfigError(f"delivery.source.tenant_rules.{tenant}: unknown tenant, not in delivery.source.tenants")


def _check_logging(config: "Config") -> None:
    if config.logging.format not in LOG_FORMATS:
        raise ConfigError(f"logging.format must be one of {', '.join(LOG_FORMATS)}, got {config.logging.format!r}")
    if config.logging.pseudonymise_addresses and not config.logging.pseudonym_key_file.strip():
        raise ConfigError("logging.pseudonym_key_file must not be empty when logging.pseudonymise_addresses is on")


def _check_dkim_timing(domains: DomainsConfig) -> None:
    bounds = [("dkim_check_interval", domains.dkim_check_interval, 0.1, 86400.0),
              ("dkim_retire_grace", domains.dkim_retire_grace, 0.0, 366 * 86400.0),
              ("dkim_reload_interval", domains.dkim_reload_interval, 0.1, 3600.0)]
    for name, seconds, low, high in bounds:
        if not low <= seconds <= high:
            raise ConfigError(f"domains.{name} must be between {low:g} and {high:g} seconds, got {seconds:g}")


def _check_distinct_sockets(config: "Config") -> None:
    """Refuse two listeners on one address and port: with SO_REUSEPORT they would share it silently."""
    seen: list[tuple[str, int, str]] = []
    listeners = [(f"smtp.{name}", getattr(config.smtp, name)) for name in LISTENERS]
    listeners.append(("http", config.http))
    for key, listener in listeners:
        if not listener.enabled:
            continue
        for address, port, other in seen:
            # A wildcard address covers every address of the host.
            overlapping = address == listener.address or {address, listener.address} & {"0.0.0.0", "::"}
            if port == listener.port and overlapping:
                raise ConfigError(f"{key} on {listener.address}:{listener.port} and {other} on "
                                  f"{address}:{port} share a port")
        seen.append((listener.address, listener.port, key))


DMARC_REJECT_ACTIONS = ("reject", "quarantine", "accept")
OUTBOUND_TLS_MODES = ("none", "may", "encrypt", "verify")
CHECK_FAILURE_MODES = ("tempfail", "accept")


def _check_check(name: str, check_config: CheckConfig) -> None:
    key = f"smtp.checks.{name}"
    module, separator, attribute = check_config.factory.partition(":")
    if not separator or not module or not attribute:
        raise ConfigError(f"{key}.factory must look like package.module:callable, got {check_config.factory!r}")
    try:
        found = getattr(importlib.import_module(module), attribute, None)
    except ImportError as error:
        raise ConfigError(f"{key}.factory: cannot import {module}: {error}") from None
    if not callable(found):
        raise ConfigError(f"{key}.factory: {module} has no callable {attribute}")
    if check_config.on_failure not in CHECK_FAILURE_MODES:
        raise ConfigError(f"{key}.on_failure must be one of {', '.join(CHECK_FAILURE_MODES)}, "
                          f"got {check_config.on_failure!r}")
    if not 0.1 <= check_config.timeout <= 3600.0:
        raise ConfigError(f"{key}.timeout must be between 0.1 and 3600 seconds, got {check_config.timeout}")
    for listener in check_config.listeners:
        if listener not in LISTENERS:
            raise ConfigError(f"{key}.listeners: unknown listener {listener!r}, expected one of {', '.join(LISTENERS)}")


def check(config: Config) -> None:
    """Check bounds and cross-field rules that types alone do not catch."""
    _check_bounds(config)
    if not config.server.hostname.strip():
        raise ConfigError("server.hostname must not be empty: it names this host in EHLO, Received and bounces")
    if config.server.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"server.log_level must be one of {', '.join(LOG_LEVELS)}, got {config.server.log_level!r}")
    _check_logging(config)
    if config.database.pool_min > config.database.pool_max:
        raise ConfigError(f"database.pool_min ({config.database.pool_min}) must not exceed "
                          f"database.pool_max ({config.database.pool_max})")
    if config.database.password_file and not config.database.url:
        raise ConfigError("database.password_file needs database.url: the embedded PostgreSQL has no password")
    for index, interval in enumerate(config.delivery.retry_schedule):
        if not 1.0 <= interval <= 7 * 86400.0:
            raise ConfigError(f"delivery.retry_schedule[{index}] must be between 1 and 604800 seconds, "
                              f"got {interval!r}")

    for name in LISTENERS:
        listener = getattr(config.smtp, name)
        if not 0 < listener.port < 65536:
            raise ConfigError(f"smtp.{name}.port must be between 1 and 65535, got {listener.port}")
        _check_address(f"smtp.{name}.address", listener.address)
        if listener.max_message_size and not 1024 <= listener.max_message_size <= 2 ** 31 - 1:
            raise ConfigError(f"smtp.{name}.max_message_size must be 0 or between 1024 and {2 ** 31 - 1}, "
                              f"got {listener.max_message_size}")
        if listener.max_recipients and not 100 <= listener.max_recipients <= 100_000:
            # RFC 5321 section 4.5.3.1.8: a server must take at least 100 recipients.
            raise ConfigError(f"smtp.{name}.max_recipients must be 0 or between 100 and 100000, "
                              f"got {listener.max_recipients}")

    for name, files in config.tls.sni.items():
        if not name.strip() or not files.cert_file or not files.key_file:
            raise ConfigError(f"tls.sni.{name!r} needs a name, cert_file and key_file")
    _check_tls_files(config.tls)

    for name, check_config in config.smtp.checks.items():
        _check_check(name, check_config)
        if check_config.timeout >= config.smtp.idle_timeout:
            raise ConfigError(f"smtp.checks.{name}.timeout ({check_config.timeout:g} s) must be shorter than "
                              f"smtp.idle_timeout ({config.smtp.idle_timeout:g} s), which the client waits at most")
    if config.smtp.greet_pause >= config.smtp.idle_timeout:
        raise ConfigError(f"smtp.greet_pause ({config.smtp.greet_pause:g} s) must be shorter than "
                          f"smtp.idle_timeout ({config.smtp.idle_timeout:g} s)")

    if config.smtp.submissions.proxy_protocol:
        raise ConfigError("smtp.submissions.proxy_protocol is not supported: with implicit TLS the PROXY header "
                          "would have to come before the TLS handshake; use it on mx or submission")

    _check_distinct_sockets(config)

    for network in config.smtp.relay_networks:
        _check_relay_network(network)

    for domain in config.delivery.tls.policy:
        if not re.fullmatch(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?", domain):
            raise ConfigError(f"delivery.tls.policy: invalid key {domain!r}, expected a domain such as example.org, "
                              "or .example.org for its subdomains")
    for key, mode in [("delivery.tls.default", config.delivery.tls.default),
                      *((f"delivery.tls.policy.{domain}", mode) for domain, mode in config.delivery.tls.policy.items())]:
        if mode not in OUTBOUND_TLS_MODES:
            raise ConfigError(f"{key} must be one of {', '.join(OUTBOUND_TLS_MODES)}, got {mode!r}")
    if config.delivery.tls.ca_file and not Path(config.delivery.tls.ca_file).is_file():
        raise ConfigError(f"delivery.tls.ca_file not found: {config.delivery.tls.ca_file}")

    if config.inbound.dmarc and not (config.inbound.spf and config.inbound.dkim):
        raise ConfigError("inbound.dmarc needs inbound.spf and inbound.dkim: without one of them, DMARC would "
                          "fail mail that passes only through the check that is off")

    if config.inbound.dmarc_reject_action not in DMARC_REJECT_ACTIONS:
        raise ConfigError(f"inbound.dmarc_reject_action must be one of {', '.join(DMARC_REJECT_ACTIONS)}, "
                          f"got {config.inbound.dmarc_reject_action!r}")

    if not config.domains.local:
        raise ConfigError("domains.local must name at least one domain")
    if config.domains.dkim_ed25519_selector == config.domains.dkim_selector:
        raise ConfigError("domains.dkim_ed25519_selector must differ from domains.dkim_selector: "
                          "each selector publishes one key")
    _check_dkim_timing(config.domains)

    for address in config.delivery.source_addresses:
        _check_address("delivery.source_addresses", address)
    _check_source(config.delivery)
    _check_warmup(config.delivery)
    for address in config.delivery.nameservers:
        _check_address("delivery.nameservers", address)
    for domain, target in config.delivery.routes.items():
        parse_route(f"delivery.routes.{domain}", target)
    _check_lmtp(config)
    reports = config.delivery.tls_reports
    if not 1.0 <= reports.flush_seconds <= 3600.0:
        raise ConfigError(f"delivery.tls_reports.flush_seconds must be between 1 and 3600, got {reports.flush_seconds}")
    if not 1.0 <= reports.interval <= 86400.0:
        raise ConfigError(f"delivery.tls_reports.interval must be between 1 and 86400, got {reports.interval}")
    for name in ("contact", "sender"):
        value = getattr(reports, name)
        if value and "@" not in value:
            raise ConfigError(f"delivery.tls_reports.{name} must be an email address, got {value!r}")

    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        raise ConfigError("tls.cert_file and tls.key_file must be set together")
    _check_storage(config.storage)
    if not config.delivery.retry_schedule:
        raise ConfigError("delivery.retry_schedule must name at least one interval")
    _check_sites(config.delivery.sites)
    _check_dns(config.dns)
    _check_retention(config.retention)
    try:
        check_webhooks(config.webhooks)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    complaints = config.webhooks.complaints_address
    if complaints and ("@" not in complaints or not config.is_local_domain(complaints.rpartition("@")[2])):
        raise ConfigError(f"webhooks.complaints_address must be an address in a local domain, got {complaints!r}")
    if complaints:
        _check_complaints_from(config)


def _check_complaints_from(config: Config) -> None:
    """Raise ConfigError unless feedback reports can be authenticated as coming from a configured reporter."""
    reporters = config.webhooks.complaints_from
    if not reporters:
        raise ConfigError("webhooks.complaints_address needs webhooks.complaints_from: list the domains that send "
                          "your feedback loop reports (their DKIM d= or SPF MAIL FROM domain), such as "
                          '["fbl.example-isp.net"]')
    for domain in reporters:
        if not _is_host_name(domain):
            raise ConfigError(f"webhooks.complaints_from: invalid domain {domain!r}, expected a name such as "
                              "fbl.example-isp.net")
        # A listed domain covers its subdomains, so a public suffix would trust anyone who registers under it.
        if is_public_suffix(domain):
            raise ConfigError(f"webhooks.complaints_from: {domain!r} is a public suffix; list the reporter's "
                              "own domain")
    if not (config.inbound.spf or config.inbound.dkim):
        raise ConfigError("webhooks.complaints_address needs inbound.spf or inbound.dkim: without them, "
                          "no feedback report can be authenticated")


def _check_retention(retention: RetentionConfig) -> None:
    for table, entries in (("domains", retention.domains), ("mailboxes", retention.mailboxes)):
        for name, days in entries.items():
            if not 0 <= days <= 36500:
                raise ConfigError(f"retention.{table}.{name} must be between 0 (keep) and 36500 days, got {days}")
            if name != name.lower():
                raise ConfigError(f"retention.{table}: write {name!r} in lower case, as {name.lower()!r}")
    for address in retention.mailboxes:
        if "@" not in address:
            raise ConfigError(f"retention.mailboxes: {address!r} is not an email address")


def _check_lmtp(config: Config) -> None:
    for domain, destination in config.delivery.lmtp.items():
        if not config.is_local_domain(domain):
            raise ConfigError(f"delivery.lmtp.{domain}: {domain} is not in domains.local, and only mail for local "
                              "domains goes over LMTP")
        try:
            parse_destination(destination)
        except ValueError as error:
            raise ConfigError(f"delivery.lmtp.{domain}: {error}") from None


DMARC_POLICIES = ("none", "quarantine", "reject")
MTA_STS_MODES = ("testing", "enforce", "none")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# One address for a mailto: URI in rua=. White space, ',' ';' and '!' are excluded
# because they end the URI or the tag, or start a size limit, in DMARC's rua= (RFC 7489).
_RUA_ADDRESS = re.compile(r"[^\s,;!@]+@[A-Za-z0-9.-]+")


def _is_host_name(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _check_dns(dns: DnsConfig) -> None:
    for host in dns.mx:
        if not _is_host_name(host):
            raise ConfigError(f"dns.mx: invalid host name {host!r}, expected a name such as mx1.example.com")
    if dns.dmarc_policy not in DMARC_POLICIES:
        raise ConfigError(f"dns.dmarc_policy must be one of {', '.join(DMARC_POLICIES)}, got {dns.dmarc_policy!r}")
    if dns.mta_sts_mode not in MTA_STS_MODES:
        raise ConfigError(f"dns.mta_sts_mode must be one of {', '.join(MTA_STS_MODES)}, got {dns.mta_sts_mode!r}")
    for name in ("dmarc_rua", "tlsrpt_rua"):
        value = getattr(dns, name)
        if value and not _RUA_ADDRESS.fullmatch(value):
            raise ConfigError(f"dns.{name} must be one email address without mailto:, such as "
                              f"reports@example.com, got {value!r}")


STORAGE_KINDS = ("local", "s3")
# S3 bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_storage(storage: StorageConfig) -> None:
    if storage.kind not in STORAGE_KINDS:
        raise ConfigError(f"storage.kind must be one of {', '.join(STORAGE_KINDS)}, got {storage.kind!r}")
    # The value is not echoed: an operator may have pasted the key itself here.
    if storage.master_key_env and not _ENVIRONMENT_NAME.fullmatch(storage.master_key_env):
        raise ConfigError("storage.master_key_env must be the name of an environment variable (letters, digits "
                          "and _, not starting with a digit), not the key itself")
    if storage.kind != "s3":
        return

    from mta.storage import residency

    if not _BUCKET_NAME.fullmatch(storage.bucket):
        raise ConfigError(f"storage.bucket must be an S3 bucket name (3 to 63 lowercase letters, digits, dots "
                          f"and hyphens), got {storage.bucket!r}")
    if storage.prefix.startswith("/"):
        raise ConfigError(f"storage.prefix must not start with '/', got {storage.prefix!r}")
    try:
        for pattern in storage.extra_endpoint_hosts:
            residency.check_host_pattern(pattern)
        residency.check_region(storage.region,
                               residency.is_own_service(storage.endpoint_url, storage.extra_endpoint_hosts))
        residency.resolve_endpoint(storage.region, storage.endpoint_url, storage.extra_endpoint_hosts,
                                   storage.allow_loopback_endpoint)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _check_s3_credentials(storage)


def _check_s3_credentials(storage: StorageConfig) -> None:
    if bool(storage.access_key_id) != bool(storage.secret_access_key):
        raise ConfigError("storage.access_key_id and storage.secret_access_key go together: set both, or neither "
                          "to take them from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if storage.access_key_id:
        return
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"storage.kind 's3' needs credentials: set storage.access_key_id and "
                          f"storage.secret_access_key, or {' and '.join(missing)} in the environment")


def _check_sites(sites: SitesConfig) -> None:
    limits = [("delivery.sites", sites)] + [(f"delivery.sites.overrides.{domain}", limit)
                                            for domain, limit in sites.overrides.items()]
    for key, limit in limits:
        if not 1 <= limit.max_concurrency <= 10_000:
            raise ConfigError(f"{key}.max_concurrency must be between 1 and 10000, got {limit.max_concurrency}")
    for key, limit in limits[1:]:
        for name in ("rate_per_second", "rate_per_hour"):
            if not 0 <= getattr(limit, name) <= 1_000_000:
                raise ConfigError(f"{key}.{name} must be between 0 and 1000000, got {getattr(limit, name)}")
    if not 1 <= sites.initial_concurrency <= sites.max_concurrency:
        raise ConfigError(f"delivery.sites.initial_concurrency must be between 1 and max_concurrency "
                          f"({sites.max_concurrency}), got {sites.initial_concurrency}")
    if not 1 <= sites.dead_after_failures <= 1000:
        raise ConfigError(f"delivery.sites.dead_after_failures must be between 1 and 1000, "
                          f"got {sites.dead_after_failures}")
    if not 1.0 <= sites.suspend_seconds <= 86400.0:
        raise ConfigError(f"delivery.sites.suspend_seconds must be between 1 and 86400, got {sites.suspend_seconds}")
    if not 0.0 <= sites.throttle_pause_seconds <= 86400.0:
        raise ConfigError(f"delivery.sites.throttle_pause_seconds must be between 0 and 86400, "
                          f"got {sites.throttle_pause_seconds}")


def parse_route(key: str, target: str) -> tuple[str, int]:
    """Split a ``host:port`` route target; IPv6 hosts are written in brackets."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key} must be 'host:port', got {target!r}")

    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{key} has an invalid port: {target!r}")
    return host.strip("[]"), port


# Relay networks wider than these are rejected, because they come close to an open relay.
_WIDEST_RELAY_PREFIX = {4: 8, 6: 32}


def _check_relay_network(network: str) -> None:
    try:
        parsed = ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise ConfigError(f"smtp.relay_networks must contain networks such as '10.0.0.0/8', got {network!r}") from None
    widest = _WIDEST_RELAY_PREFIX[parsed.version]
    if parsed.prefixlen < widest:
        raise ConfigError(f"smtp.relay_networks entry {network!r} is wider than /{widest}: "
                          "that would let most of the internet relay through this host")


def _check_address(key: str, address: str) -> None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"{key} must be an IP address, got {address!r}") from None
