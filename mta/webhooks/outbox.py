"""Write webhook events into ``webhook_outbox`` inside the caller's transaction.

The spool writer and the settle writer call ``Outbox.insert`` in the
transaction that commits the change, so an event is stored exactly when its
change is: a crash after the commit cannot lose it, and a rolled-back batch
leaves none. Each batch costs one INSERT. Workers without endpoints have no
Outbox at all, and the writers skip this step.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from mta.delivery.outcome import Outcome
from mta.webhooks.settings import ACCEPTED, BOUNCED, DEFERRED, DELIVERED, WebhookEndpoint

# One row per event and subscribed endpoint. Endpoints of one event share its id.
_INSERT = """
INSERT INTO webhook_outbox (event_id, endpoint, event, payload)
SELECT e::uuid, n, k, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t (e, n, k, p)
"""


@dataclass(frozen=True)
class Event:
    kind: str
    # The JSON object sent, without the id and type the outbox adds.
    data: dict[str, Any]


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
            event_id = str(uuid.uuid4())
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
