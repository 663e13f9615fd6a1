"""A raw SMTP client for tests that must control every byte on the wire."""

from __future__ import annotations

import base64
import socket
import ssl


def client_tls_context(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
        # OpenSSL's default security level refuses to offer TLS 1.1 at all.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0, source: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""
        self.greeting = self.reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed, unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        """Read one whole (possibly multi-line) reply: its code and its text lines joined by newlines."""
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def ehlo(self, name: str = "client.example.net") -> list[str]:
        code, text = self.command(f"EHLO {name}")
        assert code == 250, text
        return [line.split(" ")[0].upper() for line in text.split("\n")[1:]]

    def starttls(self, context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        code, text = self.command("STARTTLS")
        assert code == 220, text
        self.wrap(context, server_hostname)

    def wrap(self, context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        self.sock = (context or client_tls_context()).wrap_socket(self.sock, server_hostname=server_hostname)

    def auth_plain(self, user: str, password: str, authzid: str = "") -> tuple[int, str]:
        blob = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        return self.command(f"AUTH PLAIN {blob}")

    def data(self, payload: bytes) -> tuple[int, str]:
        """Send DATA and the payload as given; the payload must carry its own terminator."""
        code, text = self.command("DATA")
        assert code == 354, text
        self.send(payload)
        return self.reply()

    def unread(self, timeout: float) -> bytes:
        """Return whatever the server sends within ``timeout`` seconds without being asked."""
        self.sock.settimeout(timeout)
        try:
            return self.buffer + self.sock.recv(65536)
        except (socket.timeout, ssl.SSLError):
            return self.buffer
        finally:
            self.sock.settimeout(30.0)
