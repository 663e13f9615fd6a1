"""The key hierarchy for bodies at rest, through the real ``mta serve`` process.

Master key, then a data key per owner in PostgreSQL, then a content key per
body: submission and MX round trips in the MTAS format, crypto-erasure of one
mailbox's copy, master key rotation, wrong and missing master keys, an MTA1
body queued before the upgrade, and the master key from the environment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import smtplib
import time
from collections import deque
from pathlib import Path

import asyncpg
import pytest

from mta.delivery.local import read_mailbox_message
from mta.storage.bodies import BodyCodec, unwrap_content_key
from mta.storage.crypto import BodyCipher, DecryptionError
from mta.storage.keyring import DataKey, KeyDestroyedError, Keyring
from mta.storage.local import LocalStore
from mta.storage.master_key import MasterKey, MasterKeys
from mta.storage.stream import parse_header
from tests.conftest import query
from tests.mtaprocess import MtaProcess
from tests.mx import RELAY_DOMAIN, relay_config, wait_until

PASSWORD = "correct horse battery"
BODY = b"From: alice@example.com\r\nSubject: statement\r\n\r\nYour balance is 100 EUR.\r\n"


def add_user(mta, address: str) -> None:
    result = mta.cli("user", "add", address, "--password-stdin", input_text=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def send(mta, sender: str, recipients: list[str], body: bytes = BODY) -> str:
    """Send through the MX listener and return the queue id."""
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail(sender)
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            assert code == 250, text
        code, text = client.data(body)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def master_key_path(mta) -> Path:
    return mta.workdir / "var" / "keys" / "master.key"


def file_masters(mta) -> MasterKeys:
    return MasterKeys(MasterKey.from_bytes(master_key_path(mta).read_bytes()))


def read_copy(mta, masters: MasterKeys, row_id: int) -> bytes | Exception:
    """Return the body of a mailbox row as a reader with these master keys gets it, or the error raised."""
    async def run():
        connection = await asyncpg.connect(mta.database_url)
        try:
            codec = BodyCodec(Keyring(connection, masters))
            return await read_mailbox_message(connection, LocalStore(mta.workdir / "var" / "blobs"), codec, row_id)
        except DecryptionError as error:
            return error
        finally:
            await connection.close()

    return asyncio.run(run())


def mailbox_rows(mta, queue_id: str) -> dict[str, int]:
    rows = query(mta.database_url, "SELECT id, mailbox FROM mailbox_message WHERE message_id = $1", queue_id)
    return {row["mailbox"]: row["id"] for row in rows}


def live_data_keys(mta, masters: MasterKeys) -> list[DataKey]:
    """Unwrap every data key left in the database, as someone holding the master key could."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    rows = query(mta.database_url, "SELECT id, owner, wrapped, master_key_id, wrap_version FROM data_key"
                                   " WHERE wrapped IS NOT NULL")
    return [DataKey(row["id"], row["owner"], AESGCM(masters.unwrap_row(row))) for row in rows]


def wait_completed(mta, queue_id: str) -> None:
    assert wait_until(lambda: query(mta.database_url, "SELECT 1 FROM message WHERE id = $1 AND completed_at IS NOT NULL",
                                    queue_id))


def test_submission_stores_mtas_under_sender_key(make_mta, sink, sink_port):
    extra = {"storage": {"inline_max_size": 0}, "delivery": {"retry_schedule": [3600.0]}}
    mta = make_mta(extra)
    add_user(mta, "alice@example.com")
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted"])

    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        client.login("alice@example.com", PASSWORD)
        client.sendmail("alice@example.com", ["bob@example.net"], BODY)

    rows = wait_until(lambda: query(mta.database_url, "SELECT m.id, m.data_key_id, k.owner FROM message m "
                                                      "JOIN data_key k ON k.id = m.data_key_id"
                                                      " JOIN delivery d ON d.message_id = m.id"
                                                      " WHERE d.due_at > now() + interval '10 minutes'"))
    assert len(rows) == 1
    assert rows[0]["owner"] == "sender:alice@example.com"
    queue_id = rows[0]["id"]
    stored = (mta.workdir / "var" / "blobs" / queue_id[:2] / queue_id[2:4] / queue_id).read_bytes()
    assert stored[:4] == b"MTAS"
    assert parse_header(stored).key_id == f"data-key:{rows[0]['data_key_id']}"
    assert BODY.split(b"\r\n\r\n")[1] not in stored

    assert mta.cli("queue", "flush").returncode == 0
    received = sink.wait_for(1)[0]
    assert received.data.endswith(BODY.split(b"\r\n\r\n")[1])
    assert received.sender == "alice@example.com"


