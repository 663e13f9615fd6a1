"""DANE for SMTP (RFC 7672): TLSA records of an MX host decide how its certificate is checked.

DANE applies only where DNSSEC vouches for the data: the MX answer and the
host's addresses must carry the AD flag of the validating resolver in
``[delivery] nameservers``, and so must the TLSA answer at
``_25._tcp.HOST``. The resolver is trusted to validate, so it must be
local or reached over a protected path (RFC 7672 section 8).

- DANE-EE (usage 3) pins the server's own certificate or public key; names
  and dates are not checked (RFC 7672 section 3.1.1).
- DANE-TA (usage 2) pins a certificate of the chain the server sends. The
  chain up to it must verify, and the leaf must name the MX host
  (section 3.1.2).
- PKIX-TA and PKIX-EE (usages 0 and 1) are unusable for SMTP (section
  3.1.3). When every record is unusable, TLS is still required but the
  certificate is not checked (section 2.2).

A secure host whose TLSA lookup fails cannot be used, so the next host is
tried (section 2.2).
"""

from __future__ import annotations

import _ssl
import hashlib
import logging
import ssl
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

log = logging.getLogger("mta.delivery")

DANE_TA = 2
DANE_EE = 3
_SELECTORS = (0, 1)
_MATCHING_TYPES = {0: None, 1: hashlib.sha256, 2: hashlib.sha512}


@dataclass(frozen=True)
class TlsaRecord:
    usage: int
    selector: int
    matching_type: int
    data: bytes

    @property
    def usable(self) -> bool:
        return (self.usage in (DANE_TA, DANE_EE) and self.selector in _SELECTORS
                and self.matching_type in _MATCHING_TYPES)

    def matches(self, certificate_der: bytes) -> bool:
        if self.selector == 0:
            selected = certificate_der
        else:
            certificate = x509.load_der_x509_certificate(certificate_der)
            selected = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        digest = _MATCHING_TYPES[self.matching_type]
        return (selected if digest is None else digest(selected).digest()) == self.data


class DaneLookupError(Exception):
    """The TLSA lookup for a DNSSEC-secure host failed, so the host cannot be used."""


def is_secure(answer: dns.resolver.Answer) -> bool:
    """Return whether the validating resolver vouched for the answer with the AD flag."""
    return bool(answer.response.flags & dns.flags.AD)


async def lookup_tlsa(resolver: dns.asyncresolver.Resolver, host: str, port: int) -> list[TlsaRecord] | None:
    """Return the DNSSEC-secure TLSA records of host and port; None when there are none or they are not secure."""
    name = f"_{port}._tcp.{host.rstrip('.')}"
    try:
        answer = await resolver.resolve(name, "TLSA")
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        # A validating resolver answers SERVFAIL to a forged denial, so a denial means no TLSA applies.
        return None
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
        raise DaneLookupError(f"TLSA lookup of {name} failed: {type(error).__name__}") from None

    if not is_secure(answer):
        log.info("TLSA records of %s are not DNSSEC-secure, ignored", name)
        return None
    return [TlsaRecord(record.usage, record.selector, record.mtype, record.cert) for record in answer]


def verify(ssl_object: ssl.SSLObject, records: list[TlsaRecord], host: str) -> str | None:
    """Check the server's certificates against the usable TLSA records; return why they fail, or None."""
    usable = [record for record in records if record.usable]
    if not usable:
        return None

    chain = _presented_chain(ssl_object)
    if not chain:
        return "the server sent no certificate"

    if any(record.matches(chain[0]) for record in usable if record.usage == DANE_EE):
        return None

    anchors = [certificate for certificate in chain
               if any(record.matches(certificate) for record in usable if record.usage == DANE_TA)]
    # A "2 0 0" record contains the whole anchor certificate, so the server need not send it.
    anchors += [record.data for record in usable if (record.usage, record.selector, record.matching_type) == (2, 0, 0)]
    if not anchors:
        return "no certificate of the server matches its TLSA records"
    return _verify_to_anchor(chain, anchors, host)


def _presented_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """Return the DER certificates the server sent, leaf first."""
    # Python 3.13 made this method public. Python 3.10 to 3.12 have it on the private _sslobj.
    getter = getattr(ssl_object, "get_unverified_chain", None) or \
        getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        leaf = ssl_object.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    return [certificate if isinstance(certificate, bytes) else certificate.public_bytes(_ssl.ENCODING_DER)
            for certificate in getter() or []]


def _verify_to_anchor(chain: list[bytes], anchors: list[bytes], host: str) -> str | None:
    """Verify the leaf up to a matched trust anchor, with the MX host name (RFC 7672 section 3.1.2)."""
    certificates = [x509.load_der_x509_certificate(der) for der in chain]
    store = Store([x509.load_der_x509_certificate(der) for der in anchors])
    # Private CAs, common with DANE-TA, rarely follow the Web PKI's certificate profile (a critical
    # subjectAltName with a subject, for example), so the leaf's extensions are not held to it.
    # Signatures, validity dates, CA constraints and the host name are still checked.
    leaf_policy = ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    policies = PolicyBuilder().extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                                  ee_policy=leaf_policy)
    verifier = policies.store(store).build_server_verifier(x509.DNSName(host.rstrip(".")))
    try:
        verifier.verify(certificates[0], certificates[1:])
    except VerificationError as error:
        return f"the chain to the TLSA trust anchor does not verify for {host}: {error}"
    return None
