"""Export, erasure and legal holds of one person's data, through the real ``mta serve`` process.

Alice receives mail alone and together with Bob, submits mail to a remote
sink and has a suppression entry. Her export is checked, then her erasure:
her rows, objects and keys go, Bob's mail stays readable, and the audit
chain still verifies without a new entry naming her.
"""

from __future__ import annotations

import json
import mailbox
import shutil
import smtplib
import time
import zipfile

import pytest

from mta.storage.bodies import unwrap_content_key
from mta.storage.crypto import DecryptionError
from tests.conftest import query
from tests.mx import wait_until
from tests.test_key_hierarchy import PASSWORD, add_user, file_masters, live_data_keys, read_copy, send, wait_completed
from tests.test_mailbox_store import THRESHOLD, with_attachments

ALICE = "alice@example.com"
BOB = "bob@example.com"
OUTGOING = b"From: alice@example.com\r\nTo: carol@example.net\r\nSubject: outgoing\r\n\r\nFrom Alice, hello.\r\n"


def submit(mta, sender: str, recipient: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        client.login(sender, PASSWORD)
        client.sendmail(sender, [recipient], body)


def object_path(mta, key: str):
    return mta.workdir / "var" / "blobs" / key[:2] / key[2:4] / key


def mailbox_ids(mta, address: str) -> dict[str, int]:
    rows = query(mta.database_url, "SELECT id, message_id FROM mailbox_message WHERE mailbox = $1", address)
    return {row["message_id"]: row["id"] for row in rows}


@pytest.fixture
def populated(make_mta, sink):
    """An MTA where Alice and Bob have mail, Alice has sent mail and has a suppression entry."""
    mta = make_mta({"mailbox": {"attachment_threshold": THRESHOLD}, "storage": {"inline_max_size": 0}})
    add_user(mta, ALICE)
    add_user(mta, BOB)
    alone = send(mta, "auditor@example.net", [ALICE], with_attachments(b"notes\n", bytes(range(256)) * 32))
    shared = send(mta, "bank@example.net", [ALICE, BOB], b"Subject: shared\r\n\r\nFrom the bank.\r\n")
    bob_only = send(mta, "bank@example.net", [BOB], b"Subject: for bob\r\n\r\nBob only.\r\n")
    submit(mta, ALICE, "carol@example.net", OUTGOING)
    assert sink.wait_for(1)
    for queue_id in (alone, shared, bob_only):
        wait_completed(mta, queue_id)
    result = mta.cli("suppression", "add", "example.org", ALICE, "--reason", "complaint")
    assert result.returncode == 0, result.stderr
    return mta, {"alone": alone, "shared": shared, "bob_only": bob_only}


def test_export_archive_contents(populated, tmp_path):
    mta, queue_ids = populated
    archive_path = tmp_path / "alice.zip"

    result = mta.cli("gdpr", "export", ALICE, "--output", str(archive_path), "--actor", "dpo")

    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(archive_path) as archive:
        assert sorted(archive.namelist()) == ["account.json", "audit.json", "deliveries.json", "mailbox.json",
                                              "mailbox.mbox", "suppression.json"]
        # Every entry is dated at the export, none at the ZIP format's 1980 default.
        assert {entry.date_time[0] for entry in archive.infolist()} == {time.localtime().tm_year}
        assert archive.getinfo("mailbox.mbox").compress_type == zipfile.ZIP_DEFLATED
        archive.extract("mailbox.mbox", tmp_path)
        metadata = json.loads(archive.read("mailbox.json"))
        history = json.loads(archive.read("deliveries.json"))
        suppression = json.loads(archive.read("suppression.json"))
        account = json.loads(archive.read("account.json"))
        audit = json.loads(archive.read("audit.json"))

    messages = list(mailbox.mbox(tmp_path / "mailbox.mbox"))
    assert sorted(message["Subject"] for message in messages) == ["annual report", "shared"]
    assert "From the bank." in next(m for m in messages if m["Subject"] == "shared").get_payload()
    assert {entry["queue_id"] for entry in metadata["messages"]} == {queue_ids["alone"], queue_ids["shared"]}
    assert [entry["filename"] for entry in metadata["attachments"]] == ["report.pdf"]
    assert len(history["sent"]) == 1
    assert [attempt["recipient"] for attempt in history["sent"][0]["attempts"]] == ["carol@example.net"]
    assert {event["queue_id"] for event in history["received"]} == {queue_ids["alone"], queue_ids["shared"]}
    assert [entry["sender_domain"] for entry in suppression] == ["example.org"]
    assert account["address"] == ALICE
    assert "password_hash" not in account
    # Entries of the message auditor about her mail come too, once it has caught up.
    assert [entry["action"] for entry in audit if not entry["action"].startswith("message ")] == [
        "user add", "suppression add"]

    entries = query(mta.database_url, "SELECT actor, detail::text AS detail FROM audit_log WHERE action = 'gdpr.export'")
    assert [entry["actor"] for entry in entries] == ["dpo"]
    detail = json.loads(entries[0]["detail"])
    assert detail["messages"] == 2
    assert ALICE not in entries[0]["detail"]
    assert detail["sha256"] in result.stdout


def test_erase_leaves_no_trace_of_alice(populated, tmp_path):
    mta, queue_ids = populated
    masters = file_masters(mta)
    attachment = query(mta.database_url, "SELECT object_key, wrapped_key FROM mailbox_attachment")[0]
    alone_wrap = query(mta.database_url, "SELECT wrapped_key FROM mailbox_message WHERE message_id = $1",
                       queue_ids["alone"])[0]["wrapped_key"]
    body_key = queue_ids["alone"]
    old_copies = {key: tmp_path / key for key in (body_key, attachment["object_key"])}
    for key, copy in old_copies.items():
        shutil.copy(object_path(mta, key), copy)
    bob_rows = mailbox_ids(mta, BOB)
    pseudonym = mta.cli("gdpr", "pseudonym", ALICE).stdout.strip()
    token = mta.cli("api", "token", "create", "alice-app", "--scope", "send", "--account", ALICE)
    assert token.returncode == 0, token.stderr
    # An event still waiting for its webhook receiver, naming her in mixed case.
    query(mta.database_url, "INSERT INTO webhook_outbox (event_id, endpoint, event, payload) VALUES"
                            " (gen_random_uuid(), 'crm', 'accepted', $1::jsonb)",
          json.dumps({"sender": "Alice@Example.com", "recipients": ["bob@example.com", ALICE]}))

    result = mta.cli("gdpr", "erase", ALICE, "--actor", "dpo")

    assert result.returncode == 0, result.stderr
    assert pseudonym.startswith("anon.")
    assert "1 body(ies)" in result.stdout
    assert "1 API token(s)" in result.stdout
    assert query(mta.database_url, "SELECT 1 FROM api_token") == []
    (event,) = query(mta.database_url, "SELECT payload::text AS payload FROM webhook_outbox")
    assert json.loads(event["payload"]) == {"sender": pseudonym, "recipients": ["bob@example.com", pseudonym]}
    assert mailbox_ids(mta, ALICE) == {}
    assert query(mta.database_url, "SELECT 1 FROM mailbox_attachment") == []
    for key in old_copies:
        assert not object_path(mta, key).exists()
    assert object_path(mta, queue_ids["shared"]).exists()
    for queue_id, row_id in bob_rows.items():
        assert not isinstance(read_copy(mta, masters, row_id), Exception), queue_id

    owners = query(mta.database_url, "SELECT owner FROM data_key WHERE wrapped IS NOT NULL")
    assert not any(ALICE in row["owner"] for row in owners)
    for data_key in live_data_keys(mta, masters):
        with pytest.raises(DecryptionError):
            unwrap_content_key(data_key, bytes(alone_wrap), body_key)
        with pytest.raises(DecryptionError):
            unwrap_content_key(data_key, bytes(attachment["wrapped_key"]), attachment["object_key"])

    assert query(mta.database_url, "SELECT 1 FROM delivery_event WHERE lower(recipient) = $1", ALICE) == []
    assert query(mta.database_url, "SELECT 1 FROM delivery_event WHERE recipient = $1", pseudonym)
    assert query(mta.database_url, "SELECT 1 FROM message WHERE lower(sender) = $1", ALICE) == []
    assert query(mta.database_url, "SELECT 1 FROM message WHERE sender = $1", pseudonym)
    assert query(mta.database_url, "SELECT 1 FROM suppression WHERE address = $1", ALICE) == []
    assert query(mta.database_url, "SELECT 1 FROM mailbox_user WHERE address = $1", ALICE) == []

    verify = mta.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    erase_entries = query(mta.database_url, "SELECT detail::text AS detail FROM audit_log WHERE action = 'gdpr.erase'")
    assert len(erase_entries) == 1
    assert ALICE not in erase_entries[0]["detail"]
    assert json.loads(erase_entries[0]["detail"])["pseudonym"] == pseudonym
    assert "name the address in clear" in result.stderr


def test_erase_is_idempotent(populated):
    mta, _ = populated

    first = mta.cli("gdpr", "erase", ALICE)
    second = mta.cli("gdpr", "erase", ALICE)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "0 mailbox message(s)" in second.stdout
    assert "ids of the data keys destroyed: none left" in second.stdout
    assert f"nothing stored about {ALICE}" in second.stdout
    assert mta.cli("audit", "verify").returncode == 0
    assert len(query(mta.database_url, "SELECT 1 FROM audit_log WHERE action = 'gdpr.erase'")) == 2


def test_erase_finishes_leftover_objects(populated):
    mta, queue_ids = populated
    # An earlier run that stopped after its commit leaves its objects queued.
    query(mta.database_url, "INSERT INTO object_deletion (object_key) VALUES ($1)", queue_ids["bob_only"] + "-gone")
    query(mta.database_url, "INSERT INTO object_deletion (object_key) VALUES ($1)", "ABCDEFGHIJKLMNOP")

    result = mta.cli("gdpr", "erase", "nobody@example.com")

    assert result.returncode == 0, result.stderr
    assert "objects deleted: 2" in result.stdout
    assert query(mta.database_url, "SELECT 1 FROM object_deletion") == []


def test_legal_hold_blocks_erase(populated):
    mta, _ = populated

    no_reason = mta.cli("gdpr", "hold", BOB, "--reason", " ")
    hold = mta.cli("gdpr", "hold", BOB, "--reason", "case 2025-17", "--actor", "legal")
    blocked = mta.cli("gdpr", "erase", BOB)

    assert no_reason.returncode == 2
    assert "a legal hold needs a reason" in no_reason.stderr

    assert hold.returncode == 0, hold.stderr
    assert blocked.returncode == 1
    assert "legal hold" in blocked.stderr
    assert "case 2025-17" in blocked.stderr
    assert len(mailbox_ids(mta, BOB)) == 2
    assert query(mta.database_url, "SELECT 1 FROM mailbox_user WHERE address = $1", BOB)

    release = mta.cli("gdpr", "release", BOB, "--actor", "legal")
    erased = mta.cli("gdpr", "erase", BOB)

    assert release.returncode == 0, release.stderr
    assert erased.returncode == 0, erased.stderr
    assert mailbox_ids(mta, BOB) == {}
    # The message auditor appends its own entries meanwhile, so only the GDPR ones are compared.
    actions = [row["action"] for row in query(mta.database_url,
                                              "SELECT action FROM audit_log WHERE action LIKE 'gdpr.%' ORDER BY id")]
    assert actions[-3:] == ["gdpr.hold", "gdpr.release", "gdpr.erase"]
    details = query(mta.database_url, "SELECT detail::text AS detail FROM audit_log WHERE action LIKE 'gdpr.%'")
    assert not any(BOB in row["detail"] for row in details)


def test_release_without_hold_is_usage_error(make_mta):
    mta = make_mta()

    result = mta.cli("gdpr", "release", BOB)

    assert result.returncode == 2
    assert "has no legal hold" in result.stderr


def test_erase_deletes_queued_mail_from_them(make_mta, sink):
    from collections import deque

    mta = make_mta({"delivery": {"retry_schedule": [3600.0]}})
    add_user(mta, ALICE)
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted"])
    submit(mta, ALICE, "carol@example.net", OUTGOING)
    queued = wait_until(lambda: query(mta.database_url, "SELECT message_id FROM delivery"
                                                        " WHERE due_at > now() + interval '10 minutes'"))
    assert queued

    result = mta.cli("gdpr", "erase", ALICE)

    assert result.returncode == 0, result.stderr
    assert "1 queued deliver(ies)" in result.stdout
    assert query(mta.database_url, "SELECT 1 FROM delivery") == []
    completed = query(mta.database_url, "SELECT sender, completed_at FROM message WHERE id = $1",
                      queued[0]["message_id"])
    assert completed[0]["sender"].startswith("anon.")
    assert completed[0]["completed_at"] is not None
    assert mta.cli("queue", "flush").returncode == 0
    assert sink.wait_for(1, timeout=3) == []