def test_mx_relay_sealed_under_inbound_queue_key(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))

    queue_id = send(mta, "sender@example.net", [f"user@{RELAY_DOMAIN}"])

    assert sink.wait_for(1)[0].data.endswith(b"Your balance is 100 EUR.\r\n")
    owners = query(mta.database_url, "SELECT k.owner FROM message m JOIN data_key k ON k.id = m.data_key_id"
                                     " WHERE m.id = $1", queue_id)
    assert [row["owner"] for row in owners] == ["queue:inbound"]


def test_destroyed_mailbox_key_erases_only_its_copy(make_mta):
    mta = make_mta()
    add_user(mta, "alice@example.com")
    add_user(mta, "bob@example.com")
    shared_id = send(mta, "sender@example.net", ["alice@example.com", "bob@example.com"])
    alone_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, shared_id)
    wait_completed(mta, alone_id)
    masters = file_masters(mta)
    shared = mailbox_rows(mta, shared_id)
    alone = mailbox_rows(mta, alone_id)

    # The queue copy's wrap is gone once the message has left the queue.
    wraps = query(mta.database_url, "SELECT wrapped_key FROM message WHERE id = ANY($1::text[])", [shared_id, alone_id])
    assert [row["wrapped_key"] for row in wraps] == [None, None]
    assert read_copy(mta, masters, shared["alice@example.com"]) == read_copy(mta, masters, shared["bob@example.com"])
    assert read_copy(mta, masters, alone["alice@example.com"]).endswith(b"Your balance is 100 EUR.\r\n")
    object_copy = query(mta.database_url, "SELECT data FROM message_body WHERE message_id = $1", alone_id)[0]["data"]
    alice_wrap = query(mta.database_url, "SELECT wrapped_key FROM mailbox_message WHERE id = $1",
                       alone["alice@example.com"])[0]["wrapped_key"]

    result = mta.cli("keys", "destroy", "mailbox:alice@example.com", "--actor", "dpo")
    assert result.returncode == 0, result.stderr
    assert "destroyed" in result.stdout

    erased = read_copy(mta, masters, shared["alice@example.com"])
    assert isinstance(erased, KeyDestroyedError)
    assert "destroyed" in str(erased)
    assert isinstance(read_copy(mta, masters, alone["alice@example.com"]), KeyDestroyedError)
    assert read_copy(mta, masters, shared["bob@example.com"]).endswith(b"Your balance is 100 EUR.\r\n")
    for data_key in live_data_keys(mta, masters):
        with pytest.raises(DecryptionError):
            unwrap_content_key(data_key, bytes(alice_wrap), alone_id)
    assert object_copy[:4] == b"MTAS"

    entries = query(mta.database_url, "SELECT actor, detail FROM audit_log WHERE action = 'keys.destroy'")
    assert [row["actor"] for row in entries] == ["dpo"]
    assert json.loads(entries[0]["detail"])["owner"] == "mailbox:alice@example.com"
    listing = mta.cli("keys", "list")
    assert listing.returncode == 0, listing.stderr
    assert "mailbox:alice@example.com" in listing.stdout
    assert "mailbox:bob@example.com" in listing.stdout


def test_destroy_unknown_owner_is_usage_error(make_mta):
    mta = make_mta()

    result = mta.cli("keys", "destroy", "mailbox:nobody@example.com")

    assert result.returncode == 2
    assert "no live data key for owner 'mailbox:nobody@example.com'" in result.stderr


