"""Retention of mailbox messages: the purge command, its dry run, and the background task of each worker.

Mail is delivered over SMTP, then made old by moving its delivery time back
in the database, which is the only field retention reads.
"""

from __future__ import annotations

from tests.conftest import query
from tests.mx import wait_until
from tests.test_key_hierarchy import add_user, send, wait_completed

ADDRESSES = ("old@example.com", "held@example.com", "keep@example.com", "new@example.com")
BODY = b"Subject: statement\r\n\r\nYour statement.\r\n"


def deliver_and_age(mta) -> None:
    """Give each address one message, and make all but new@'s 40 days old; hold held@."""
    for address in ADDRESSES:
        add_user(mta, address)
        wait_completed(mta, send(mta, "bank@example.net", [address], BODY))
    result = mta.cli("gdpr", "hold", "held@example.com", "--reason", "audit")
    assert result.returncode == 0, result.stderr
    query(mta.database_url, "UPDATE mailbox_message SET delivered_at = now() - interval '40 days'"
                            " WHERE mailbox <> 'new@example.com'")


def remaining(mta) -> set[str]:
    return {row["mailbox"] for row in query(mta.database_url, "SELECT mailbox FROM mailbox_message")}


def retention(interval: float) -> dict:
    return {"retention": {"mailbox_days": 30, "mailboxes": {"keep@example.com": 0}, "interval": interval}}


def test_retention_dry_run_then_purge(make_mta):
    mta = make_mta(retention(3600.0))
    deliver_and_age(mta)

    dry_run = mta.cli("gdpr", "retention", "--dry-run")
    assert dry_run.returncode == 0, dry_run.stderr
    assert "old@example.com" in dry_run.stdout
    assert "held@example.com" not in dry_run.stdout
    assert "keep@example.com" not in dry_run.stdout
    assert "1 message(s) in 1 mailbox(es) would be purged" in dry_run.stdout
    assert remaining(mta) == set(ADDRESSES)

    purge = mta.cli("gdpr", "retention", "--actor", "ops")
    assert purge.returncode == 0, purge.stderr
    assert "purged 1 mailbox message(s) and 1 body(ies)" in purge.stdout
    assert remaining(mta) == {"held@example.com", "keep@example.com", "new@example.com"}
    assert query(mta.database_url, "SELECT actor FROM audit_log WHERE action = 'gdpr.retention'")[0]["actor"] == "ops"


def test_retention_task_purges_expired_mail(make_mta):
    mta = make_mta(retention(1.0))
    deliver_and_age(mta)

    assert wait_until(lambda: "old@example.com" not in remaining(mta))

    assert remaining(mta) == {"held@example.com", "keep@example.com", "new@example.com"}
    assert "retention purged 1 mailbox message(s)" in mta.log()
