"""The DKIM key files of a local domain and the public keys they publish.

Keys are PEM files named ``DOMAIN.SELECTOR.pem`` in ``domains.dkim_key_dir``.
``mta serve`` signs with the key of ``domains.dkim_selector`` and creates that
file on first start. Any other ``DOMAIN.SELECTOR.pem`` file of the domain is a
key to publish as well, such as the next key of a rotation or the previous
one while mail signed with it is still in transit. A key is RSA (``k=rsa``)
or Ed25519 (``k=ed25519``, RFC 8463).
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

from mta.config import Config

log = logging.getLogger(__name__)

# A selector is one or more DNS labels (RFC 6376 section 3.1).
_SELECTOR = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


class KeyFileError(Exception):
    """A DKIM key file that is missing or cannot be read."""


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


def key_path(config: Config, domain: str, selector: str) -> Path:
    return config.data_path(config.domains.dkim_key_dir) / f"{domain}.{selector}.pem"


def public_keys(config: Config, domain: str) -> list[PublicKey]:
    """Read the public key of every key file of domain, the signing selector first.

    Raises KeyFileError when the signing key's file is missing or any key
    file cannot be read, because records printed without it would be wrong.
    """
    signing = config.domains.dkim_selector
    path = key_path(config, domain, signing)
    if not path.exists():
        raise KeyFileError(f"no DKIM key for {domain} at {path}: mta serve and mta dkim records create it; "
                           "run mta from the directory where mta serve runs, or set an absolute server.data_dir")

    others = [selector for selector in find_selectors(path.parent, domain, config.local_domains)
              if selector != signing]
    return [read_public_key(key_path(config, domain, selector), selector) for selector in [signing, *others]]


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


def read_public_key(path: Path, selector: str) -> PublicKey:
    """Load the private key at path and return its public half, or raise KeyFileError."""
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise KeyFileError(f"cannot read DKIM key file {path}: {error.strerror}") from None
    except (ValueError, TypeError) as error:
        raise KeyFileError(f"invalid DKIM key file {path}: expected an unencrypted PEM private key ({error})") from None

    if isinstance(private_key, rsa.RSAPrivateKey):
        der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        return PublicKey(selector, "rsa", base64.b64encode(der).decode("ascii"))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(selector, "ed25519", base64.b64encode(raw).decode("ascii"))
    raise KeyFileError(f"invalid DKIM key file {path}: expected an RSA or Ed25519 key, "
                       f"found {type(private_key).__name__}")