def test_rotate_master_keeps_mail_readable(make_mta, tmp_path):
    mta = make_mta()
    add_user(mta, "alice@example.com")
    queue_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, queue_id)
    row_id = mailbox_rows(mta, queue_id)["alice@example.com"]
    old_key = master_key_path(mta).read_bytes()
    old = MasterKey.from_bytes(old_key)
    mta.stop()

    new_key = os.urandom(32)
    new_path = tmp_path / "new-master.key"
    new_path.write_bytes(new_key)
    new = MasterKey.from_bytes(new_key)
    refused = mta.cli("keys", "rotate-master", "--new-key-file", str(new_path))
    assert refused.returncode == 2
    assert f"the new master key {new.key_id} is not the configured master key {old.key_id}" in refused.stderr

    # The order the README gives: the new key current and the old one previous, then rotate.
    old_path = tmp_path / "old-master.key"
    old_path.write_bytes(old_key)
    master_key_path(mta).write_bytes(new_key)
    with mta.config_path.open("a") as config:
        config.write(f'\n[storage]\n"previous_master_key_file" = "{old_path}"\n')
    result = mta.cli("keys", "rotate-master", "--new-key-file", str(new_path), "--actor", "ops")
    assert result.returncode == 0, result.stderr
    assert f"from master key(s) {old.key_id} to {new.key_id}" in result.stdout
    assert "remove storage.previous_master_key_file" in result.stdout
    assert query(mta.database_url, "SELECT key_id FROM master_key")[0]["key_id"] == new.key_id
    versions = query(mta.database_url, "SELECT DISTINCT wrap_version FROM data_key WHERE wrapped IS NOT NULL")
    assert [row["wrap_version"] for row in versions] == [2]

    old_path.unlink()
    mta.config_path.write_text(mta.config_path.read_text().replace(
        f'"previous_master_key_file" = "{old_path}"', ""))
    mta.start()
    new_masters = MasterKeys(new)
    assert read_copy(mta, new_masters, row_id).endswith(b"Your balance is 100 EUR.\r\n")
    assert isinstance(read_copy(mta, MasterKeys(old), row_id), DecryptionError)
    later_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, later_id)
    assert read_copy(mta, new_masters, mailbox_rows(mta, later_id)["alice@example.com"]).endswith(b"100 EUR.\r\n")

    entries = query(mta.database_url, "SELECT actor, detail FROM audit_log WHERE action = 'keys.rotate-master'")
    assert len(entries) == 1
    detail = json.loads(entries[0]["detail"])
    assert detail["old_master_key_ids"] == [old.key_id]
    assert detail["new_master_key_id"] == new.key_id
    assert detail["data_keys"] == 2
    for secret in (old_key, new_key):
        for text in (secret.hex(), base64.b64encode(secret).decode()):
            assert text not in result.stdout + result.stderr
            assert text not in mta.log()
            assert text not in entries[0]["detail"]


def test_previous_master_key_reads_during_rotation(make_mta, tmp_path):
    old_path = tmp_path / "old.key"
    old_path.write_bytes(os.urandom(32))
    mta = make_mta({"storage": {"master_key_file": str(old_path)}})
    add_user(mta, "alice@example.com")
    queue_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, queue_id)
    mta.stop()

    new_path = tmp_path / "new.key"
    new_path.write_bytes(os.urandom(32))
    mta.config_path.write_text(mta.config_path.read_text().replace(
        f'"master_key_file" = "{old_path}"',
        f'"master_key_file" = "{new_path}"\n"previous_master_key_file" = "{old_path}"'))
    mta.start()
    later_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, later_id)

    owners = query(mta.database_url, "SELECT master_key_id FROM data_key ORDER BY id")
    old = MasterKey.from_bytes(old_path.read_bytes())
    assert {row["master_key_id"] for row in owners} == {old.key_id}
    result = mta.cli("keys", "rotate-master", "--new-key-file", str(new_path))
    assert result.returncode == 0, result.stderr
    new = MasterKey.from_bytes(new_path.read_bytes())
    assert {row["master_key_id"] for row in query(mta.database_url, "SELECT master_key_id FROM data_key")} \
        == {new.key_id}
    row_id = mailbox_rows(mta, queue_id)["alice@example.com"]
    assert read_copy(mta, MasterKeys(new), row_id).endswith(b"100 EUR.\r\n")


