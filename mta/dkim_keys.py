"""DKIM key files from before keys moved into the database, and the public half of a key.

Keys used to be PEM files named ``DOMAIN.SELECTOR.pem`` in
``domains.dkim_key_dir``. ``mta serve`` imports each such file once into the
table ``dkim_key`` (mta.dkim_lifecycle.provision) and never reads it again. A
key is RSA (``k=rsa``) or Ed25519 (``k=ed25519``, RFC 8463).
"""

from __future__ import annotations

import base64
import glob
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta.dkim import PrivateKey

log = logging.getLogger(__name__)

# A selector is one or more DNS labels (RFC 6376 section 3.1).
_SELECTOR = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


class KeyFileError(Exception):
    """A DKIM key file that cannot be read or contains no RSA or Ed25519 key."""


@dataclass(frozen=True)
class PublicKey:
    """The public half of one DKIM key, as its TXT record publishes it."""

    selector: str
    # The k= tag: "rsa" or "ed25519".
    algorithm: str
    # The p= tag: base64 of the SubjectPublicKeyInfo (RSA) or of the raw 32-octet key (Ed25519).
    data: str

    def txt_value(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.data}"

    def zone_line(self, domain: str) -> str:
        """Return the TXT record in zone-file syntax, split into strings of at most 255 octets."""
        from mta.dns_records import absolute, txt_data

        return f"{absolute(f'{self.selector}._domainkey.{domain}')} IN TXT {txt_data(self.txt_value())}"


def find_selectors(key_dir: Path, domain: str, local_domains: Iterable[str]) -> list[str]:
    """Return the selectors of the key files of domain in key_dir, sorted."""
    prefix = f"{domain}."
    # With local domains example.com and example.com.au, the file
    # example.com.au.mta.pem belongs to example.com.au, not to selector au.mta.
    longer_prefixes = [f"{other}." for other in local_domains if other != domain and other.startswith(prefix)]

    selectors = []
    for path in key_dir.glob(f"{glob.escape(prefix)}*.pem"):
        if any(path.name.startswith(other) for other in longer_prefixes):
            continue
        selector = path.name[len(prefix):-len(".pem")]
        if not _SELECTOR.fullmatch(selector):
            log.warning("ignoring DKIM key file %s: %r is not a valid selector", path, selector)
            continue
        selectors.append(selector)
    return sorted(selectors)


def read_private_key(path: Path) -> PrivateKey:
    """Load the unencrypted RSA or Ed25519 private key at path, or raise KeyFileError."""
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise KeyFileError(f"cannot read DKIM key file {path}: {error.strerror}") from None
    except (ValueError, TypeError) as error:
        raise KeyFileError(f"invalid DKIM key file {path}: expected an unencrypted PEM private key ({error})") from None

    if not isinstance(private_key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyFileError(f"invalid DKIM key file {path}: expected an RSA or Ed25519 key, "
                           f"found {type(private_key).__name__}")
    return private_key


def public_key_of(private_key: PrivateKey, selector: str) -> PublicKey:
    """Return the public half of private_key as the TXT record of selector publishes it."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        return PublicKey(selector, "rsa", base64.b64encode(der).decode("ascii"))
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(selector, "ed25519", base64.b64encode(raw).decode("ascii"))
