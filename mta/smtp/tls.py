"""Server TLS: the context every listener uses, certificates chosen by SNI, and the embedded self-signed one.

The listeners share one context for their whole life. A client that names a
host with SNI gets the certificate configured for that name, an exact name
or a wildcard such as ``*.example.org``. Any other client gets the default
one. ``reload`` reads every file again, on SIGHUP: the new certificates are
loaded into scratch contexts first, so a broken file leaves the old ones in
use, and sessions already running keep theirs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mta.config import TlsConfig

# Forward-secret AEAD suites only for TLS 1.2; TLS 1.3 suites are fixed by OpenSSL.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!DSS"


def server_context(cert_file: Path | str, key_file: Path | str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 deprecates TLS 1.0 and 1.1.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert_file, key_file)
    return context


def _named_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    try:
        return server_context(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"{cert_file} with {key_file}: {error}") from error


def certificate_expiry(cert_file: Path | str) -> datetime.datetime:
    """Return when the first certificate in a PEM file expires."""
    certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    return certificate.not_valid_after_utc


class ServerTls:
    def __init__(self, default: tuple[str, str], by_name: dict[str, tuple[str, str]]):
        self.default_files = default
        self.files_by_name = {name.lower().rstrip("."): files for name, files in by_name.items()}
        self.context = server_context(*default)
        self.context.sni_callback = self._choose
        self._contexts = {name: server_context(*files) for name, files in self.files_by_name.items()}

    @classmethod
    def from_config(cls, config: TlsConfig, cert_file: str, key_file: str) -> ServerTls:
        """Build from the [tls] settings, with the default pair already resolved (it may be self-signed)."""
        by_name = {name: (files.cert_file, files.key_file) for name, files in config.sni.items()}
        return cls((cert_file, key_file), by_name)

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name:
            chosen = self.context_for(server_name)
            if chosen is not None:
                ssl_object.context = chosen

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """Return the context configured for a name, exactly or by wildcard, or None for the default."""
        name = server_name.lower().rstrip(".")
        found = self._contexts.get(name)
        if found is None and "." in name:
            found = self._contexts.get("*." + name.split(".", 1)[1])
        return found

    def reload(self) -> None:
        """Read every certificate and key again; on any error keep the ones in use and raise naming the files."""
        _named_context(*self.default_files)
        contexts = {name: _named_context(*files) for name, files in self.files_by_name.items()}
        self.context.load_cert_chain(*self.default_files)
        self._contexts = contexts

    def expiries(self) -> dict[str, datetime.datetime]:
        """Return when each certificate expires, "default" for the default one."""
        files = {"default": self.default_files, **self.files_by_name}
        return {name: certificate_expiry(cert_file) for name, (cert_file, _) in files.items()}


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Create a self-signed certificate for ``hostname`` unless one exists."""
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )

    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_bytes)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file