def test_wrong_master_key_stops_start(make_mta):
    mta = make_mta()
    add_user(mta, "alice@example.com")
    queue_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, queue_id)
    expected_id = file_masters(mta).current.key_id
    mta.stop()

    master_key_path(mta).write_bytes(os.urandom(32))
    result = mta.cli("serve")

    assert result.returncode == 2
    assert f"wrapped under master key(s) {expected_id}" in result.stderr


def test_missing_master_key_stops_start(make_mta):
    mta = make_mta()
    add_user(mta, "alice@example.com")
    queue_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, queue_id)
    mta.stop()

    master_key_path(mta).unlink()
    result = mta.cli("serve")

    assert result.returncode == 2
    assert "the master key file is missing" in result.stderr
    assert not master_key_path(mta).exists()


def test_mta1_body_delivered_after_upgrade(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    add_user(mta, "alice@example.com")
    cipher = BodyCipher(master_key_path(mta).read_bytes())
    legacy = {"LEGACYRELAY0001": f"user@{RELAY_DOMAIN}", "LEGACYLOCAL0001": "alice@example.com"}
    for queue_id, recipient in legacy.items():
        insert_mta1_message(mta, cipher, queue_id, recipient)

    assert sink.wait_for(1)[0].data == BODY
    wait_completed(mta, "LEGACYLOCAL0001")
    row_id = mailbox_rows(mta, "LEGACYLOCAL0001")["alice@example.com"]
    assert read_copy(mta, file_masters(mta), row_id) == BODY
    wraps = query(mta.database_url, "SELECT wrapped_key, data_key_id FROM mailbox_message WHERE id = $1", row_id)
    assert wraps[0]["wrapped_key"] is not None
    assert wraps[0]["data_key_id"] is not None


def insert_mta1_message(mta, cipher: BodyCipher, queue_id: str, recipient: str | None) -> None:
    """Queue a message as the MTA did before the key hierarchy: an MTA1 body wrapped under the master key.

    With recipient None the message gets no delivery row.
    """
    data, wrapped = cipher.encrypt(queue_id, BODY)

    async def run() -> None:
        connection = await asyncpg.connect(mta.database_url)
        try:
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO message (id, sender, size, body_key, wrapped_key, origin, session_id)"
                    " VALUES ($1, 'sender@example.net', $2, NULL, $3, 'mx', 'legacy')", queue_id, len(BODY), wrapped)
                await connection.execute("INSERT INTO message_body (message_id, data) VALUES ($1, $2)", queue_id, data)
                if recipient is not None:
                    await connection.execute("INSERT INTO delivery (message_id, domain, recipients, attempts)"
                                             " VALUES ($1, $2, $3, 0)", queue_id, recipient.rpartition("@")[2],
                                             [recipient])
                    await connection.execute("SELECT pg_notify('mta_delivery', '')")
        finally:
            await connection.close()

    asyncio.run(run())


