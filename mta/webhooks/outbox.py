"""Write webhook events into ``webhook_outbox`` inside the caller's transaction.

The spool writer, the settle writer, the queue commands delete and bounce,
and the complaint handler call ``Outbox.insert`` in the transaction that
commits the change, so an event is stored exactly when its change is: a
crash after the commit cannot lose it, and a rolled-back batch leaves none.
Each batch costs one INSERT, whose trigger wakes the dispatchers. Workers
without endpoints have no Outbox at all, and the writers skip this step.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from mta.delivery.outcome import Outcome, Reply
from mta.webhooks.settings import ACCEPTED, BOUNCED, DEFERRED, DELETED, DELIVERED, WebhookEndpoint

# One row per event and subscribed endpoint. Endpoints of one event share its id.
_INSERT = """
INSERT INTO webhook_outbox (event_id, endpoint, event, payload)
SELECT e::uuid, n, k, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t (e, n, k, p)
ON CONFLICT (event_id, endpoint) DO NOTHING
"""


@dataclass(frozen=True)
class Event:
    kind: str
    # The JSON object sent, without the id and type the outbox adds.
    data: dict[str, Any]
    # A UUID fixed by the caller, so that writing the event again adds nothing; empty: a new one.
    event_id: str = ""


class Outbox:
    def __init__(self, endpoints: dict[str, WebhookEndpoint]):
        self._subscribers: dict[str, list[str]] = {}
        for name, endpoint in endpoints.items():
            for kind in endpoint.events:
                self._subscribers.setdefault(kind, []).append(name)

    async def insert(self, connection: asyncpg.Connection, events: list[Event]) -> None:
        """Store the events that an endpoint subscribed to, in the transaction of connection."""
        columns: tuple[list, list, list, list] = ([], [], [], [])
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        for event in events:
            names = self._subscribers.get(event.kind)
            if not names:
                continue
            event_id = event.event_id or str(uuid.uuid4())
            payload = json.dumps({"id": event_id, "type": event.kind, "time": now, **event.data})
            for name in names:
                for column, value in zip(columns, (event_id, name, event.kind, payload)):
                    column.append(value)

        if columns[0]:
            await connection.execute(_INSERT, *columns)


def accepted_event(queue_id: str, sender: str, recipients: list[str], origin: str, size: int) -> Event:
    """Return the event of a message committed to the queue."""
    return Event(ACCEPTED, {"queue_id": queue_id, "sender": sender, "recipients": recipients,
                           "origin": origin, "size": size})


def delivery_events(queue_id: str, sender: str, attempt: int, outcome: Outcome) -> list[Event]:
    """Return one event per recipient of a settled delivery attempt."""
    events = []
    for kind, pairs in ((DELIVERED, outcome.delivered), (DEFERRED, outcome.deferred), (BOUNCED, outcome.failed)):
        for recipient, reply in pairs:
            events.append(Event(kind, {"queue_id": queue_id, "sender": sender, "recipient": recipient,
                                       "attempt": attempt, "relay": outcome.relay, "reply": str(reply),
                                       "status": reply.enhanced}))
    return events


def operator_events(status: str, reply: Reply, removed: list[tuple[str, str, str]]) -> list[Event]:
    """Return one event per (queue id, sender, recipient) that an operator deleted or bounced.

    status is the delivery_event status written for them: deleted, or bounced.
    """
    kind = BOUNCED if status == "bounced" else DELETED
    return [Event(kind, {"queue_id": queue_id, "sender": sender, "recipient": recipient, "relay": "none",
                         "reply": str(reply), "status": reply.enhanced, "by_operator": True})
            for queue_id, sender, recipient in removed]
