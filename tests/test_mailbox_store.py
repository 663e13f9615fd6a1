"""The mailbox store's metadata and large attachments, through the real ``mta serve`` process.

Mail arrives over SMTP on the MX listener, is delivered to the local
mailbox, and is read back with ``mta mailbox ...``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

from tests.conftest import query
from tests.test_key_hierarchy import add_user, send, wait_completed

THRESHOLD = 4096

SUBJECT_2047 = b"=?utf-8?q?Kontoauszug_f=C3=BCr_M=C3=A4rz?="
DATED = (b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.net>\r\n"
         b"To: alice@example.com\r\n"
         b"Subject: " + SUBJECT_2047 + b"\r\n"
         b"Date: Tue, 04 Mar 2025 09:15:00 +0100\r\n"
         b"\r\n"
         b"Your statement is ready.\r\n")
UNDATED = b"From: bank@example.net\r\nSubject: plain\r\n\r\nno date here\r\n"
# Nested deeply enough that the email package raises RecursionError while looking for attachments.
NESTED = (b"From: nested@example.net\r\nSubject: nested\r\n" + b"Content-Type: message/rfc822\r\n\r\n" * 1000
          + b"Content-Disposition: attachment\r\n\r\ninside\r\n")


def list_json(mta, address: str, *options: str) -> list[dict]:
    result = mta.cli("mailbox", "list", address, "--json", *options)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def fetch(mta, address: str, row_id: int, tmp_path) -> bytes:
    target = tmp_path / f"message-{row_id}.eml"
    result = mta.cli("mailbox", "fetch", address, str(row_id), "--output", str(target))
    assert result.returncode == 0, result.stderr
    return target.read_bytes()


def with_attachments(small: bytes, large: bytes) -> bytes:
    message = EmailMessage()
    message["From"] = "auditor@example.net"
    message["To"] = "alice@example.com"
    message["Subject"] = "annual report"
    message.set_content("Two files attached.\n")
    message.add_attachment(small, maintype="text", subtype="plain", filename="notes.txt")
    message.add_attachment(large, maintype="application", subtype="pdf", filename="report.pdf")
    return message.as_bytes(policy=policy.SMTP)


def test_mailbox_metadata_after_mx_delivery(make_mta, tmp_path):
    mta = make_mta({"mailbox": {"attachment_threshold": THRESHOLD}})
    add_user(mta, "alice@example.com")

    dated_id = send(mta, "juergen@example.net", ["alice@example.com"], DATED)
    undated_id = send(mta, "bank@example.net", ["alice@example.com"], UNDATED)
    nested_id = send(mta, "nested@example.net", ["alice@example.com"], NESTED)
    wait_completed(mta, dated_id)
    wait_completed(mta, undated_id)
    wait_completed(mta, nested_id)

    listed = {entry["queue_id"]: entry for entry in list_json(mta, "Alice@Example.com")}
    assert set(listed) == {dated_id, undated_id, nested_id}
    dated = listed[dated_id]
    assert dated["subject"] == "Kontoauszug für März"
    assert dated["from"] == "Jürgen Müller <juergen@example.net>"
    assert datetime.fromisoformat(dated["date"]) == datetime.fromisoformat("2025-03-04T09:15:00+01:00")
    assert dated["folder"] == "INBOX"
    assert dated["flags"] == []
    assert dated["attachments"] == 0
    assert dated["size"] == len(fetch(mta, "alice@example.com", dated["id"], tmp_path))
    assert fetch(mta, "alice@example.com", dated["id"], tmp_path).endswith(DATED)

    undated = listed[undated_id]
    assert undated["subject"] == "plain"
    assert undated["from"] == "bank@example.net"
    assert undated["date"] == undated["received_at"]

    # The attachment search fails on it, and the message is delivered whole instead of retried.
    nested = listed[nested_id]
    assert nested["attachments"] == 0
    assert fetch(mta, "alice@example.com", nested["id"], tmp_path).endswith(NESTED.split(b"\r\n", 2)[2])


def test_mailbox_list_pages_and_folders(make_mta):
    mta = make_mta()
    add_user(mta, "alice@example.com")
    queue_ids = [send(mta, "bank@example.net", ["alice@example.com"], UNDATED) for _ in range(3)]
    for queue_id in queue_ids:
        wait_completed(mta, queue_id)

    everything = list_json(mta, "alice@example.com")
    first_page = list_json(mta, "alice@example.com", "--limit", "2")
    second_page = list_json(mta, "alice@example.com", "--limit", "2", "--before", str(first_page[-1]["id"]))

    assert [entry["id"] for entry in everything] == sorted((entry["id"] for entry in everything), reverse=True)
    assert [entry["id"] for entry in first_page + second_page] == [entry["id"] for entry in everything]
    assert list_json(mta, "alice@example.com", "--folder", "Archive") == []
    assert len(list_json(mta, "alice@example.com", "--folder", "INBOX")) == 3
    unknown = mta.cli("mailbox", "list", "bob@example.com")
    assert unknown.returncode == 2
    assert "mailbox bob@example.com is unknown" in unknown.stderr


def test_large_attachment_listed_and_fetched(make_mta, tmp_path):
    mta = make_mta({"mailbox": {"attachment_threshold": THRESHOLD}})
    add_user(mta, "alice@example.com")
    add_user(mta, "bob@example.com")
    # Over 1 MiB once base64-encoded, so the body is streamed from the store and its attachment sealed in pieces.
    large = os.urandom(800_000)
    body = with_attachments(b"small notes\n", large)

    queue_id = send(mta, "auditor@example.net", ["alice@example.com", "bob@example.com"], body)
    wait_completed(mta, queue_id)
    alice_id = list_json(mta, "alice@example.com")[0]["id"]
    bob_id = list_json(mta, "bob@example.com")[0]["id"]

    listing = mta.cli("mailbox", "attachments", "alice@example.com", str(alice_id), "--json")
    assert listing.returncode == 0, listing.stderr
    attachments = [json.loads(line) for line in listing.stdout.splitlines()]
    assert attachments == [{"position": 2, "filename": "report.pdf", "content_type": "application/pdf",
                            "size": len(large)}]

    for address, row_id in (("alice@example.com", alice_id), ("bob@example.com", bob_id)):
        target = tmp_path / f"{address}.pdf"
        result = mta.cli("mailbox", "attachment", address, str(row_id), "2", "--output", str(target))
        assert result.returncode == 0, result.stderr
        assert target.read_bytes() == large

    whole = message_from_bytes(fetch(mta, "alice@example.com", alice_id, tmp_path), policy=policy.default)
    parts = list(whole.iter_attachments())
    assert [part.get_filename() for part in parts] == ["notes.txt", "report.pdf"]
    assert parts[1].get_content() == large

    objects = query(mta.database_url, "SELECT DISTINCT object_key FROM mailbox_attachment")
    assert len(objects) == 1
    key = objects[0]["object_key"]
    stored = (mta.workdir / "var" / "blobs" / key[:2] / key[2:4] / key).read_bytes()
    assert stored[:4] == b"MTAS"
    assert large[:64] not in stored


def test_mailbox_unknown_ids_are_usage_errors(make_mta, tmp_path):
    mta = make_mta({"mailbox": {"attachment_threshold": THRESHOLD}})
    add_user(mta, "alice@example.com")
    add_user(mta, "bob@example.com")
    queue_id = send(mta, "bank@example.net", ["alice@example.com"], UNDATED)
    wait_completed(mta, queue_id)
    alice_id = list_json(mta, "alice@example.com")[0]["id"]

    other = mta.cli("mailbox", "fetch", "bob@example.com", str(alice_id), "--output", str(tmp_path / "x"))
    missing = mta.cli("mailbox", "attachment", "alice@example.com", str(alice_id), "1",
                      "--output", str(tmp_path / "y"))

    assert other.returncode == 2
    assert f"mailbox bob@example.com has no message {alice_id}" in other.stderr
    assert not (tmp_path / "x").exists()
    assert missing.returncode == 2
    assert "has no stored attachment 1" in missing.stderr
