"""Webhooks against the real ``mta serve``: events survive a restart and arrive signed, once per event id."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import config_error, query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from mta.webhooks.signature import sign, verify

SECRET = "test-secret-0123456789abcdef"


class Receiver:
    """A webhook endpoint on loopback that replies 500 while failing is set, else 204."""

    def __init__(self) -> None:
        self.failing = True
        self.failures: Counter[str] = Counter()
        self.received: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver.lock:
                    if receiver.failing:
                        receiver.failures[headers["mta-event-id"]] += 1
                        status = 500
                    else:
                        receiver.received.append((headers, body))
                        status = 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        return Handler

    def events(self) -> list[dict]:
        """Return the received events, each event id once."""
        with self.lock:
            by_id = {headers["mta-event-id"]: json.loads(body) for headers, body in self.received}
        return list(by_id.values())


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def webhook_config(url: str) -> dict:
    return {"webhooks": {
        "allow_insecure_loopback": True, "poll_interval": 0.1, "lease_seconds": 2.0,
        "endpoints": {"test": {"url": url, "secret": SECRET, "timeout": 1.0, "backoff": [0.3]}},
    }}


def facts(events: list[dict], queue_ids: set[str]) -> Counter:
    return Counter((event["queue_id"], event["type"], event.get("recipient", ""))
                   for event in events if event["queue_id"] in queue_ids)


def test_events_survive_restart_once_each(make_mta, sink, receiver):
    mta = make_mta({**relay_config(sink.port), **webhook_config(receiver.url)})

    code, text = send_mx(mta, "sender@example.net", f"ok@{RELAY_DOMAIN}")
    assert code == 250, text
    delivered_id = text.decode().split()[-1]
    assert sink.wait_for(1)
    sink.script.rcpt_replies.append("550 5.1.1 no such user")
    code, text = send_mx(mta, "sender@example.net", f"gone@{RELAY_DOMAIN}")
    assert code == 250, text
    bounced_id = text.decode().split()[-1]

    # Four events: accepted and delivered, accepted and bounced.
    assert wait_until(lambda: len(receiver.failures) >= 4, timeout=30)
    assert wait_until(lambda: min(receiver.failures.values()) >= 2, timeout=30)
    mta.stop()
    receiver.failing = False
    mta.start()

    expected = Counter({(delivered_id, "accepted", ""): 1, (delivered_id, "delivered", f"ok@{RELAY_DOMAIN}"): 1,
                        (bounced_id, "accepted", ""): 1, (bounced_id, "bounced", f"gone@{RELAY_DOMAIN}"): 1})
    queue_ids = {delivered_id, bounced_id}
    assert wait_until(lambda: facts(receiver.events(), queue_ids) == expected, timeout=30), \
        facts(receiver.events(), queue_ids)

    for headers, body in receiver.received:
        assert verify(SECRET.encode(), headers["mta-timestamp"], body, headers["mta-signature"])
        assert json.loads(body)["id"] == headers["mta-event-id"]
        assert headers["content-type"] == "application/json"
    for event_id, failures in receiver.failures.items():
        assert failures >= 2, event_id
    def outbox_rows():
        return query(mta.database_url, "SELECT state, attempts FROM webhook_outbox WHERE payload->>'queue_id' = ANY($1)",
                     list(queue_ids))

    # The dispatcher records the replies after the receiver has the events.
    assert wait_until(lambda: [row["state"] for row in outbox_rows()] == ["delivered"] * 4)
    rows = outbox_rows()
    assert all(row["attempts"] >= 3 for row in rows)


def test_event_payload_fields(make_mta, sink, receiver):
    receiver.failing = False
    mta = make_mta({**relay_config(sink.port), **webhook_config(receiver.url)})

    code, text = send_mx(mta, "sender@example.net", f"ok@{RELAY_DOMAIN}")
    assert code == 250, text
    queue_id = text.decode().split()[-1]
    assert wait_until(lambda: len(facts(receiver.events(), {queue_id})) == 2)

    events = {event["type"]: event for event in receiver.events() if event["queue_id"] == queue_id}
    assert events["accepted"]["sender"] == "sender@example.net"
    assert events["accepted"]["recipients"] == [f"ok@{RELAY_DOMAIN}"]
    assert events["accepted"]["origin"] == "mx"
    assert events["delivered"]["recipient"] == f"ok@{RELAY_DOMAIN}"
    assert events["delivered"]["reply"].startswith("250 ")
    assert events["delivered"]["status"] == "2.0.0"
    assert events["delivered"]["attempt"] == 1


def test_no_events_without_endpoints(make_mta, sink):
    mta = make_mta(relay_config(sink.port))

    code, text = send_mx(mta, "sender@example.net", f"ok@{RELAY_DOMAIN}")
    assert code == 250, text
    assert sink.wait_for(1)
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery") == [])

    assert query(mta.database_url, "SELECT count(*) AS n FROM webhook_outbox")[0]["n"] == 0


def test_signature_covers_timestamp_and_body():
    signature = sign(b"k" * 16, 1700000000, b'{"a": 1}')

    assert signature.startswith("sha256=")
    assert verify(b"k" * 16, "1700000000", b'{"a": 1}', signature)
    assert not verify(b"k" * 16, "1700000001", b'{"a": 1}', signature)
    assert not verify(b"k" * 16, "1700000000", b'{"a": 2}', signature)
    assert not verify(b"x" * 16, "1700000000", b'{"a": 1}', signature)


@pytest.mark.parametrize("endpoint, expected", [
    ({"url": "http://192.0.2.1/hook", "secret": SECRET}, "must be an https:// URL"),
    ({"url": "http://127.0.0.1/hook", "secret": SECRET}, "allow_insecure_loopback"),
    ({"url": "https://hooks.example/", "secret": "short"}, "at least 16 characters"),
    ({"url": "https://hooks.example/"}, "exactly one of secret and secret_file"),
    ({"url": "https://hooks.example/", "secret": SECRET, "events": ["opened"]}, "events must name"),
    ({"url": "https://hooks.example/", "secret": SECRET, "timeout": 500.0}, "timeout must be between"),
])
def test_endpoint_config_errors(tmp_path, endpoint, expected):
    lines = [f"{key} = {json.dumps(value)}" for key, value in endpoint.items()]
    message = config_error(tmp_path, "[webhooks.endpoints.hook]\n" + "\n".join(lines) + "\n")

    assert expected in message
