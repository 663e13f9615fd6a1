"""Log formats and address pseudonyms: the formatters alone, then the real ``mta serve``."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import stat
import sys
import threading
from datetime import datetime

import pytest

from mta.config import LoggingConfig
from mta.logs import JsonFormatter, PostfixStyleFormatter, setup_logging
from mta.pseudonym import UNKEYED, Pseudonymiser, load_or_create_key
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until

SENDER = "Sender@example.net"
RECIPIENT = f"user@{RELAY_DOMAIN}"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def make_record(message: str, *args, level: int = logging.INFO, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("mta.smtpd", level, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    return record


def expected_pseudonym(key: bytes, address: str) -> str:
    digest = hmac.new(key, address.lower().encode(), hashlib.sha256).hexdigest()
    return f"anon.{digest[:16]}@{address.rpartition('@')[2].lower()}"


@pytest.mark.parametrize("text, hidden", [
    ("from=<alice@example.com>, size=10", "alice"),
    ("AUTH PLAIN user=<Bob.Smith+tag@Example.COM>", "Bob.Smith+tag"),
    ('to=<"john doe"@example.org>', "john doe"),
    ("to=<jörg@münchen.example>", "jörg"),
    ("to=<root@[192.0.2.1]>", "root"),
    ("550 5.1.1 carol@example.net... User unknown", "carol"),
    ("failed: postgresql://mta:hunter2@db.example.eu/mta", "hunter2"),
])
def test_pseudonymiser_hides_local_part(tmp_path, text, hidden):
    pseudonymiser = Pseudonymiser(tmp_path / "key")

    result = pseudonymiser.apply(text)

    assert hidden not in result
    assert "anon." in result


def test_pseudonymiser_keeps_domain_and_punctuation(tmp_path):
    pseudonymiser = Pseudonymiser(tmp_path / "key")
    key = load_or_create_key(tmp_path / "key")

    result = pseudonymiser.apply("mail from alice@Example.COM. Then to=<bob@example.org>, done")

    assert result == (f"mail from {expected_pseudonym(key, 'alice@example.com')}. "
                      f"Then to=<{expected_pseudonym(key, 'bob@example.org')}>, done")


def test_pseudonym_ignores_case(tmp_path):
    pseudonymiser = Pseudonymiser(tmp_path / "key")

    assert pseudonymiser.apply("ALICE@EXAMPLE.COM") == pseudonymiser.apply("alice@example.com")
    assert pseudonymiser.apply("alice@example.com") != pseudonymiser.apply("alicia@example.com")


def test_pseudonym_key_created_private(tmp_path):
    path = tmp_path / "keys" / "log.key"

    Pseudonymiser(path).apply("a@example.com")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert [entry.name for entry in path.parent.iterdir()] == ["log.key"]


def test_pseudonym_key_same_under_race(tmp_path):
    path = tmp_path / "key"
    keys = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(keys) == 8
    assert len(set(keys)) == 1


def test_unusable_key_redacts_addresses(tmp_path, capsys):
    path = tmp_path / "key"
    path.write_bytes(b"too short")
    pseudonymiser = Pseudonymiser(path)

    first = pseudonymiser.apply("to=<alice@example.com>")
    second = pseudonymiser.apply("to=<bob@example.com>")

    assert first == f"to=<{UNKEYED}@example.com>"
    assert second == f"to=<{UNKEYED}@example.com>"
    assert capsys.readouterr().err.count("mta: log pseudonym key") == 1


def test_json_formatter_fields():
    record = make_record("%s: %s: from=<%s>, size=%d (queued)", "nfwqby27", "4DS3EJN23MFPI5D4", "a@example.com", 10)

    entry = json.loads(JsonFormatter().format(record))

    assert RFC3339_UTC.match(entry["time"]), entry["time"]
    assert entry["level"] == "info"
    assert entry["logger"] == "mta.smtpd"
    assert entry["pid"] == os.getpid()
    assert entry["message"] == "nfwqby27: 4DS3EJN23MFPI5D4: from=<a@example.com>, size=10 (queued)"
    assert entry["session_id"] == "nfwqby27"
    assert entry["queue_id"] == "4DS3EJN23MFPI5D4"


@pytest.mark.parametrize("message, session_id, queue_id", [
    ("4DS3EJN23MFPI5D4: to=<a@example.com>, status=sent", None, "4DS3EJN23MFPI5D4"),
    ("nfwqby27: connect from [127.0.0.1]:4000 to mx", "nfwqby27", None),
    ("starting 1 worker(s), listening on mx 127.0.0.1:2525", None, None),
    ("STARTTLS handshake failed: SSLError()", None, None),
])
def test_json_formatter_leading_ids(message, session_id, queue_id):
    entry = json.loads(JsonFormatter().format(make_record(message)))

    assert entry.get("session_id") == session_id
    assert entry.get("queue_id") == queue_id


def test_json_formatter_takes_extra_ids():
    record = make_record("delivery finished", queue_id="ABCDEFGHIJKLMNOP")

    entry = json.loads(JsonFormatter().format(record))

    assert entry["queue_id"] == "ABCDEFGHIJKLMNOP"


def test_exception_trace_pseudonymised(tmp_path):
    try:
        raise ValueError("mailbox alice@example.com is full")
    except ValueError:
        record = make_record("delivery failed", level=logging.ERROR, exc_info=sys.exc_info())
    pseudonymiser = Pseudonymiser(tmp_path / "key")

    entry = json.loads(JsonFormatter(pseudonymiser).format(record))
    line = PostfixStyleFormatter(pseudonymiser).format(record)

    assert "ValueError" in entry["exception"]
    assert "alice@" not in entry["exception"]
    assert "Traceback" in line
    assert "alice@" not in line


def test_plain_format_unchanged():
    record = make_record("%s: rejected", "nfwqby27", level=logging.WARNING)

    line = PostfixStyleFormatter().format(record)

    assert line.endswith(f" mta.smtpd[{os.getpid()}]: warning: nfwqby27: rejected")


def test_setup_logging_resolves_key_in_data_dir(tmp_path):
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("info", LoggingConfig(format="json", pseudonymise_addresses=True), tmp_path)
        formatter = root.handlers[0].formatter
        formatter.format(make_record("to=<a@example.com>"))
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    assert isinstance(formatter, JsonFormatter)
    assert (tmp_path / "keys" / "log-pseudonym.key").exists()


def json_entries(mta) -> list[dict]:
    """Parse every line of the MTA's log; a line that is not JSON fails the test."""
    entries = []
    for number, line in enumerate(mta.log().splitlines(), start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")
    return entries


def wait_for_sent(mta, queue_id: str) -> list[dict]:
    def sent() -> list[dict]:
        entries = json_entries(mta)
        done = any(entry.get("queue_id") == queue_id and "status=sent" in entry["message"] for entry in entries)
        return entries if done else []

    entries = wait_until(sent)
    assert entries, f"no status=sent line for {queue_id}:\n{mta.log()[-3000:]}"
    return entries


def test_json_log_of_one_message(make_mta, sink, sink_port):
    mta = make_mta({**relay_config(sink_port), "logging": {"format": "json"}})

    code, text = send_mx(mta, SENDER, RECIPIENT)
    assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[1]
    entries = wait_for_sent(mta, queue_id)

    for entry in entries:
        assert {"time", "level", "logger", "pid", "message"} <= entry.keys(), entry
        assert RFC3339_UTC.match(entry["time"]), entry
        datetime.fromisoformat(entry["time"])
        assert isinstance(entry["pid"], int)
    queued = [entry for entry in entries if "(queued)" in entry["message"]]
    assert len(queued) == 1
    assert queued[0]["queue_id"] == queue_id
    assert queued[0]["logger"] == "mta.smtpd"
    assert f"from=<{SENDER}>" in queued[0]["message"]
    session_lines = [entry for entry in entries if entry.get("session_id") == queued[0]["session_id"]]
    assert any("connect from" in entry["message"] for entry in session_lines)
    sent = [entry for entry in entries if entry.get("queue_id") == queue_id and "status=sent" in entry["message"]]
    assert sent[0]["logger"] == "mta.delivery"
    assert f"to=<{RECIPIENT}>" in sent[0]["message"]


def queued_sender(entries: list[dict], queue_id: str) -> str:
    (message,) = [entry["message"] for entry in entries
                  if entry.get("queue_id") == queue_id and "(queued)" in entry["message"]]
    return re.search(r"from=<([^>]*)>", message).group(1)


def test_pseudonymised_json_log(make_mta, sink, sink_port):
    extra = {**relay_config(sink_port), "logging": {"format": "json", "pseudonymise_addresses": True}}
    mta = make_mta(extra)

    queue_ids = []
    for _ in range(2):
        code, text = send_mx(mta, SENDER, RECIPIENT)
        assert code == 250
        queue_ids.append(text.decode().rsplit(" ", 1)[1])
    for queue_id in queue_ids:
        wait_for_sent(mta, queue_id)
    assert len(sink.wait_for(2)) == 2
    entries = json_entries(mta)

    log_text = mta.log()
    assert SENDER.lower() not in log_text.lower()
    assert RECIPIENT not in log_text
    key_path = mta.workdir / "var" / "keys" / "log-pseudonym.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    expected = expected_pseudonym(key_path.read_bytes(), SENDER)
    assert queued_sender(entries, queue_ids[0]) == expected
    assert queued_sender(entries, queue_ids[1]) == expected
    recipient_pseudonym = expected_pseudonym(key_path.read_bytes(), RECIPIENT)
    assert sum(f"to=<{recipient_pseudonym}>" in entry["message"] for entry in entries) >= 2


def test_pseudonymised_plain_log(make_mta, sink, sink_port):
    mta = make_mta({**relay_config(sink_port), "logging": {"pseudonymise_addresses": True}})

    code, text = send_mx(mta, SENDER, RECIPIENT)
    assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[1]
    lines = wait_until(lambda: [line for line in mta.log().splitlines() if queue_id in line and "status=sent" in line])

    assert lines, mta.log()[-3000:]
    assert "to=<anon." in lines[0]
    assert f"@{RELAY_DOMAIN}>" in lines[0]
    assert SENDER.lower() not in mta.log().lower()
    assert RECIPIENT not in mta.log()
