"""``mta dns records DOMAIN`` and ``mta dns check DOMAIN``: the DNS records of a local domain.

``records`` prints what to publish, in zone-file syntax or as JSON. ``check``
queries the configured nameservers and exits 0 when every record matches, 1
when one is missing or different or the nameservers fail, and 2 for a domain
that is not local.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mta.cli_support import EXIT_USAGE
from mta.config import Config

if TYPE_CHECKING:
    from mta.dns_check import Finding
    from mta.dns_records import DomainRecords

EXIT_FAILURE = 1
# Seconds each DNS query of mta dns check may take by default.
DEFAULT_TIMEOUT = 5.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    dns = commands.add_parser("dns", help="DNS records of a local domain").add_subparsers(metavar="ACTION")

    records = dns.add_parser("records", help="print the MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records "
                                             "to publish for a local domain, in zone-file syntax")
    records.add_argument("domain")
    output = records.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object instead of zone-file lines")
    output.add_argument("--policy-file", action="store_true",
                        help="print only the MTA-STS policy file to serve at "
                             "https://mta-sts.DOMAIN/.well-known/mta-sts.txt")
    records.set_defaults(run=cmd_records)

    check = dns.add_parser("check", help="compare the records that [delivery] nameservers return "
                                         "with the ones to publish")
    check.add_argument("domain")
    check.add_argument("--json", action="store_true", help="print one JSON object per record instead of text")
    check.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"seconds each DNS query may take (default: {DEFAULT_TIMEOUT:g})")
    check.set_defaults(run=cmd_check)


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0.1 <= seconds <= 60.0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}, expected 0.1 to 60 seconds")
    return seconds


def cmd_records(config: Config, args: argparse.Namespace) -> int:
    from mta import dns_records

    expected = _expected_records(config, args.domain)
    if args.policy_file:
        sys.stdout.write(expected.policy_text)
        return 0
    if args.json:
        print(json.dumps(_records_json(expected), indent=2))
        return 0

    print(f"; DNS records of {expected.domain}")
    for line in dns_records.zone_lines(expected):
        print(line)
    print()
    print(f"; MTA-STS policy file, to serve at {expected.policy_url}")
    print(f"; with a certificate for mta-sts.{expected.domain} (--policy-file prints only the file):")
    for line in expected.policy_text.splitlines():
        print(f";   {line}")
    return 0


def cmd_check(config: Config, args: argparse.Namespace) -> int:
    from mta import dns_check

    if not config.delivery.nameservers:
        print("mta: delivery.nameservers is empty: name the nameservers to ask", file=sys.stderr)
        return EXIT_USAGE
    expected = _expected_records(config, args.domain)
    resolver = dns_check.make_resolver(config.delivery.nameservers, config.delivery.dns_port, args.timeout)
    try:
        findings = dns_check.check(expected, resolver)
    except dns_check.NameserverError as error:
        print(f"mta: {error}", file=sys.stderr)
        return EXIT_FAILURE

    if args.json:
        for finding in findings:
            print(json.dumps(_finding_json(finding)))
    else:
        _print_findings(findings)

    wrong = [finding for finding in findings if finding.status != dns_check.OK]
    if not wrong:
        print(f"all {len(findings)} records of {expected.domain} are published as expected", file=sys.stderr)
        return 0
    listing = ", ".join(f"{finding.record.kind} {finding.record.name} {finding.status}" for finding in wrong)
    print(f"mta: {len(wrong)} of {len(findings)} records of {expected.domain} need changes: {listing}",
          file=sys.stderr)
    return EXIT_FAILURE


def _expected_records(config: Config, domain: str) -> DomainRecords:
    """Build the records of a local domain, or exit 2 (not local) or 1 (no DKIM key in the database)."""
    from mta import dns_records
    from mta.cli_support import run_in_transaction
    from mta.dkim_commands import local_domain_or_exit
    from mta.dkim_store import published_keys

    domain = local_domain_or_exit(config, domain)
    keys = run_in_transaction(config, lambda connection: published_keys(connection, domain))
    if not keys:
        print(f"mta: no DKIM key for {domain} in the database: mta serve creates one at start, and so does "
              "mta dkim records", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE)
    return dns_records.build(config, domain, keys)


def _records_json(expected: DomainRecords) -> dict:
    records = [{"kind": record.kind, "name": record.name, "type": record.rdtype, "ttl": expected.ttl,
                "values": list(record.values)} for record in expected.records]
    return {"domain": expected.domain, "records": records,
            "mta_sts_policy": {"url": expected.policy_url, "text": expected.policy_text}}


def _finding_json(finding: Finding) -> dict:
    record = finding.record
    return {"kind": record.kind, "name": record.name, "type": record.rdtype, "status": finding.status,
            "expected": list(record.values), "found": list(finding.found), "reason": finding.reason}


def _print_findings(findings: list[Finding]) -> None:
    for finding in findings:
        record = finding.record
        print(f"{finding.status:<10} {record.kind:<8} {record.name}")
        for value in record.values:
            print(f"{'':<11}expected: {value}")
        for value in finding.found or ["(nothing)"]:
            print(f"{'':<11}found:    {value}")
        if finding.reason:
            print(f"{'':<11}{finding.reason}")
