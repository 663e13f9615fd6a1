"""``mta dkim ...``: list, rotate and activate the DKIM keys in the database, and print the signing records.

Exit codes: 0 success; 1 when the nameservers do not return a key's record
or fail, or the database is unreachable; 2 for a domain that is not local,
an unknown selector, or a key in the wrong state. Rotation and activation
are written to the audit log; no command prints a private key.
"""

from __future__ import annotations

import argparse
import json
import sys

from mta.cli_support import EXIT_FAILURE, EXIT_USAGE, run_in_transaction
from mta.config import Config, ConfigError
from mta.queue_commands import _actor

ALGORITHM_CHOICES = {"rsa": ["rsa"], "ed25519": ["ed25519"], "both": ["rsa", "ed25519"]}
# Seconds each DNS query of list and activate may take by default.
DEFAULT_TIMEOUT = 5.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    from mta.dns_commands import _timeout

    dkim = commands.add_parser("dkim", help="DKIM keys: list, rotate, activate").add_subparsers(metavar="ACTION")

    records = dkim.add_parser("records", help="print the TXT record of every signing key; creates missing keys")
    records.set_defaults(run=cmd_records)

    listing = dkim.add_parser("list", help="list DKIM keys: selector, algorithm, state, dates, whether DNS "
                                           "returns the record")
    listing.add_argument("domain", nargs="?", help="one local domain (default: every domain)")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    listing.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                         help=f"seconds each DNS query may take (default: {DEFAULT_TIMEOUT:g})")
    listing.set_defaults(run=cmd_list)

    rotate = dkim.add_parser("rotate", help="create a pending key under a new dated selector and print its record")
    rotate.add_argument("domain")
    rotate.add_argument("--algorithm", choices=sorted(ALGORITHM_CHOICES),
                        help="the key type to rotate (default: the types of the domain's active keys)")
    rotate.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    rotate.set_defaults(run=cmd_rotate)

    activate = dkim.add_parser("activate", help="sign with a pending key from now on, once DNS returns its record")
    activate.add_argument("domain")
    activate.add_argument("selector")
    activate.add_argument("--force", action="store_true",
                          help="skip the DNS check; receivers fail signatures until the record is published")
    activate.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                          help=f"seconds each DNS query may take (default: {DEFAULT_TIMEOUT:g})")
    activate.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    activate.set_defaults(run=cmd_activate)


