"""Erasure of one person's data (GDPR article 17), in one transaction.

What goes and what is pseudonymised, and why:

- Their mailbox rows and attachments are deleted, and the objects no other
  row references are queued for deletion after the commit (mta.mailbox.removal).
- Their data keys, ``mailbox:ADDRESS`` and ``sender:ADDRESS``, are destroyed,
  so copies of their objects in backups or replicas of the body store can
  no longer be decrypted with anything left in the database.
- Mail from them still queued is not sent: its deliveries are deleted.
  Mail to them still queued loses them as a recipient, and a delivery left
  without recipients is deleted. Bouncing would send a new message naming
  them, so deletion is the erasure.
- Delivery history (``delivery_event``) and the sender of finished messages
  keep their rows with the address replaced by its keyed pseudonym, the one
  log lines get (mta.pseudonym). Operators keep delivery counts per domain
  and can match the log, but cannot recover the address without the key.
- Their suppression entries, account and AUTH failure counts are deleted:
  each exists only to act on the address in clear, so a pseudonym would be
  useless there.

The audit log is append-only and hash-chained, so its older entries that
name the address in clear cannot be changed. The erasure counts them and
writes its own entry with the pseudonym only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import asyncpg

from mta import audit
from mta.auth.throttle import account_key
from mta.delivery.outcome import Reply
from mta.gdpr import holds
from mta.mailbox.removal import delete_queued_objects, release_bodies, remove_mailbox_rows
from mta.storage.key_admin import KeyAdminError, destroy_data_key
from mta.storage.keyring import mailbox_owner, sender_owner
from mta.storage.store import BodyStore
from mta.webhooks.outbox import Outbox, operator_events

# Tables whose dead row versions an erasure leaves with the address or key material in them.
VACUUMED_TABLES = ("data_key", "mailbox_message", "mailbox_attachment", "mailbox_user", "suppression",
                   "auth_failure", "api_token", "webhook_outbox", "message", "delivery", "delivery_event")

_OWN_ROWS = "SELECT id FROM mailbox_message WHERE mailbox = $1 ORDER BY id FOR UPDATE"

_DROP_OUTGOING = """
DELETE FROM delivery d USING message m
WHERE m.id = d.message_id AND lower(m.sender) = $1
RETURNING d.message_id, d.recipients, d.lease_owner IS NOT NULL AS leased
"""

# The address leaves the recipients, the per-recipient replies and the last reply of deliveries still queued.
_DROP_INCOMING = """
UPDATE delivery d SET
    recipients = ARRAY(SELECT r FROM unnest(d.recipients) AS r WHERE lower(r) <> $1),
    replies = (SELECT jsonb_object_agg(k, v) FROM jsonb_each(d.replies) AS e (k, v) WHERE lower(k) <> $1),
    last_reply = regexp_replace(d.last_reply, $2, $3, 'gi')
FROM message m
WHERE m.id = d.message_id AND EXISTS (SELECT 1 FROM unnest(d.recipients) AS r WHERE lower(r) = $1)
RETURNING d.id, d.message_id, m.sender, cardinality(d.recipients) = 0 AS empty, d.lease_owner IS NOT NULL AS leased
"""

# The reply that the webhook "deleted" events of queued mail removed by an erasure carry.
ERASED_REPLY = Reply(250, "2.0.0 deleted by a GDPR erasure")

_DROP_EMPTY = "DELETE FROM delivery WHERE id = ANY($1::bigint[])"

_COMPLETE = """
UPDATE message m SET completed_at = now()
WHERE m.id = ANY($1::text[]) AND m.completed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.message_id = m.id)
"""

_PSEUDONYMISE_EVENTS = """
UPDATE delivery_event SET recipient = CASE WHEN lower(recipient) = $1 THEN $3 ELSE recipient END,
                          reply = regexp_replace(reply, $2, $3, 'gi')
WHERE lower(recipient) = $1 OR reply ~* $2
"""

_PSEUDONYMISE_SENDERS = "UPDATE message SET sender = $2 WHERE lower(sender) = $1"

# DSN requests of messages to them are keyed by recipient address.
_DROP_DSN_REQUESTS = """
UPDATE message SET dsn = jsonb_set(dsn, '{recipients}', coalesce(
    (SELECT jsonb_object_agg(k, v) FROM jsonb_each(dsn -> 'recipients') AS e (k, v) WHERE lower(k) <> $1), '{}'))
WHERE jsonb_typeof(dsn -> 'recipients') = 'object'
  AND EXISTS (SELECT 1 FROM jsonb_object_keys(dsn -> 'recipients') AS k WHERE lower(k) = $1)
