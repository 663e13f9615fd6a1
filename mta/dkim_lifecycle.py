"""The lifecycle of DKIM keys: create at start, import old key files, rotate, activate, retire.

A rotation adds a pending key under a new dated selector. It signs only once
activated: ``mta dkim activate`` or the activation task (mta.dkim_rotation)
activate it when ``[delivery] nameservers`` return its exact TXT record,
because a receiver that cannot fetch the key fails the signature. The key it
replaces stays published as retiring for ``domains.dkim_retire_grace``
seconds, so mail signed with it and still in transit verifies, then it is
retired. Every change is written to the audit log and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import asyncpg
import dns.resolver
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta import dns_check
from mta.cli_support import audit
from mta.config import Config
from mta.dkim import PrivateKey
from mta.dkim_keys import KeyFileError, PublicKey, find_selectors, read_private_key
from mta.dkim_store import (ACTIVE, PENDING, RETIRING, DkimKeyError, StoredKey, activate, algorithm_of, insert_key,
                            list_keys)
from mta.storage.master_key import MasterKeys

log = logging.getLogger("mta.dkim")

RSA_BITS = 2048
# The first letter of a dated selector: s202612a is RSA, e202612a Ed25519.
SELECTOR_PREFIXES = {"rsa": "s", "ed25519": "e"}
# Serialises provisioning of nodes that start together, so each domain gets one key per algorithm.
PROVISION_LOCK_ID = 0x6D74646B696D
# The actor of audit entries written by the MTA itself.
MTA_ACTOR = "mta"


@dataclass(frozen=True)
class Activation:
    key: StoredKey
    # The selector of the key that now retires, or None.
    replaced: str | None


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ed25519.Ed25519PrivateKey.generate()


def dated_selector(algorithm: str, taken: set[str], today: date) -> str:
    """Return the first free selector such as s202612a for this month, trying letters a to z."""
    stem = f"{SELECTOR_PREFIXES[algorithm]}{today:%Y%m}"
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if stem + letter not in taken:
            return stem + letter
    raise DkimKeyError(f"all 26 selectors {stem}a to {stem}z are taken: rotate again next month")


async def provision(connection: asyncpg.Connection, masters: MasterKeys, config: Config) -> None:
    """Import each local domain's old key files once, then create any signing key the configuration needs.

    The key file of domains.dkim_selector (RSA) and of dkim_ed25519_selector
    become active keys, so an upgraded install keeps signing with the same
    keys. Other key files of the domain become retiring keys: they stay
    published for the grace period and never sign unless activated. A
    domain without an active RSA key, or without an active Ed25519 key when
    dkim_ed25519_selector is set, gets a new one under that selector.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", PROVISION_LOCK_ID)
        for domain in sorted(config.local_domains):
            existing = {key.selector: key for key in await list_keys(connection, domain)}
            await _import_files(connection, masters, config, domain, existing)
            await _create_missing(connection, masters, config, domain)


async def _import_files(connection: asyncpg.Connection, masters: MasterKeys, config: Config, domain: str,
                        existing: dict[str, StoredKey]) -> None:
    key_dir = config.data_path(config.domains.dkim_key_dir)
    if not key_dir.is_dir():
        return
    configured = [config.domains.dkim_selector, config.domains.dkim_ed25519_selector]
    selectors = find_selectors(key_dir, domain, config.local_domains)
    # The configured selectors first, so that they take the active place of their algorithm.
    selectors.sort(key=lambda selector: selector not in configured)
    active = {key.algorithm for key in existing.values() if key.state == ACTIVE}

    for selector in selectors:
        if selector in existing:
            continue
        path = key_dir / f"{domain}.{selector}.pem"
        try:
            private_key = read_private_key(path)
        except KeyFileError as error:
            log.error("DKIM key file not imported: %s", error)
            continue

        algorithm = algorithm_of(private_key)
        state = ACTIVE if selector in configured and algorithm not in active else RETIRING
        await insert_key(connection, masters, domain, selector, private_key, state, config.domains.dkim_retire_grace)
        if state == ACTIVE:
            active.add(algorithm)
        await audit(connection, MTA_ACTOR, "dkim.import", {"domain": domain, "selector": selector,
                                                           "algorithm": algorithm, "state": state,
                                                           "file": str(path)})
        # The file is the operator's, so it is not deleted here, but it keeps the private key in clear.
        log.warning("imported DKIM key file %s as %s key %s of %s; the MTA no longer reads the file, which still "
                    "contains the private key unencrypted: remove it once backups of the database are in place",
                    path, state, selector, domain)