def local_domain_or_exit(config: Config, domain: str) -> str:
    """Return domain in lower case without the trailing dot, or exit 2 when it is not local."""
    domain = domain.lower().rstrip(".")
    if not config.is_local_domain(domain):
        print(f"mta: {domain} is not a local domain: add it to domains.local, or name one of "
              f"{', '.join(sorted(config.local_domains))}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return domain


def cmd_records(config: Config, args: argparse.Namespace) -> int:
    from mta.dkim_lifecycle import provision
    from mta.dkim_store import ACTIVE, list_keys

    masters = _master_keys_creating(config)

    async def work(connection) -> list:
        await provision(connection, masters, config)
        return [key for key in await list_keys(connection) if key.state == ACTIVE]

    for key in run_in_transaction(config, work):
        print(key.public.zone_line(key.domain))
    return 0


def _master_keys_creating(config: Config):
    """Return the master keys, creating the key file as mta serve does when nothing is wrapped yet; exit 2 on error."""
    from mta.storage.key_admin import check_master_keys
    from mta.storage.master_key import create_master_key, read_master_keys

    try:
        masters = read_master_keys(config)
        run_in_transaction(config, lambda connection: check_master_keys(connection, masters))
    except ConfigError as error:
        print(f"mta: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return masters if masters is not None else create_master_key(config)


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    from mta.dkim_store import PUBLISHED_STATES, list_keys

    domain = local_domain_or_exit(config, args.domain) if args.domain else None
    keys = run_in_transaction(config, lambda connection: list_keys(connection, domain))
    seen = {(key.domain, key.selector): _seen_in_dns(config, key, args.timeout)
            for key in keys if key.state in PUBLISHED_STATES}

    if args.json:
        for key in keys:
            print(json.dumps({"domain": key.domain, "selector": key.selector, "algorithm": key.algorithm,
                              "state": key.state, "created_at": _iso(key.created_at),
                              "activated_at": _iso(key.activated_at), "retire_after": _iso(key.retire_after),
                              "retired_at": _iso(key.retired_at), "in_dns": seen.get((key.domain, key.selector))}))
        return 0

    print(f"{'DOMAIN':<24} {'SELECTOR':<12} {'ALGORITHM':<9} {'STATE':<8} {'CREATED':<16} {'ACTIVATED':<16} "
          f"{'RETIRES':<16} DNS")
    for key in keys:
        in_dns = {True: "yes", False: "no", None: "-"}[seen.get((key.domain, key.selector))]
        retires = key.retired_at if key.retired_at is not None else key.retire_after
        print(f"{key.domain:<24} {key.selector:<12} {key.algorithm:<9} {key.state:<8} {_day(key.created_at):<16} "
              f"{_day(key.activated_at):<16} {_day(retires):<16} {in_dns}")
    return 0


def _seen_in_dns(config: Config, key, timeout: float) -> bool | None:
    """Return whether the nameservers return the key's record, or None when they fail or none are configured."""
    from mta import dns_check
    from mta.dkim_lifecycle import record_served

    if not config.delivery.nameservers:
        return None
    resolver = dns_check.make_resolver(config.delivery.nameservers, config.delivery.dns_port, timeout)
    try:
        return record_served(resolver, key.domain, key.public)
    except dns_check.NameserverError as error:
        print(f"mta: {error}", file=sys.stderr)
        return None


def _iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None


def _day(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment is not None else "-"


def cmd_rotate(config: Config, args: argparse.Namespace) -> int:
    from mta.dkim_lifecycle import rotate
    from mta.dkim_store import ACTIVE, DkimKeyError, list_keys
    from mta.key_commands import master_keys_or_exit

    domain = local_domain_or_exit(config, args.domain)
    masters = master_keys_or_exit(config)

    async def work(connection) -> list:
        if args.algorithm:
            algorithms = ALGORITHM_CHOICES[args.algorithm]
        else:
            active = {key.algorithm for key in await list_keys(connection, domain) if key.state == ACTIVE}
            algorithms = [algorithm for algorithm in ("rsa", "ed25519") if algorithm in active] or ["rsa"]
        return await rotate(connection, masters, domain, algorithms, _actor(args))

    created = run_in_transaction(config, work, (DkimKeyError,))
    print(f"; pending DKIM key(s) of {domain}: publish, then they sign once DNS returns them")
    for key in created:
        print(key.public.zone_line(domain))
    print(f"created {len(created)} pending key(s): {', '.join(key.selector for key in created)}. Within "
          f"{config.domains.dkim_check_interval:.0f} s of the record appearing in DNS, a running MTA activates "
          f"each; mta dkim activate {domain} SELECTOR does it at once", file=sys.stderr)
    return 0


def cmd_activate(config: Config, args: argparse.Namespace) -> int:
    from mta.dkim_lifecycle import activate_key
    from mta.dkim_store import PENDING, RETIRING, DkimKeyError, list_keys

    domain = local_domain_or_exit(config, args.domain)
    keys = {key.selector: key for key in run_in_transaction(config, lambda connection: list_keys(connection, domain))}
    key = keys.get(args.selector)
    if key is None:
        print(f"mta: {domain} has no DKIM key with selector {args.selector!r}: see mta dkim list {domain}",
              file=sys.stderr)
        return EXIT_USAGE
    if key.state not in (PENDING, RETIRING):
        # Checked before the DNS query, so the state is the reason given, not a DNS failure.
        print(f"mta: DKIM key {args.selector} of {domain} is {key.state}: only a pending or retiring key can be "
              "activated", file=sys.stderr)
        return EXIT_USAGE
    if not args.force and not _record_published_or_report(config, domain, key, args.timeout):
        return EXIT_FAILURE

    async def work(connection):
        return await activate_key(connection, domain, args.selector, config.domains.dkim_retire_grace, _actor(args),
                                  forced=args.force)

    activation = run_in_transaction(config, work, (DkimKeyError,))
    replaced = (f"; key {activation.replaced} is retiring and stays published for "
                f"{config.domains.dkim_retire_grace:.0f} s") if activation.replaced else ""
    print(f"DKIM key {args.selector} of {domain} ({activation.key.algorithm}) is active{replaced}. "
          f"Running MTAs sign with it within {config.domains.dkim_reload_interval:.0f} s")
    return 0


def _record_published_or_report(config: Config, domain: str, key, timeout: float) -> bool:
    """Return whether the nameservers return the key's exact record; print why not to standard error."""
    from mta import dns_check
    from mta.dkim_lifecycle import record_served

    nameservers = config.delivery.nameservers
    if not nameservers:
        print("mta: delivery.nameservers is empty: name the nameservers to ask, or use --force", file=sys.stderr)
        return False
    resolver = dns_check.make_resolver(nameservers, config.delivery.dns_port, timeout)
    try:
        served = record_served(resolver, domain, key.public)
    except dns_check.NameserverError as error:
        print(f"mta: {error}; nothing changed (--force activates without the check)", file=sys.stderr)
        return False
    if not served:
        print(f"mta: not activated: nameservers {', '.join(nameservers)} do not return the record of DKIM key "
              f"{key.selector} of {domain}. Publish\n  {key.public.zone_line(domain)}\nwait until it is "
              "served, and run this again; --force activates without the check", file=sys.stderr)
    return served