def test_master_key_from_environment(make_mta, monkeypatch):
    key = os.urandom(32)
    encoded = base64.b64encode(key).decode()
    monkeypatch.setenv("MTA_TEST_MASTER_KEY", encoded)
    mta = make_mta({"storage": {"master_key_env": "MTA_TEST_MASTER_KEY"}, "server": {"log_level": "debug"}})
    add_user(mta, "alice@example.com")
    queue_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, queue_id)

    masters = MasterKeys(MasterKey.from_bytes(key))
    row_id = mailbox_rows(mta, queue_id)["alice@example.com"]
    assert read_copy(mta, masters, row_id) == read_copy(mta, masters, row_id)
    assert read_copy(mta, masters, row_id).endswith(b"100 EUR.\r\n")
    assert not master_key_path(mta).exists()
    assert f"master key {masters.current.key_id} loaded" in mta.log()

    data_keys = live_data_keys(mta, masters)
    assert {data_key.owner for data_key in data_keys} == {"queue:inbound", "mailbox:alice@example.com"}
    unwrapped = [masters.unwrap_row(row) for row in query(
        mta.database_url, "SELECT id, owner, wrapped, master_key_id, wrap_version FROM data_key")]
    listing = mta.cli("keys", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    for secret in [key, *unwrapped]:
        for text in (secret.hex(), base64.b64encode(secret).decode()):
            assert text not in mta.log()
            assert text not in listing.stdout


def test_master_key_environment_missing(make_mta, monkeypatch):
    monkeypatch.delenv("MTA_TEST_MASTER_KEY", raising=False)
    mta = make_mta({"storage": {"master_key_env": "MTA_TEST_MASTER_KEY"}}, start=False)

    result = mta.cli("serve")

    assert result.returncode == 2
    assert "environment variable MTA_TEST_MASTER_KEY (storage.master_key_env) is missing" in result.stderr


def test_master_key_environment_invalid(make_mta, monkeypatch):
    monkeypatch.setenv("MTA_TEST_MASTER_KEY", base64.b64encode(b"short").decode())
    mta = make_mta({"storage": {"master_key_env": "MTA_TEST_MASTER_KEY"}}, start=False)

    result = mta.cli("serve")

    assert result.returncode == 2
    assert "must contain base64 of 32 octets, found 5 octets" in result.stderr


def send_until_accepted(mta, sender: str, recipients: list[str], attempts: int = 3) -> str:
    """Send through MX, retrying a 451 as a client would; return the queue id."""
    for _ in range(attempts):
        with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
            client.ehlo("client.example.net")
            client.mail(sender)
            for recipient in recipients:
                assert client.rcpt(recipient)[0] == 250
            code, text = client.data(BODY)
        if code == 250:
            return text.decode().rsplit(" ", 1)[1]
        assert code == 451, text
    raise AssertionError(f"not accepted after {attempts} attempts")


def test_mail_after_destroy_gets_new_key(make_mta):
    mta = make_mta({"delivery": {"retry_schedule": [1.0]}})
    add_user(mta, "alice@example.com")
    first_id = send(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, first_id)

    # The running worker still caches both keys; the database refuses rows that name them.
    for owner in ("mailbox:alice@example.com", "queue:inbound"):
        result = mta.cli("keys", "destroy", owner, "--actor", "dpo")
        assert result.returncode == 0, result.stderr
    second_id = send_until_accepted(mta, "sender@example.net", ["alice@example.com"])
    wait_completed(mta, second_id)

    masters = file_masters(mta)
    second = mailbox_rows(mta, second_id)
    assert read_copy(mta, masters, second["alice@example.com"]).endswith(b"Your balance is 100 EUR.\r\n")
    assert isinstance(read_copy(mta, masters, mailbox_rows(mta, first_id)["alice@example.com"]), KeyDestroyedError)
    owners = query(mta.database_url, "SELECT owner FROM data_key WHERE destroyed_at IS NULL ORDER BY owner")
    assert [row["owner"] for row in owners] == ["mailbox:alice@example.com", "queue:inbound"]


def test_erased_queued_body_bounces(make_mta, sink, sink_port):
    mta = make_mta({**relay_config(sink_port, retry_schedule=[3600.0]),
                    "storage": {"data_key_cache_seconds": 1.0}})
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted"])
    queue_id = send(mta, f"sender@{RELAY_DOMAIN}", [f"user@{RELAY_DOMAIN}"])
    assert wait_until(lambda: query(mta.database_url, "SELECT 1 FROM delivery WHERE message_id = $1"
                                                      " AND attempts = 1 AND lease_owner IS NULL", queue_id))

    result = mta.cli("keys", "destroy", "queue:inbound")
    assert result.returncode == 0, result.stderr
    # The worker reads the tombstone only once its cached data keys expire, after data_key_cache_seconds.
    time.sleep(1.2)
    assert mta.cli("queue", "flush").returncode == 0

    notification = sink.wait_for(1)[0]
    assert notification.sender == "<>"
    assert notification.recipients == [f"sender@{RELAY_DOMAIN}"]
    assert b"Status: 5.3.0" in notification.data
    assert b"Your balance" not in notification.data
    wait_completed(mta, queue_id)
    assert query(mta.database_url, "SELECT 1 FROM delivery WHERE message_id = $1", queue_id) == []
    assert f"{queue_id}: body erased, failing delivery" in mta.log()
    assert "dsn=5.3.0, status=bounced" in mta.log()


def test_queue_delete_and_bounce_drop_queue_wrap(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port, retry_schedule=[3600.0]))
    add_user(mta, "alice@example.com")
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted", "451 4.7.1 greylisted"])
    queue_ids = [send(mta, f"sender@{RELAY_DOMAIN}", ["alice@example.com", f"user@{RELAY_DOMAIN}"])
                 for _ in range(2)]
    for queue_id in queue_ids:
        assert wait_until(lambda: query(mta.database_url, "SELECT 1 FROM delivery WHERE message_id = $1"
                                                          " AND attempts = 1 AND lease_owner IS NULL", queue_id))
        assert wait_until(lambda: mailbox_rows(mta, queue_id))
    wraps = query(mta.database_url, "SELECT wrapped_key FROM message WHERE id = ANY($1::text[])", queue_ids)
    assert all(row["wrapped_key"] is not None for row in wraps)

    for action, queue_id in zip(("delete", "bounce"), queue_ids):
        result = mta.cli("queue", action, queue_id)
        assert result.returncode == 0, result.stderr

    rows = query(mta.database_url, "SELECT id, wrapped_key, completed_at FROM message WHERE id = ANY($1::text[])",
                 queue_ids)
    assert [row["wrapped_key"] for row in rows] == [None, None]
    assert all(row["completed_at"] is not None for row in rows)
    masters = file_masters(mta)
    for queue_id in queue_ids:
        assert read_copy(mta, masters, mailbox_rows(mta, queue_id)["alice@example.com"]).endswith(b"100 EUR.\r\n")
    assert sink.wait_for(1)[0].recipients == [f"sender@{RELAY_DOMAIN}"]


