"""Throttling of failed AUTH per client address and per account, shared through PostgreSQL."""

from __future__ import annotations

import base64
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mta.auth.throttle import account_key, client_key
from tests.mx import wait_until
from tests.smtpclient import client_tls_context

PASSWORD = "correct horse battery"
THROTTLED = (454, b"4.7.0 too many failed authentications, try again later")


def login(mta, user: str, password: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """Try AUTH PLAIN over implicit TLS from the given loopback address; return the reply."""
    with smtplib.SMTP_SSL("127.0.0.1", mta.submissions_port, timeout=30, context=client_tls_context(),
                          source_address=(source, 0)) as client:
        client.ehlo("client.example.net")
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {blob}")


@pytest.fixture
def throttled_mta(make_mta):
    def start(**smtp):
        mta = make_mta({"smtp": {"auth_failure_delay": 0.0} | smtp})
        for user in ("alice@example.com", "bob@example.com"):
            result = mta.cli("user", "add", user, "--password-stdin", input_text=PASSWORD + "\n")
            assert result.returncode == 0, result.stderr
        return mta
    return start


def test_client_address_blocked_after_limit(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_client=3)

    for attempt in range(3):
        assert login(mta, "alice@example.com", f"guess-{attempt}")[0] == 535
    # The right password no longer helps from this address.
    assert login(mta, "alice@example.com", PASSWORD) == THROTTLED

    assert login(mta, "alice@example.com", PASSWORD, source="127.0.0.52")[0] == 235
    assert "guess-" not in mta.log()
    assert "AUTH PLAIN throttled for user=<alice@example.com> from [127.0.0.1]" in mta.log()


def test_account_blocked_from_every_address(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_account=3)

    for number in range(3):
        assert login(mta, "alice@example.com", "wrong", source=f"127.0.0.{60 + number}")[0] == 535

    assert login(mta, "alice@example.com", PASSWORD, source="127.0.0.70") == THROTTLED
    assert login(mta, "bob@example.com", PASSWORD, source="127.0.0.60")[0] == 235


def test_unknown_account_counted_like_known(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_account=2)

    for _ in range(2):
        assert login(mta, "nobody@example.com", "wrong")[0] == 535

    assert login(mta, "nobody@example.com", "wrong", source="127.0.0.53") == THROTTLED


def test_block_lifted_after_window(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_client=2, auth_failure_window=2.0)

    for _ in range(2):
        assert login(mta, "alice@example.com", "wrong")[0] == 535
    assert login(mta, "alice@example.com", PASSWORD) == THROTTLED

    assert wait_until(lambda: login(mta, "alice@example.com", PASSWORD)[0] == 235, timeout=10, interval=0.5)


def test_failure_answered_after_delay(make_mta):
    mta = make_mta({"smtp": {"auth_failure_delay": 1.5}})

    started = time.monotonic()
    code, _ = login(mta, "alice@example.com", "wrong")

    assert code == 535
    assert time.monotonic() - started >= 1.5


@pytest.mark.parametrize("address, key", [
    ("192.0.2.7", "client:192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "client:2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "client:192.0.2.7"),
])
def test_client_key_groups_ipv6_by_64(address, key):
    assert client_key(address) == key


def test_account_key_ignores_case():
    assert account_key("Alice@Example.COM") == "account:alice@example.com"


def test_unblock_clears_a_client_block(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_client=2)
    for _ in range(2):
        assert login(mta, "alice@example.com", "wrong")[0] == 535
    assert login(mta, "alice@example.com", PASSWORD) == THROTTLED

    result = mta.cli("auth", "unblock", "--client", "127.0.0.1", "--actor", "ops")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cleared 1 of 1 failure count(s): client:127.0.0.1"
    assert login(mta, "alice@example.com", PASSWORD)[0] == 235


def test_locked_and_deleted_users_cannot_log_in(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_client=100)
    assert login(mta, "alice@example.com", PASSWORD)[0] == 235

    assert mta.cli("user", "lock", "alice@example.com").returncode == 0
    assert mta.cli("user", "delete", "bob@example.com").returncode == 0

    assert login(mta, "alice@example.com", PASSWORD)[0] == 535
    assert login(mta, "bob@example.com", PASSWORD)[0] == 535
    listing = mta.cli("user", "list").stdout
    assert "alice@example.com" in listing
    assert "locked" in listing
    assert "bob@example.com" not in listing
    missing = mta.cli("user", "delete", "bob@example.com")
    assert missing.returncode == 2
    assert "mta: user not found: bob@example.com" in missing.stderr


def test_parallel_guesses_held_to_limit(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_client=3, auth_failure_delay=1.0)

    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(lambda number: login(mta, "alice@example.com", f"guess-{number}")[0], range(12)))

    assert replies.count(535) == 3
    assert replies.count(454) == 9


def test_success_gives_back_its_attempt(throttled_mta):
    mta = throttled_mta(auth_max_failures_per_client=3)

    assert login(mta, "alice@example.com", "wrong")[0] == 535
    assert login(mta, "alice@example.com", "wrong")[0] == 535
    for _ in range(3):
        assert login(mta, "alice@example.com", PASSWORD)[0] == 235
    assert login(mta, "alice@example.com", "wrong")[0] == 535
    assert login(mta, "alice@example.com", PASSWORD) == THROTTLED
