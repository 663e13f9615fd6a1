"""Steps shared by tests that send through the MX listener and wait for the outcome."""

from __future__ import annotations

import smtplib
import time

from tests.conftest import REMOTE_MX_ADDRESS

RELAY_DOMAIN = "relay.example"


def relay_config(sink_port: int, **delivery) -> dict:
    """Accept relay.example on MX and route it to the sink, like a transport map."""
    return {
        "domains": {"local": ["example.com", RELAY_DOMAIN]},
        "delivery": {"routes": {RELAY_DOMAIN: f"{REMOTE_MX_ADDRESS}:{sink_port}"}, **delivery},
    }


def send_mx(mta, sender: str, recipient: str, body: bytes = b"Subject: test\r\n\r\nhello\r\n") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail(sender)
        code, text = client.rcpt(recipient)
        if code != 250:
            return code, text
        return client.data(body)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()