def test_second_node_needs_recorded_master_key(make_mta, dns, sink_port, tmp_path):
    first = make_mta()
    recorded = query(first.database_url, "SELECT key_id FROM master_key")
    assert [row["key_id"] for row in recorded] == [file_masters(first).current.key_id]
    (tmp_path / "second").mkdir()
    second = MtaProcess(tmp_path / "second", first.database_url, dns.port, sink_port)

    missing = second.cli("serve")
    assert missing.returncode == 2
    assert f"the master key file is missing, but the database records master key {recorded[0]['key_id']}" \
        in missing.stderr
    assert not master_key_path(second).exists()



def test_node_with_other_master_key_stops(make_mta):
    # The state a node finds when another node, starting on the same empty database, recorded its key first.
    mta = make_mta(start=False)
    assert mta.cli("migrate").returncode == 0
    query(mta.database_url, "INSERT INTO master_key (key_id) VALUES ('0badc0de')")
    master_key_path(mta).parent.mkdir(parents=True)
    master_key_path(mta).write_bytes(os.urandom(32))

    result = mta.cli("serve")

    assert result.returncode == 2
    assert "the database records master key 0badc0de, but this node loaded" in result.stderr
    assert "copy its key to storage.master_key_file" in result.stderr


def test_data_key_wrap_binds_its_id():
    masters = MasterKeys(MasterKey.from_bytes(os.urandom(32)))
    key = os.urandom(32)
    key_id = masters.current.key_id

    wrapped = masters.wrap_data_key(key, "mailbox:alice@example.com", 7)

    assert masters.unwrap_data_key(wrapped, "mailbox:alice@example.com", key_id, 7, 2) == key
    with pytest.raises(DecryptionError):
        masters.unwrap_data_key(wrapped, "mailbox:alice@example.com", key_id, 8, 2)
    with pytest.raises(DecryptionError):
        masters.unwrap_data_key(wrapped, "mailbox:bob@example.com", key_id, 7, 2)


