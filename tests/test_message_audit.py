"""The message auditor: accepted messages and delivery outcomes in the audit log, exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator

import asyncpg

from tests.conftest import query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from tests.test_operations import http_get

OUTCOME_ACTIONS = ("message delivered", "message bounced", "message deferred")


def export(mta, *options: str) -> list[dict]:
    result = mta.cli("audit", "export", *options)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def details(entries: list[dict]) -> list[dict]:
    return [json.loads(entry["detail"]) for entry in entries]


def audited_event_ids(mta) -> list[int]:
    entries = export(mta, *[option for action in OUTCOME_ACTIONS for option in ("--action", action)])
    return [detail["event_id"] for detail in details(entries)]


def history_event_ids(mta) -> list[int]:
    rows = query(mta.database_url, "SELECT id FROM delivery_event WHERE status <> 'deleted' ORDER BY id")
    return [row["id"] for row in rows]


def accepted_queue_ids(mta) -> list[str]:
    return [detail["queue_id"] for detail in details(export(mta, "--action", "message accepted"))]


def message_ids(mta) -> list[str]:
    return [row["id"] for row in query(mta.database_url, "SELECT id FROM message")]


def test_sent_message_audited_once(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    code, text = send_mx(mta, "Sender@Example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[1]
    sink.wait_for(1, timeout=30)

    def entries_of_message():
        found = [(entry["action"], json.loads(entry["detail"])) for entry in export(mta)]
        found = [(action, detail) for action, detail in found if detail.get("queue_id") == queue_id]
        return found if len(found) >= 2 else None

    found = wait_until(entries_of_message, timeout=20)

    assert [action for action, _ in found] == ["message accepted", "message delivered"]
    accepted, delivered = found[0][1], found[1][1]
    assert accepted["sender"].startswith("anon.")
    assert accepted["sender"].endswith("@example.net")
    assert delivered["recipient"].endswith(f"@{RELAY_DOMAIN}")
    assert delivered["code"] == 250
    assert delivered["enhanced"] == "2.0.0"


def test_entries_hold_no_address_in_clear(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    code, text = send_mx(mta, "clear.sender@example.net", f"clear.recipient@{RELAY_DOMAIN}")
    assert code == 250, text
    sink.wait_for(1, timeout=30)
    assert wait_until(lambda: len(export(mta, "--action", "message delivered")) == 1)

    dump = json.dumps(export(mta))

    assert "clear.sender" not in dump
    assert "clear.recipient" not in dump


def test_export_selects_id_range_and_action(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    for number in range(3):
        code, text = send_mx(mta, f"sender{number}@example.net", f"user@{RELAY_DOMAIN}")
        assert code == 250, text
    sink.wait_for(3, timeout=30)
    assert wait_until(lambda: len(export(mta, "--action", "message delivered")) == 3)
    ids = [entry["id"] for entry in export(mta)]

    middle = export(mta, "--after-id", str(ids[0]), "--to-id", str(ids[2]))
    accepted = export(mta, "--action", "message accepted")

    assert [entry["id"] for entry in middle] == ids[1:3]
    assert len(accepted) == 3
    assert {entry["action"] for entry in accepted} == {"message accepted"}


def test_bad_entry_id_exits_2(make_mta):
    result = make_mta().cli("audit", "export", "--after-id", "-4")

    assert result.returncode == 2
    assert "invalid entry id '-4'" in result.stderr


def send_many(mta, count: int, sent: list, stop: threading.Event) -> None:
    """Send up to count messages, stopping at the first failure, as a client of a crashing server does."""
    for number in range(count):
        if stop.is_set():
            return
        try:
            code, _ = send_mx(mta, f"sender{number}@example.net", f"user{number}@{RELAY_DOMAIN}")
        except OSError:
            return
        if code == 250:
            sent.append(number)


def test_crash_leaves_no_duplicate_or_gap(make_mta, sink, sink_port):
    # Short leases, so deliveries the killed process had leased are tried again soon.
    mta = make_mta({**relay_config(sink_port, lease_seconds=2.0), "audit": {"interval": 0.05, "batch_size": 3}})
    sent: list = []
    stop = threading.Event()
    sender = threading.Thread(target=send_many, args=(mta, 60, sent, stop))
    sender.start()
    # Killed while messages arrive and the auditor works through small batches.
    assert wait_until(lambda: len(sent) >= 15, timeout=60)
    mta.kill()
    stop.set()
    sender.join(timeout=60)
    audited_before_restart = len(query(mta.database_url, "SELECT id FROM audit_log"))

    mta.start()
    for number in range(5):
        code, text = send_mx(mta, f"late{number}@example.net", f"late{number}@{RELAY_DOMAIN}")
        assert code == 250, text

    def caught_up() -> bool:
        no_delivery_left = not query(mta.database_url, "SELECT id FROM delivery")
        return no_delivery_left and sorted(accepted_queue_ids(mta)) == sorted(message_ids(mta)) \
            and sorted(audited_event_ids(mta)) == history_event_ids(mta)

    assert wait_until(caught_up, timeout=90, interval=0.5), (
        f"deliveries left: {query(mta.database_url, 'SELECT count(*) FROM delivery')[0][0]}, "
        f"accepted entries {len(accepted_queue_ids(mta))} of {len(message_ids(mta))} messages, "
        f"outcome entries {len(audited_event_ids(mta))} of {len(history_event_ids(mta))} events")
    assert audited_before_restart > 0
    assert max(Counter(accepted_queue_ids(mta)).values()) == 1
    assert max(Counter(audited_event_ids(mta)).values()) == 1
    verified = mta.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr


def audit_lag(mta) -> float:
    text = http_get(mta.http_port, "/metrics")[1]
    line = next(line for line in text.splitlines() if line.startswith("mta_audit_lag_seconds "))
    return float(line.split()[1])


@contextlib.contextmanager
def open_transaction(url: str) -> Iterator[None]:
    """Hold a transaction with an id of its own open on the server until the block ends."""
    started = threading.Event()
    finish = threading.Event()

    async def hold() -> None:
        connection = await asyncpg.connect(url)
        try:
            async with connection.transaction():
                await connection.execute("SELECT pg_current_xact_id()")
                started.set()
                await asyncio.to_thread(finish.wait, 60)
        finally:
            await connection.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert started.wait(20)
        yield
    finally:
        finish.set()
        holder.join(timeout=30)


def test_open_transaction_shows_audit_lag(make_mta, sink, sink_port):
    mta = make_mta({**relay_config(sink_port), "audit": {"interval": 0.05}})

    # A transaction older than the message keeps the auditor's horizon back.
    with open_transaction(mta.database_url):
        code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
        assert code == 250, text
        assert wait_until(lambda: audit_lag(mta) >= 1.0, timeout=20)
        assert accepted_queue_ids(mta) == []

    assert wait_until(lambda: audit_lag(mta) == 0.0, timeout=20)
    assert len(accepted_queue_ids(mta)) == 1
