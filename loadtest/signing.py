"""DKIM signing on both relays, for ``baseline --sign``.

Each run makes one RSA-2048 key and gives it to its relay. This MTA loads
it as the key of the sender's domain and signs mail from its relay network.
Postfix hands each message to OpenDKIM (Debian package opendkim) as a
milter over a UNIX socket. Before the timed load, one message goes
through the relay to a dumping smtp-sink, and its signature is checked
against the key, so a relay that stops signing fails the run instead of
looking fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dkim
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mta.dkim import dns_txt_value

OPENDKIM = "/usr/sbin/opendkim"
SIGNING_DOMAIN = "example.net"
SELECTOR = "bench"
KEY_BITS = 2048
SOCKET_WAIT = 30.0


class SigningError(RuntimeError):
    """The signing peer did not start, or a relayed message carried no valid signature."""


def write_key(path: Path) -> rsa.RSAPrivateKey:
    """Write a new RSA key as PKCS#8 PEM with mode 0600 and return it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return key


def check_signature(message: bytes, key: rsa.RSAPrivateKey) -> None:
    """Raise SigningError unless message carries a valid signature of SIGNING_DOMAIN by key."""
    if b"\r\n" not in message:
        # smtp-sink dumps messages with bare LF line endings.
        message = message.replace(b"\n", b"\r\n")
    if b"DKIM-Signature:" not in message:
        raise SigningError("the relayed message has no DKIM-Signature field")

    record = dns_txt_value(key).encode()
    expected_name = f"{SELECTOR}._domainkey.{SIGNING_DOMAIN}."

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return record if name.decode().lower() == expected_name else b""

    if not dkim.verify(message, dnsfunc=lookup):
        raise SigningError(f"the relayed message's DKIM signature does not verify with the {SELECTOR} key "
                           f"of {SIGNING_DOMAIN}")


class OpenDkim:
    """OpenDKIM in the foreground, signing for SIGNING_DOMAIN on a UNIX socket."""

    def __init__(self, directory: Path, key_path: Path):
        self.directory = directory / "opendkim"
        self.key_path = key_path
        self.socket_path = self.directory / "opendkim.sock"
        self.log_path = self.directory / "opendkim.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if not os.access(OPENDKIM, os.X_OK):
            raise SigningError(f"{OPENDKIM} not found: install the Debian package opendkim (make loadtest-deps)")

        self.directory.mkdir(mode=0o755)
        # opendkim drops to its own user, which must read the key. Postfix's
        # smtpd runs as postfix and must reach the socket, hence UMask 000.
        shutil.chown(self.directory, user="opendkim", group="opendkim")
        shutil.chown(self.key_path, user="opendkim", group="opendkim")
        config = self.directory / "opendkim.conf"
        config.write_text(
            "Syslog no\n"
            "Mode s\n"
            f"Domain {SIGNING_DOMAIN}\n"
            f"Selector {SELECTOR}\n"
            f"KeyFile {self.key_path}\n"
            f"Socket local:{self.socket_path}\n"
            "UMask 000\n"
            "UserID opendkim:opendkim\n"
            "Canonicalization relaxed/relaxed\n"
            "SignatureAlgorithm rsa-sha256\n"
            "InternalHosts 127.0.0.0/8\n"
            # The key lies under /tmp, which other users can write.
            "RequireSafeKeys false\n"
            "Background no\n"
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([OPENDKIM, "-f", "-x", str(config)], stdout=log,
                                            stderr=subprocess.STDOUT)
        self._wait_for_socket()

    def _wait_for_socket(self) -> None:
        deadline = time.monotonic() + SOCKET_WAIT
        while not self.socket_path.exists():
            if self.process.poll() is not None:
                raise SigningError(f"opendkim exited with status {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace').strip()}")
            if time.monotonic() > deadline:
                raise SigningError(f"opendkim made no socket at {self.socket_path} within {SOCKET_WAIT:.0f} s")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