async def _create_missing(connection: asyncpg.Connection, masters: MasterKeys, config: Config, domain: str) -> None:
    configured = {"rsa": config.domains.dkim_selector}
    if config.domains.dkim_ed25519_selector:
        configured["ed25519"] = config.domains.dkim_ed25519_selector
    keys = await list_keys(connection, domain)
    active = {key.algorithm for key in keys if key.state == ACTIVE}
    taken = {key.selector for key in keys}

    for algorithm, selector in configured.items():
        if algorithm in active:
            continue
        if selector in taken:
            selector = dated_selector(algorithm, taken, date.today())
        key = await insert_key(connection, masters, domain, selector, generate_key(algorithm), ACTIVE)
        taken.add(selector)
        await audit(connection, MTA_ACTOR, "dkim.create", {"domain": domain, "selector": selector,
                                                           "algorithm": algorithm, "state": ACTIVE})
        log.info("created DKIM key %s of %s (%s): publish %s", selector, domain, algorithm,
                 key.public.zone_line(domain))


async def rotate(connection: asyncpg.Connection, masters: MasterKeys, domain: str, algorithms: list[str],
                 actor: str) -> list[StoredKey]:
    """Create a pending key under a new dated selector for each algorithm, in the caller's transaction.

    Raises DkimKeyError when the domain already has a pending key of one of
    the algorithms, because two next keys would leave it unclear which to publish.
    """
    await connection.execute("SELECT pg_advisory_xact_lock($1)", PROVISION_LOCK_ID)
    keys = await list_keys(connection, domain)
    taken = {key.selector for key in keys}
    created = []
    for algorithm in algorithms:
        waiting = [key.selector for key in keys if key.algorithm == algorithm and key.state == PENDING]
        if waiting:
            raise DkimKeyError(f"{domain} already has the pending {algorithm} key {waiting[0]}: publish its record "
                               f"and activate it (mta dkim activate {domain} {waiting[0]}) before rotating again")
        selector = dated_selector(algorithm, taken, date.today())
        key = await insert_key(connection, masters, domain, selector, generate_key(algorithm), PENDING)
        taken.add(selector)
        created.append(key)
        await audit(connection, actor, "dkim.rotate", {"domain": domain, "selector": selector,
                                                       "algorithm": algorithm, "state": PENDING})
        log.info("created pending DKIM key %s of %s (%s), by %s", selector, domain, algorithm, actor)
    return created


def record_served(resolver: dns.resolver.Resolver, domain: str, key: PublicKey) -> bool:
    """Return whether the nameservers return the key's exact TXT record, ignoring white space.

    Raises dns_check.NameserverError when a query times out or fails.
    """
    name = f"{key.selector}._domainkey.{domain}."
    expected = _without_space(key.txt_value())
    return any(_without_space(text) == expected for text in dns_check.lookup(resolver, name, "TXT"))


def _without_space(text: str) -> str:
    return "".join(text.split())


async def activate_key(connection: asyncpg.Connection, domain: str, selector: str, grace: float, actor: str,
                       forced: bool = False) -> Activation:
    """Activate a key in the caller's transaction, audit it and log it; see mta.dkim_store.activate."""
    replaced = await activate(connection, domain, selector, grace)
    (key,) = [key for key in await list_keys(connection, domain) if key.selector == selector]
    await audit(connection, actor, "dkim.activate", {"domain": domain, "selector": selector,
                                                     "algorithm": key.algorithm, "replaced": replaced,
                                                     "dns_checked": not forced})
    if replaced is not None:
        await audit(connection, actor, "dkim.retiring", {"domain": domain, "selector": replaced,
                                                         "algorithm": key.algorithm, "grace_seconds": grace})
    log.info("DKIM key %s of %s (%s) activated by %s%s; %s", selector, domain, key.algorithm, actor,
             " without a DNS check (--force)" if forced else " after DNS returned its record",
             f"key {replaced} is retiring for {grace:.0f} s" if replaced else "it replaces no key")
    return Activation(key, replaced)
