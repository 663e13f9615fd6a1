"""The HTTP API against the real ``mta serve`` process, over loopback only.

One MTA serves the whole module. Tokens come from ``mta api token create``;
messages go to the loopback sink through the loopback DNS server, and their
DKIM signatures are checked against the key published there.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import time
import zipfile
from collections import deque
from collections.abc import Iterator

import dkim
import httpx
import pytest

from tests.conftest import create_database, query, stop_and_check
from tests.mtaprocess import MtaProcess
from tests.mx import wait_until
from tests.test_end_to_end import PASSWORD, add_alice, publish_dkim, txt_lookup

MAX_SIZE = 200_000
MAX_RECIPIENTS = 100  # the default of smtp.max_recipients
# Octets: a decoded attachment larger than this is also stored as an object of its own.
ATTACHMENT_THRESHOLD = 1024


class Api:
    """An MTA with the API, and a token per role."""

    def __init__(self, mta: MtaProcess, tokens: dict[str, str]):
        self.mta = mta
        self.tokens = tokens
        self.base = f"http://127.0.0.1:{mta.http_port}"

    def call(self, method: str, path: str, token: str | None = "admin", **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        return httpx.request(method, self.base + path, headers=headers, timeout=20, **kwargs)


def create_token(mta: MtaProcess, name: str, *options: str) -> str:
    result = mta.cli("api", "token", "create", name, *options)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def api(pg, dns, sink_port, tmp_path_factory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("api")
    # Deferred mail waits an hour, so queue tests see it in the queue.
    extra = {"smtp": {"max_message_size": MAX_SIZE},
             "delivery": {"retry_schedule": [3600.0]},
             "mailbox": {"attachment_threshold": ATTACHMENT_THRESHOLD}}
    mta = MtaProcess(workdir, create_database(pg), dns.port, sink_port, extra)
    mta.start()
    add_alice(mta)
    publish_dkim(mta, dns)
    every_scope = [option for scope in ("send", "queue:read", "queue:write", "suppression:read", "suppression:write",
                                        "audit:read", "mailbox:read", "gdpr") for option in ("--scope", scope)]
    tokens = {
        "admin": create_token(mta, "admin", *every_scope, "--sender-domain", "example.com"),
        "alice": create_token(mta, "alice", "--scope", "send", "--account", "alice@example.com"),
        "reader": create_token(mta, "reader", "--scope", "queue:read"),
    }
    yield Api(mta, tokens)
    stop_and_check([mta])


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def send_json(api: Api, token: str = "admin", **fields) -> httpx.Response:
    message = {"from": "noreply@example.com", "to": ["bob@example.net"], "subject": "Hello", "text": "Hi Bob.",
               **fields}
    return api.call("POST", "/v1/messages", token, json=message)


def test_missing_token_gets_401(api):
    response = api.call("GET", "/v1/queue", token=None)

    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_token_gets_401(api):
    forged = api.tokens["admin"][:-4] + "AAAA"

    for token in (forged, "not-a-token"):
        response = api.call("GET", "/v1/queue", token=token)
        assert response.status_code == 401
        assert error_code(response) == "invalid_token"


def test_missing_scope_gets_403(api):
    cases = [("POST", "/v1/queue/AAAAAAAAAAAAAAAA/hold"), ("GET", "/v1/suppression"), ("GET", "/v1/audit/verify"),
             ("POST", "/v1/messages"), ("GET", "/v1/mailbox/alice@example.com/messages"),
             ("GET", "/v1/mailbox/alice@example.com/messages/1"),
             ("GET", "/v1/mailbox/alice@example.com/messages/1/attachments/1"),
             ("POST", "/v1/gdpr/alice@example.com/export"), ("POST", "/v1/gdpr/alice@example.com/erase"),
             ("PUT", "/v1/gdpr/alice@example.com/hold"), ("DELETE", "/v1/gdpr/alice@example.com/hold")]
    for method, path in cases:
        response = api.call(method, path, token="reader")
        assert response.status_code == 403, path
        assert error_code(response) == "insufficient_scope"

    assert api.call("GET", "/v1/queue", token="reader").status_code == 200
    lines = [line for line in api.mta.log().splitlines() if " api: " in line]
    assert any("warning: api: GET /v1/mailbox/{address}/messages status=403 token=reader" in line
               for line in lines), lines[-5:]
    assert not any("alice@example.com" in line for line in lines)
    metrics = httpx.get(api.base + "/metrics", timeout=20).text
    assert 'mta_api_requests_total{route="/v1/suppression",status_class="4xx"}' in metrics


def test_json_message_arrives_signed(api, sink, dns):
    attachment = base64.b64encode(b"%PDF-1.4 invoice").decode()
    response = send_json(api, cc=["Carol <carol@example.net>"], html="<p>Hi Bob.</p>",
                         headers={"Reply-To": "desk@example.com"},
                         attachments=[{"filename": "invoice.pdf", "content_type": "application/pdf",
                                       "content": attachment}])

    assert response.status_code == 202, response.text
    queue_id = response.json()["queue_id"]
    assert response.json()["recipients"] == 2
    received = sink.wait_for(1)[0]
    assert sorted(received.recipients) == ["bob@example.net", "carol@example.net"]
    assert received.sender == "noreply@example.com"
    assert f"with HTTP id {queue_id}".encode() in received.data
    assert dkim.verify(received.data, dnsfunc=txt_lookup(dns))

    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Reply-To"] == "desk@example.com"
    assert parsed["Message-ID"]
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Hi Bob.</p>"
    (part,) = list(parsed.iter_attachments())
    assert part.get_filename() == "invoice.pdf"
    assert part.get_content() == b"%PDF-1.4 invoice"


def test_raw_message_arrives_without_bcc(api, sink, dns):
    raw = (b"From: Alice <alice@example.com>\nTo: bob@example.net\nBcc: dave@example.net\n"
           b"Subject: raw\n\nUnix line ends.\n")
    response = api.call("POST", "/v1/messages", "alice", content=raw, headers={"Content-Type": "message/rfc822"})

    assert response.status_code == 202, response.text
    received = sink.wait_for(1)[0]
    assert sorted(received.recipients) == ["bob@example.net", "dave@example.net"]
    assert b"dave@" not in received.data
    assert b"Unix line ends.\r\n" in received.data
    assert dkim.verify(received.data, dnsfunc=txt_lookup(dns))


def test_raw_message_envelope_from_query(api, sink):
    raw = b"From: alice@example.com\r\nTo: list@example.net\r\nSubject: list\r\n\r\nHi.\r\n"
    response = api.call("POST", "/v1/messages?to=erin@example.net", "alice", content=raw,
                        headers={"Content-Type": "message/rfc822"})

    assert response.status_code == 202, response.text
    assert sink.wait_for(1)[0].recipients == ["erin@example.net"]


def test_from_outside_token_gets_403(api):
    assert error_code(send_json(api, token="alice")) == "sender_not_allowed"
    assert error_code(send_json(api, **{"from": "ceo@example.org"})) == "sender_not_allowed"

    raw = b"From: alice@example.com\r\nFrom: ceo@example.com\r\nTo: bob@example.net\r\n\r\nHi.\r\n"
    response = api.call("POST", "/v1/messages", "alice", content=raw, headers={"Content-Type": "message/rfc822"})
    assert response.status_code == 422
    assert error_code(response) == "invalid_message"


def test_submission_limits_apply(api):
    too_large = send_json(api, text="x" * MAX_SIZE)
    assert too_large.status_code == 413
    assert error_code(too_large) == "message_too_large"

    too_many = send_json(api, to=[f"user{n}@example.net" for n in range(MAX_RECIPIENTS + 1)])
    assert too_many.status_code == 422
    assert error_code(too_many) == "too_many_recipients"

    unknown = send_json(api, to=["nobody@example.com"])
    assert unknown.status_code == 422
    assert error_code(unknown) == "unknown_recipient"


def test_malformed_messages_get_422(api):
    cases = [
        ({"to": ["bob@example.net, eve@example.net"]}, "invalid_address"),
        ({"subject": "two\r\nBcc: eve@example.net"}, "invalid_message"),
        ({"headers": {"From": "ceo@example.com"}}, "invalid_message"),
        ({"text": None}, "invalid_message"),
        ({"attachments": [{"filename": "a", "content": "not base64!"}]}, "invalid_message"),
        ({"unknown": 1}, "invalid_request"),
    ]
    for fields, code in cases:
        response = send_json(api, **fields)
        assert response.status_code == 422, fields
        assert error_code(response) == code, fields

    bare_cr = b"From: alice@example.com\r\nTo: bob@example.net\r\n\r\nbare\rCR\r\n"
    response = api.call("POST", "/v1/messages", "alice", content=bare_cr, headers={"Content-Type": "message/rfc822"})
    assert error_code(response) == "invalid_message"

    response = api.call("POST", "/v1/messages", content=b"hello", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"


def deferred_message(api: Api, sink, recipient: str) -> str:
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted"])
    response = send_json(api, to=[recipient])
    assert response.status_code == 202, response.text
    queue_id = response.json()["queue_id"]
    assert wait_until(lambda: [row for row in api.call("GET", f"/v1/queue?recipient={recipient}").json()
                               if row["state"] == "deferred"])
    return queue_id


def test_queue_listing_and_actions(api, sink):
    queue_id = deferred_message(api, sink, "frank@example.net")

    (row,) = api.call("GET", "/v1/queue?state=deferred&recipient=frank@example.net", token="reader").json()
    assert row["queue_id"] == queue_id
    assert row["last_reply"].startswith("451 4.7.1")
    details = api.call("GET", f"/v1/queue/{queue_id.lower()}", token="reader").json()
    assert details["message"]["origin"] == "api"
    assert details["deliveries"][0]["recipients"] == ["frank@example.net"]

    assert api.call("POST", f"/v1/queue/{queue_id}/hold").json() == {"queue_id": queue_id, "changed": True}
    assert api.call("POST", f"/v1/queue/{queue_id}/hold").json()["changed"] is False
    assert api.call("GET", f"/v1/queue?state=held&recipient=frank@example.net").json()[0]["queue_id"] == queue_id
    assert api.call("POST", f"/v1/queue/{queue_id}/release").json()["changed"] is True
    assert sink.wait_for(1)[0].recipients == ["frank@example.net"]

    actors = query(api.mta.database_url, "SELECT actor, action FROM audit_log WHERE detail->'queue_ids' ? $1",
                   queue_id)
    assert {(row["actor"], row["action"]) for row in actors} == {("api:admin", "queue hold"),
                                                                ("api:admin", "queue release")}


def test_queue_delete_and_bounce(api, sink):
    deleted = deferred_message(api, sink, "gina@example.net")
    bounced = deferred_message(api, sink, "hank@example.net")

    assert api.call("DELETE", f"/v1/queue/{deleted}").json() == {"queue_id": deleted, "changed": True}
    assert api.call("POST", f"/v1/queue/{bounced}/bounce").json() == {"queue_id": bounced, "changed": True}
    assert api.call("GET", "/v1/queue?recipient=gina@example.net").json() == []
    assert api.call("GET", "/v1/queue?recipient=hank@example.net").json() == []

    events = query(api.mta.database_url, "SELECT message_id, status FROM delivery_event WHERE message_id = ANY($1)",
                   [deleted, bounced])
    assert {(row["message_id"], row["status"]) for row in events} >= {(deleted, "deleted"), (bounced, "bounced")}


def test_queue_errors(api):
    missing = api.call("GET", "/v1/queue/AAAAAAAAAAAAAAAA")
    assert missing.status_code == 404
    assert error_code(missing) == "not_found"

    malformed = api.call("POST", "/v1/queue/not-an-id/retry")
    assert malformed.status_code == 422
    assert error_code(malformed) == "invalid_queue_id"

    bad_age = api.call("GET", "/v1/queue?older_than=yesterday")
    assert bad_age.status_code == 422
    assert error_code(bad_age) == "invalid_request"


def test_suppression_crud(api):
    entry = {"sender_domain": "Example.com", "address": "Ivy@Example.net", "reason": "asked to stop", "days": 30}
    created = api.call("POST", "/v1/suppression", json=entry)
    assert created.status_code == 201, created.text
    assert created.json()["address"] == "ivy@example.net"
    assert created.json()["source"] == "operator"
    assert created.json()["expires_at"] is not None

    listed = api.call("GET", "/v1/suppression?sender_domain=example.com&address=ivy@example.net").json()
    assert [row["reason"] for row in listed] == ["asked to stop"]

    params = {"sender_domain": "example.com", "address": "ivy@example.net"}
    assert api.call("DELETE", "/v1/suppression", params=params).status_code == 204
    again = api.call("DELETE", "/v1/suppression", params=params)
    assert again.status_code == 404
    assert error_code(again) == "not_found"
    assert api.call("GET", "/v1/suppression?address=ivy@example.net").json() == []

    invalid = api.call("POST", "/v1/suppression", json={"sender_domain": "example.com", "address": "no-at-sign"})
    assert invalid.status_code == 422
    assert error_code(invalid) == "invalid_address"

    actions = query(api.mta.database_url, "SELECT action FROM audit_log WHERE actor = 'api:admin'"
                                          " AND detail->>'address' = 'ivy@example.net' ORDER BY id")
    assert [row["action"] for row in actions] == ["suppression add", "suppression remove"]


def test_audit_verify(api):
    response = api.call("GET", "/v1/audit/verify")

    assert response.status_code == 200
    result = response.json()
    assert result["valid"] is True
    assert result["broken_at"] is None
    assert result["entries"] >= 3
    assert len(result["head"]) == 64


def add_user(api: Api, address: str) -> None:
    result = api.mta.cli("user", "add", address, "--password-stdin", input_text=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def delivered_message(api: Api, address: str, subject: str, attachment: bytes) -> dict:
    """Send a message with one attachment to a local mailbox; return its listing entry once it is there."""
    content = base64.b64encode(attachment).decode()
    response = send_json(api, to=[address], subject=subject, attachments=[
        {"filename": "report 1.bin", "content_type": "application/octet-stream", "content": content}])
    assert response.status_code == 202, response.text
    page = wait_until(lambda: api.call("GET", f"/v1/mailbox/{address}/messages").json()["messages"])
    assert page, f"nothing reached the mailbox of {address}"
    return page[0]


def test_mailbox_list_fetch_attachment(api, tmp_path):
    add_user(api, "lena@example.com")
    attachment = bytes(range(256)) * 16
    listed = delivered_message(api, "Lena@Example.com", "Quarterly report", attachment)

    assert listed["subject"] == "Quarterly report"
    assert listed["from"] == "noreply@example.com"
    assert listed["folder"] == "INBOX"
    assert listed["attachments"] == 1
    message_id = listed["id"]

    first = api.call("GET", "/v1/mailbox/lena@example.com/messages?limit=1").json()
    assert first["next_cursor"] == message_id
    after = api.call("GET", f"/v1/mailbox/lena@example.com/messages?limit=1&cursor={message_id}").json()
    assert after == {"messages": [], "next_cursor": None}
    other_folder = api.call("GET", "/v1/mailbox/lena@example.com/messages?folder=Archive").json()
    assert other_folder["messages"] == []

    fetched = api.call("GET", f"/v1/mailbox/lena@example.com/messages/{message_id}")
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "message/rfc822"
    assert int(fetched.headers["content-length"]) == listed["size"] == len(fetched.content)
    result = api.mta.cli("mailbox", "fetch", "lena@example.com", str(message_id), "--output", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert fetched.content == (tmp_path / "m").read_bytes()
    parsed = email.message_from_bytes(fetched.content, policy=email.policy.default)
    assert parsed["Subject"] == "Quarterly report"

    attachments = api.call("GET", f"/v1/mailbox/lena@example.com/messages/{message_id}/attachments").json()
    assert attachments == [{"position": 1, "filename": "report 1.bin", "content_type": "application/octet-stream",
                            "size": len(attachment)}]
    stored = api.call("GET", f"/v1/mailbox/lena@example.com/messages/{message_id}/attachments/1")
    assert stored.status_code == 200
    assert stored.content == attachment
    assert stored.headers["content-type"] == "application/octet-stream"
    assert stored.headers["content-disposition"] == "attachment; filename*=UTF-8''report%201.bin"


def test_mailbox_errors(api):
    cases = [("/v1/mailbox/nobody@example.com/messages", 404, "unknown_mailbox"),
             ("/v1/mailbox/nobody@example.com/messages/1", 404, "unknown_mailbox"),
             ("/v1/mailbox/alice@example.com/messages/999999999", 404, "not_found"),
             ("/v1/mailbox/alice@example.com/messages/999999999/attachments/1", 404, "not_found"),
             ("/v1/mailbox/not-an-address/messages", 422, "invalid_address"),
             ("/v1/mailbox/alice@example.com/messages?limit=0", 422, "invalid_request")]
    for path, status, code in cases:
        response = api.call("GET", path)
        assert response.status_code == status, path
        assert error_code(response) == code, path


def archive_members(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_gdpr_hold_export_erase(api, tmp_path):
    add_user(api, "mona@example.com")
    attachment = b"statement " * 200
    message_id = delivered_message(api, "mona@example.com", "Statement", attachment)["id"]

    held = api.call("PUT", "/v1/gdpr/mona@example.com/hold", json={"reason": "case 2024-17"})
    assert held.json() == {"address": "mona@example.com", "reason": "case 2024-17", "created": True}
    refused = api.call("POST", "/v1/gdpr/mona@example.com/erase")
    assert refused.status_code == 409
    assert error_code(refused) == "legal_hold"
    assert "case 2024-17" in refused.json()["error"]["message"]
    assert api.call("GET", f"/v1/mailbox/mona@example.com/messages/{message_id}").status_code == 200
    assert api.call("DELETE", "/v1/gdpr/mona@example.com/hold").status_code == 204
    assert error_code(api.call("DELETE", "/v1/gdpr/mona@example.com/hold")) == "not_found"

    exported = api.call("POST", "/v1/gdpr/mona@example.com/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/zip"
    members = archive_members(exported.content)
    assert b"Subject: Statement\n" in members["mailbox.mbox"]
    result = api.mta.cli("gdpr", "export", "mona@example.com", "--output", str(tmp_path / "cli.zip"), "--actor", "dpo")
    assert result.returncode == 0, result.stderr
    from_cli = archive_members((tmp_path / "cli.zip").read_bytes())
    # audit.json differs: the second export lists the first one's entry.
    assert sorted(members) == sorted(from_cli)
    for name in set(members) - {"audit.json"}:
        assert members[name] == from_cli[name], name

    erased = api.call("POST", "/v1/gdpr/mona@example.com/erase")
    assert erased.status_code == 200, erased.text
    assert erased.json()["mailbox_messages"] == 1
    assert erased.json()["accounts"] == 1
    # The tables are vacuumed after the reply.
    assert wait_until(lambda: f"vacuum after the erasure of {erased.json()['pseudonym']} done" in api.mta.log())
    again = api.call("POST", "/v1/gdpr/mona@example.com/erase")
    assert again.status_code == 404
    assert error_code(again) == "nothing_stored"
    gone = api.call("GET", f"/v1/mailbox/mona@example.com/messages/{message_id}")
    assert gone.status_code == 404
    assert error_code(gone) == "unknown_mailbox"

    pseudonym = erased.json()["pseudonym"]
    entries = query(api.mta.database_url, "SELECT actor, action, detail::text AS detail FROM audit_log"
                                          " WHERE action LIKE 'gdpr.%' AND detail->>'pseudonym' = $1 ORDER BY id",
                    pseudonym)
    assert [(row["actor"], row["action"]) for row in entries] == [
        ("api:admin", "gdpr.hold"), ("api:admin", "gdpr.release"), ("api:admin", "gdpr.export"),
        ("dpo", "gdpr.export"), ("api:admin", "gdpr.erase")]
    assert all("mona@" not in row["detail"] for row in entries)


def test_health_ready_and_metrics(api):
    health = api.call("GET", "/health", token=None)
    assert health.status_code == 200
    assert health.text == "ok\n"

    ready = api.call("GET", "/ready", token=None)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}

    metrics = api.call("GET", "/metrics", token=None)
    assert metrics.status_code == 200
    assert 'mta_messages_accepted_total{listener="api"}' in metrics.text


def test_unknown_path_gets_json_404(api):
    response = api.call("GET", "/v1/nothing")

    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_token_list_and_revoke(api):
    token = create_token(api.mta, "short-lived", "--scope", "audit:read")
    assert api.call("GET", "/v1/audit/verify", token=token).status_code == 200

    listing = api.mta.cli("api", "token", "list")
    assert "short-lived" in listing.stdout
    assert token not in listing.stdout
    result = api.mta.cli("api", "token", "revoke", "short-lived", "--actor", "ops")
    assert result.returncode == 0, result.stderr

    assert api.call("GET", "/v1/audit/verify", token=token).status_code == 401
    assert api.mta.cli("api", "token", "revoke", "short-lived").returncode == 2
    entries = query(api.mta.database_url, "SELECT actor, detail::text AS detail FROM audit_log"
                                          " WHERE action LIKE 'api token %' AND detail->>'name' = 'short-lived'")
    assert [row["actor"] for row in entries][-1] == "ops"
    assert all(token not in row["detail"] for row in entries)
    assert token not in api.mta.log()


def test_token_create_rejects_bad_requests(api):
    cases = [("bad name!", "--scope", "queue:read"), ("x", "--scope", "queue:everything"),
             ("x", "--scope", "send"), ("x", "--scope", "send", "--sender-domain", "example.org"),
             ("x", "--scope", "send", "--account", "nobody@example.com")]
    for args in cases:
        result = api.mta.cli("api", "token", "create", *args)
        assert result.returncode == 2, args
        assert result.stdout == "", args


def test_account_token_stops_when_account_locked(api, sink):
    result = api.mta.cli("user", "add", "kim@example.com", "--password-stdin", input_text=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    token = create_token(api.mta, "kim", "--scope", "send", "--account", "kim@example.com")
    assert send_json(api, token=token, **{"from": "kim@example.com"}).status_code == 202
    sink.wait_for(1)

    assert api.mta.cli("user", "lock", "kim@example.com").returncode == 0
    response = send_json(api, token=token, **{"from": "kim@example.com"})
    assert response.status_code == 403
    assert error_code(response) == "sender_not_allowed"


def test_nul_in_value_gets_422(api):
    query_nul = api.call("GET", "/v1/suppression?address=a%00b@example.net")
    assert query_nul.status_code == 422
    assert error_code(query_nul) == "invalid_request"

    body_nul = api.call("POST", "/v1/suppression", json={"sender_domain": "example.com", "address": "a\u0000b@x.net"})
    assert body_nul.status_code == 422
    assert error_code(body_nul) == "invalid_request"


def test_account_token_reads_only_its_mailbox(api):
    api.tokens["alice-reader"] = create_token(api.mta, "alice-reader", "--scope", "mailbox:read",
                                              "--account", "alice@example.com")

    own = api.call("GET", "/v1/mailbox/Alice@example.com/messages", token="alice-reader")
    other = api.call("GET", "/v1/mailbox/bob@example.com/messages", token="alice-reader")
    other_message = api.call("GET", "/v1/mailbox/bob@example.com/messages/1", token="alice-reader")

    assert own.status_code == 200, own.text
    assert other.status_code == 403
    assert error_code(other) == "mailbox_not_allowed"
    assert other_message.status_code == 403