"""

_AUDIT_MENTIONS = "SELECT id FROM audit_log WHERE strpos(lower(detail::text), $1) > 0 ORDER BY id"


class NothingStored(LookupError):
    """Nothing that an erasure removes or pseudonymises is stored about the address."""


@dataclass
class Erasure:
    """Counts of what one erasure removed or pseudonymised, for the audit log and the operator."""

    mailbox_messages: int = 0
    bodies: int = 0
    deliveries_removed: int = 0
    # Queued deliveries that lost the address but keep other recipients.
    deliveries_changed: int = 0
    # Deliveries a node was attempting at that moment: the attempt may still send them.
    deliveries_in_flight: int = 0
    events_pseudonymised: int = 0
    messages_pseudonymised: int = 0
    suppression_entries: int = 0
    accounts: int = 0
    auth_failure_counts: int = 0
    # API tokens that sent as the account, revoked ones included: their rows name the address.
    api_tokens: int = 0
    # Webhook events, sent or waiting, whose payload named the address.
    webhook_events_pseudonymised: int = 0
    data_keys_destroyed: list[int] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    # Ids of older audit entries naming the address in clear, which the chain keeps.
    audit_entries_naming_address: list[int] = field(default_factory=list)
    # Objects deleted from the body store after the commit, and deletions that failed and stay queued.
    objects_deleted: int = 0
    objects_failed: int = 0

    @property
    def found_nothing(self) -> bool:
        counts = (self.mailbox_messages, self.bodies, self.deliveries_removed, self.deliveries_changed,
                  self.events_pseudonymised, self.messages_pseudonymised, self.suppression_entries, self.accounts,
                  self.auth_failure_counts, self.api_tokens, self.webhook_events_pseudonymised,
                  len(self.data_keys_destroyed))
        return not any(counts)

    def as_audit_detail(self, pseudonym: str) -> dict:
        return {"pseudonym": pseudonym, "mailbox_messages": self.mailbox_messages, "bodies": self.bodies,
                "objects": len(self.objects), "deliveries_removed": self.deliveries_removed,
                "deliveries_in_flight": self.deliveries_in_flight,
                "events_pseudonymised": self.events_pseudonymised,
                "messages_pseudonymised": self.messages_pseudonymised,
                "suppression_entries": self.suppression_entries, "accounts": self.accounts,
                "auth_failure_counts": self.auth_failure_counts, "api_tokens": self.api_tokens,
                "webhook_events_pseudonymised": self.webhook_events_pseudonymised,
                "data_keys_destroyed": self.data_keys_destroyed,
                "audit_entries_naming_address": len(self.audit_entries_naming_address)}


async def erase_and_record(connection: asyncpg.Connection, store: BodyStore, address: str, pseudonym: str,
                           actor: str, missing_ok: bool = True, vacuum: bool = True,
                           outbox: Outbox | None = None) -> Erasure:
    """Erase the address's data with its audit entry in one transaction, then clean up after it.

    The cleanup deletes the objects queued for deletion, this erasure's and
    any an earlier run left, and with vacuum also vacuums the tables that
    kept old row versions (a caller without it runs vacuum_erased_tables
    later). Raises HeldError under a legal hold, and NothingStored, changing
    nothing, when missing_ok is False and nothing was stored about the address.
    """
    async with connection.transaction():
        erasure = await erase(connection, address, pseudonym, outbox)
        if erasure.found_nothing and not missing_ok:
            raise NothingStored(f"nothing is stored about {address}: never seen, or erased already")
        await audit.append(connection, actor, "gdpr.erase", erasure.as_audit_detail(pseudonym))

    erasure.objects_deleted, erasure.objects_failed = await delete_queued_objects(connection, store)
    if vacuum:
        await vacuum_erased_tables(connection)
    return erasure


async def vacuum_erased_tables(connection: asyncpg.Connection) -> None:
    """Vacuum the tables whose dead row versions an erasure leaves with the address or key material."""
    for table in VACUUMED_TABLES:
        await connection.execute(f"VACUUM {table}")


def address_pattern(address: str) -> str:
    """Return a PostgreSQL regular expression matching the address literally."""
    return re.sub(r"([^A-Za-z0-9])", r"\\\1", address)


async def erase(connection: asyncpg.Connection, address: str, pseudonym: str,
                outbox: Outbox | None = None) -> Erasure:
    """Erase the address's data inside the caller's transaction; raise HeldError under a legal hold.

    address must be in lower case. The objects in the result are queued for
    deletion, which the caller runs after the commit. With outbox, queued
    mail removed gets webhook "deleted" events that name the pseudonym.
    """
    await holds.lock(connection)
    await holds.check_not_held(connection, address)
    erasure = Erasure()

    row_ids = [row["id"] for row in await connection.fetch(_OWN_ROWS, address)]
    removed = await remove_mailbox_rows(connection, row_ids)
    erasure.mailbox_messages = removed.rows
    erasure.objects += removed.objects

    touched = await _drop_queued(connection, address, pseudonym, erasure, outbox)
    released = await release_bodies(connection, touched)
    erasure.bodies = removed.bodies + released.bodies
    erasure.objects += released.objects

    await _pseudonymise(connection, address, pseudonym, erasure)
    await _delete_records(connection, address, erasure)
    erasure.audit_entries_naming_address = [row["id"] for row in await connection.fetch(_AUDIT_MENTIONS, address)]
    return erasure


async def _drop_queued(connection: asyncpg.Connection, address: str, pseudonym: str, erasure: Erasure,
                       outbox: Outbox | None) -> list[str]:
    """Delete queued mail from the address and take it out of queued mail to it; return the messages touched."""
    outgoing = await connection.fetch(_DROP_OUTGOING, address)
    incoming = await connection.fetch(_DROP_INCOMING, address, address_pattern(address), pseudonym)
    empty = [row["id"] for row in incoming if row["empty"]]
    await connection.execute(_DROP_EMPTY, empty)
    if outbox is not None:
        removed = [(row["message_id"], pseudonym, recipient) for row in outgoing for recipient in row["recipients"]]
        removed += [(row["message_id"], row["sender"], pseudonym) for row in incoming]
        await outbox.insert(connection, operator_events("deleted", ERASED_REPLY, removed))

    erasure.deliveries_removed = len(outgoing) + len(empty)
    erasure.deliveries_changed = len(incoming) - len(empty)
    erasure.deliveries_in_flight = sum(row["leased"] for row in [*outgoing, *incoming])
    touched = sorted({row["message_id"] for row in [*outgoing, *incoming]})
    await connection.execute(_COMPLETE, touched)
    return touched


async def _pseudonymise(connection: asyncpg.Connection, address: str, pseudonym: str, erasure: Erasure) -> None:
    status = await connection.execute(_PSEUDONYMISE_EVENTS, address, address_pattern(address), pseudonym)
    erasure.events_pseudonymised = _count(status)
    erasure.webhook_events_pseudonymised = await _pseudonymise_webhook_events(connection, address, pseudonym)
    status = await connection.execute(_PSEUDONYMISE_SENDERS, address, pseudonym)
    erasure.messages_pseudonymised = _count(status)
    await connection.execute(_DROP_DSN_REQUESTS, address)


async def _pseudonymise_webhook_events(connection: asyncpg.Connection, address: str, pseudonym: str) -> int:
    """Replace the address by its pseudonym in webhook events, sent or waiting; return how many changed.

    An event still waiting then goes out with the pseudonym, never the erased address.
    """
    rows = await connection.fetch("SELECT id, payload::text AS payload FROM webhook_outbox"
                                  " WHERE strpos(lower(payload::text), $1) > 0 FOR UPDATE", address)
    pattern = re.compile(re.escape(address), re.IGNORECASE)
    for row in rows:
        payload = _replace_strings(json.loads(row["payload"]), pattern, pseudonym)
        await connection.execute("UPDATE webhook_outbox SET payload = $2::jsonb WHERE id = $1", row["id"],
                                 json.dumps(payload))
    return len(rows)


def _replace_strings(value, pattern: re.Pattern, replacement: str):
    """Return value, a decoded JSON document, with pattern replaced in every string it contains."""
    if isinstance(value, str):
        return pattern.sub(replacement, value)
    if isinstance(value, list):
        return [_replace_strings(item, pattern, replacement) for item in value]
    if isinstance(value, dict):
        return {key: _replace_strings(item, pattern, replacement) for key, item in value.items()}
    return value


async def _delete_records(connection: asyncpg.Connection, address: str, erasure: Erasure) -> None:
    erasure.suppression_entries = _count(await connection.execute("DELETE FROM suppression WHERE address = $1",
                                                                  address))
    erasure.accounts = _count(await connection.execute("DELETE FROM mailbox_user WHERE address = $1", address))
    erasure.auth_failure_counts = _count(await connection.execute("DELETE FROM auth_failure WHERE key = $1",
                                                                  account_key(address)))
    erasure.api_tokens = _count(await connection.execute("DELETE FROM api_token WHERE lower(account) = $1",
                                                         address))
    for owner in (mailbox_owner(address), sender_owner(address)):
        try:
            destroyed = await destroy_data_key(connection, owner)
        except KeyAdminError:
            # No live key: never made, or destroyed by an earlier run.
            continue
        if destroyed.data_key_id is not None:
            erasure.data_keys_destroyed.append(destroyed.data_key_id)
        erasure.objects += destroyed.objects


def _count(status: str) -> int:
    return int(status.split()[-1])
