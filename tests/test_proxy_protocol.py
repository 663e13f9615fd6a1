"""The PROXY protocol behind a real HAProxy on loopback: the client address in the header drives policy and logs."""

from __future__ import annotations

import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mtaprocess import wait_port
from tests.pgcluster import free_port

RELAY_CLIENT = "127.0.0.77"
OTHER_CLIENT = "127.0.0.78"


def start_haproxy(directory: Path, backend_port: int, send_proxy: str) -> tuple[subprocess.Popen, int]:
    """Run HAProxy in the foreground, forwarding a loopback port to the MTA with a PROXY header."""
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(
        "global\n    log stderr local0 warning\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        f"frontend smtp\n    bind 127.0.0.1:{port}\n    default_backend mta\n"
        f"backend mta\n    server mta 127.0.0.1:{backend_port} {send_proxy}\n")
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_port("127.0.0.1", port)
    return process, port


@pytest.fixture(params=["send-proxy", "send-proxy-v2"])
def proxied(request, make_mta, tmp_path) -> Iterator[tuple[object, int]]:
    mta = make_mta({"smtp": {"mx": {"proxy_protocol": True}, "relay_networks": [f"{RELAY_CLIENT}/32"]}})
    process, port = start_haproxy(tmp_path, mta.mx_port, request.param)
    try:
        yield mta, port
    finally:
        process.terminate()
        process.wait(timeout=10)


def send(port: int, source: str, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("client.example.net")
        client.mail("app@example.com")
        code, text = client.rcpt(recipient)
        if code != 250:
            return code, text
        return client.data(b"From: app@example.com\r\nSubject: proxied\r\n\r\nhello\r\n")


def test_real_client_address_allows_relay(proxied, sink):
    mta, port = proxied

    code, _ = send(port, RELAY_CLIENT, "bob@example.net")

    assert code == 250
    data = sink.wait_for(1)[0].data
    assert f"[{RELAY_CLIENT}]" in data.split(b"\r\n\r\n")[0].decode()
    assert f"connect from [{RELAY_CLIENT}]" in mta.log()
    assert "to mx via proxy [127.0.0.1] (relay network)" in mta.log()


def test_other_client_address_may_not_relay(proxied):
    _, port = proxied

    code, text = send(port, OTHER_CLIENT, "bob@example.net")

    assert code == 550
    assert text == b"5.7.1 relay access denied"


def test_direct_connection_without_header_gets_no_greeting(proxied):
    mta, _ = proxied

    with socket.create_connection(("127.0.0.1", mta.mx_port), timeout=10) as sock:
        sock.sendall(b"EHLO client.example.net\r\n")
        received = sock.recv(1024)

    assert not received.startswith(b"220")
