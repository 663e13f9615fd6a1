"""OpenDKIM's test mode as an independent DKIM verifier for tests.

OpenDKIM fetches the public key through its libunbound resolver, which an
Unbound configuration file forwards to the test DNS server on loopback, so no
query leaves the machine.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# opendkim lives in /usr/sbin, which is not on every user's PATH.
OPENDKIM = shutil.which("opendkim") or shutil.which("opendkim", path="/usr/sbin:/usr/local/sbin")


def opendkim_report(message: bytes, dns_host: str, dns_port: int, work_dir: Path) -> str:
    """Run ``opendkim -t`` on the message and return its report (standard output)."""
    assert OPENDKIM is not None, "opendkim is not installed (Debian package opendkim)"
    unbound_conf = work_dir / "unbound.conf"
    unbound_conf.write_text(
        "server:\n"
        # Unbound refuses to query 127.0.0.0/8 by default.
        "  do-not-query-localhost: no\n"
        # Binding to loopback keeps every query on this machine.
        "  outgoing-interface: 127.0.0.1\n"
        "  do-ip6: no\n"
        "forward-zone:\n"
        '  name: "."\n'
        f"  forward-addr: {dns_host}@{dns_port}\n"
    )
    opendkim_conf = work_dir / "opendkim.conf"
    opendkim_conf.write_text(f"Mode v\nSyslog no\nDNSTimeout 5\nResolverConfiguration {unbound_conf}\n")
    message_path = work_dir / "message.eml"
    message_path.write_bytes(message)

    # With -vv, OpenDKIM prints the verification result and the
    # Authentication-Results field it would add.
    result = subprocess.run([OPENDKIM, "-vv", "-x", str(opendkim_conf), "-t", str(message_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout
