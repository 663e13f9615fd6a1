"""Source addresses for outbound connections: the operator's declared addresses, pools, and rules.

Every address mail may leave from is declared in
``[delivery.source.addresses]`` with the host name used in EHLO from it
(its reverse DNS name, so receivers' checks agree). Pools group declared
addresses. The configuration refuses a pool address that is not declared,
so mail cannot leave from an address outside the operator's (EU) list.
Rules choose a pool by sender domain, then by the tenant that owns the
sender domain, then by destination domain (domains exact or by a parent
domain), else the pool named ``default``. A tenant is a named group of
sender domains, one customer of the operator. Within a pool, connections
take the addresses of the target's IP family in turn.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

from mta.config import Config


@dataclass(frozen=True)
class SourcePool:
    name: str
    addresses: tuple[str, ...]


class SourceAddresses:
    def __init__(self, helo_names: dict[str, str], pools: dict[str, list[str]], sender_rules: dict[str, str],
                 destination_rules: dict[str, str], default_helo: str, tenants: dict[str, list[str]] | None = None,
                 tenant_rules: dict[str, str] | None = None):
        self.helo_names = dict(helo_names)
        self.default_helo = default_helo
        self.pools = {name: SourcePool(name, tuple(addresses)) for name, addresses in pools.items()}
        self.sender_rules = _normalised(sender_rules)
        self.destination_rules = _normalised(destination_rules)
        # Sender domain (or a parent) -> the pool of the tenant that owns it.
        self.tenant_domain_rules = {domain.lower().rstrip("."): (tenant_rules or {})[tenant]
                                    for tenant, domains in (tenants or {}).items() if tenant in (tenant_rules or {})
                                    for domain in domains}
        self._turns = {name: {4: itertools.cycle(_of_family(pool.addresses, 4)),
                              6: itertools.cycle(_of_family(pool.addresses, 6))}
                       for name, pool in self.pools.items()}
        # Rotates the addresses of pools narrowed for one message, which have no cycle of their own.
        self._narrowed_turn = itertools.count()

    @classmethod
    def from_list(cls, addresses: list[str], default_helo: str) -> SourceAddresses:
        """Build the single default pool of the plain ``delivery.source_addresses`` list (none when empty)."""
        pools = {"default": list(addresses)} if addresses else {}
        return cls({address: default_helo for address in addresses}, pools, {}, {}, default_helo)

    def pool_for(self, sender_domain: str, destination_domain: str) -> SourcePool | None:
        """Return the pool for a message, or None when no source address is configured (the kernel picks)."""
        name = (_lookup(self.sender_rules, sender_domain) or _lookup(self.tenant_domain_rules, sender_domain)
                or _lookup(self.destination_rules, destination_domain))
        return self.pools.get(name or "default")

    def pick(self, pool: SourcePool | None, target_address: str) -> str | None:
        """Return the pool's next address of the target's family, or None when it has none."""
        if pool is None:
            return None
        version = ipaddress.ip_address(target_address).version
        candidates = _of_family(pool.addresses, version)
        if not candidates:
            return None
        if pool is not self.pools.get(pool.name):
            # A pool narrowed for one message (warm-up) takes its addresses in turn too.
            return candidates[next(self._narrowed_turn) % len(candidates)]
        return next(self._turns[pool.name][version])

    def helo_name(self, source: str | None) -> str:
        return self.helo_names.get(source, self.default_helo) if source else self.default_helo


def _normalised(rules: dict[str, str]) -> dict[str, str]:
    return {domain.lower().rstrip("."): pool for domain, pool in rules.items()}


def _of_family(addresses: tuple[str, ...], version: int) -> list[str]:
    return [address for address in addresses if ipaddress.ip_address(address).version == version]


def _lookup(rules: dict[str, str], domain: str) -> str | None:
    """Return the rule for a domain or its nearest parent."""
    labels = domain.lower().rstrip(".").split(".")
    for start in range(len(labels)):
        found = rules.get(".".join(labels[start:]))
        if found is not None:
            return found
    return None


def source_addresses(config: Config) -> SourceAddresses:
    """Build the source addresses from [delivery.source], or from the plain delivery.source_addresses list."""
    source, hostname = config.delivery.source, config.server.hostname
    if source.addresses:
        return SourceAddresses(source.addresses, source.pools, source.sender_rules, source.destination_rules,
                               hostname, source.tenants, source.tenant_rules)
    return SourceAddresses.from_list(config.delivery.source_addresses, hostname)