def test_version_1_data_key_wrap_still_opens():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    master = MasterKey.from_bytes(os.urandom(32))
    key = os.urandom(32)
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(master.key).encrypt(nonce, key, b"mta data key v1\x00queue:inbound")

    assert MasterKeys(master).unwrap_data_key(wrapped, "queue:inbound", master.key_id, 3, 1) == key


def test_rotation_rewraps_older_body_keys_in_batches(make_mta):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from mta.storage.crypto import unwrap_legacy_body_key
    from mta.storage.key_admin import rewrap_legacy_body_keys

    mta = make_mta()
    old = file_masters(mta).current
    mta.stop()
    queue_ids = [f"LEGACYBATCH0000{number}" for number in range(5)]
    for queue_id in queue_ids:
        insert_mta1_message(mta, BodyCipher(old.key), queue_id, f"user@{RELAY_DOMAIN}")
    new = MasterKey.from_bytes(os.urandom(32))

    async def rewrap() -> int:
        connection = await asyncpg.connect(mta.database_url)
        try:
            return await rewrap_legacy_body_keys(connection, MasterKeys(new, old), new, batch_size=2)
        finally:
            await connection.close()

    assert asyncio.run(rewrap()) == 5
    assert asyncio.run(rewrap()) == 0
    rows = query(mta.database_url, "SELECT id, wrapped_key FROM message WHERE id = ANY($1::text[])", queue_ids)
    assert len(rows) == 5
    for row in rows:
        unwrap_legacy_body_key([AESGCM(new.key)], row["id"], bytes(row["wrapped_key"]))


def insert_legacy_delivery(mta, cipher: BodyCipher, queue_id: str, mailboxes: list[str]) -> None:
    """Store a message delivered before the key hierarchy: mailbox rows without wraps of their own."""
    insert_mta1_message(mta, cipher, queue_id, None)
    query(mta.database_url, "UPDATE message SET completed_at = now() WHERE id = $1", queue_id)
    query(mta.database_url, "INSERT INTO mailbox_message (mailbox, message_id, size, date)"
                            " SELECT unnest($2::text[]), $1, $3, now()", queue_id, mailboxes, len(BODY))


def test_destroy_deletes_older_mailbox_rows(make_mta):
    mta = make_mta()
    add_user(mta, "alice@example.com")
    add_user(mta, "bob@example.com")
    masters = file_masters(mta)
    insert_legacy_delivery(mta, BodyCipher(masters.current.key), "LEGACYSHARED0001", ["alice@example.com",
                                                                                    "bob@example.com"])
    rows = mailbox_rows(mta, "LEGACYSHARED0001")
    assert read_copy(mta, masters, rows["alice@example.com"]) == BODY

    # The domain and the local part are matched without case, as the MTA stores owners in lower case.
    result = mta.cli("keys", "destroy", "mailbox:Alice@EXAMPLE.com", "--actor", "dpo")
    assert result.returncode == 0, result.stderr
    assert "deleted 1 mailbox message(s) of mailbox:alice@example.com" in result.stdout

    assert set(mailbox_rows(mta, "LEGACYSHARED0001")) == {"bob@example.com"}
    assert read_copy(mta, masters, rows["bob@example.com"]) == BODY
    entries = query(mta.database_url, "SELECT detail FROM audit_log WHERE action = 'keys.destroy'")
    assert json.loads(entries[0]["detail"])["owner"] == "mailbox:alice@example.com"

    result = mta.cli("keys", "destroy", "mailbox:bob@example.com")
    assert result.returncode == 0, result.stderr
    assert mailbox_rows(mta, "LEGACYSHARED0001") == {}
    left = query(mta.database_url, "SELECT wrapped_key FROM message WHERE id = 'LEGACYSHARED0001'")
    assert left[0]["wrapped_key"] is None
    assert query(mta.database_url, "SELECT 1 FROM message_body WHERE message_id = 'LEGACYSHARED0001'") == []
