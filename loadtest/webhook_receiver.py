"""A webhook endpoint on loopback for ``loadtest.baseline --webhook``: it counts POSTs and replies 204.

It runs in threads of the benchmark process, so its CPU time competes with
the relay's on the same cores, as a receiver on the same host would.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = "127.0.0.1"
# Also the secret's only use: the receiver does not check signatures.
SECRET = "loadtest-webhook-secret"
# Seconds without a new event after which a drain is taken as finished short of the expected count.
DRAIN_IDLE = 15.0


class WebhookReceiver:
    def __init__(self) -> None:
        self.count = 0
        # time.perf_counter() of the latest POST, 0.0 before the first.
        self.last_at = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}/events"

    def config(self) -> str:
        """Return the TOML sections that send every event to this receiver."""
        return ("[webhooks]\nallow_insecure_loopback = true\n\n"
                f'[webhooks.endpoints.bench]\nurl = "{self.url}"\nsecret = "{SECRET}"\n')

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_drained(self, expected: int, deadline: float) -> int:
        """Wait until the count reaches expected, stops growing for DRAIN_IDLE s, or deadline (perf_counter) passes.

        Returns the count at the end of the wait.
        """
        last_count, last_change = self.count, time.perf_counter()
        while self.count < expected:
            now = time.perf_counter()
            if self.count != last_count:
                last_count, last_change = self.count, now
            if now - last_change > DRAIN_IDLE or now > deadline:
                break
            time.sleep(0.05)
        return self.count

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.count += 1
                    receiver.last_at = time.perf_counter()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        return Handler
