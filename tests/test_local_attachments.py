"""Sealing large attachments while a body streams: the objects, and nothing left behind after a failure."""

from __future__ import annotations

import asyncio
import os
from email import policy
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import pytest

from mta import db
from mta.delivery.body import BodyReadError
from mta.delivery.local_attachments import Sealing, seal_streamed_attachments
from mta.storage.bodies import BodyCodec, decrypt_object
from mta.storage.keyring import Keyring, mailbox_owner
from mta.storage.local import LocalStore
from mta.storage.master_key import MasterKey, MasterKeys
from tests.conftest import create_database

THRESHOLD = 4096
MAILBOXES = ["alice@example.com", "bob@example.com"]


def message_with(*attachments: bytes) -> bytes:
    message = EmailMessage()
    message["Subject"] = "files"
    message.set_content("see attached\n")
    for number, data in enumerate(attachments):
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=f"f{number}.bin")
    return message.as_bytes(policy=policy.SMTP)


async def pieces(body: bytes, fail_at: int | None = None):
    for start in range(0, len(body), 65536):
        if fail_at is not None and start >= fail_at:
            raise BodyReadError("chunk 9 failed authentication")
        yield body[start:start + 65536]


def stored_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def run_with_sealing(url: str, root: Path, check) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(url)
        await db.migrate(connection)
        await connection.close()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        try:
            bodies = BodyCodec(Keyring(pool, MasterKeys(MasterKey.from_bytes(os.urandom(32)))))
            store = LocalStore(root)
            await store.start()
            await check(Sealing(bodies, store, "QUEUEID", MAILBOXES, THRESHOLD))
        finally:
            await pool.close()

    asyncio.run(run())


def test_streamed_attachment_sealed_for_each_mailbox(pg, tmp_path):
    large = os.urandom(300_000)
    body = message_with(b"small", large)

    async def check(sealing: Sealing) -> None:
        sealed = await seal_streamed_attachments(pieces(body), sealing)
        assert [(item.position, item.filename, item.size) for item in sealed] == [(2, "f1.bin", len(large))]
        item = sealed[0]
        assert sorted(item.wraps) == MAILBOXES
        stored = await sealing.store.get(item.object_key)
        assert stored[:4] == b"MTAS"
        for address, (wrapped, data_key_id) in item.wraps.items():
            key = await sealing.bodies.content_key(item.object_key, wrapped, data_key_id)
            assert decrypt_object(key, item.object_key, stored) == large, address
        assert (await sealing.bodies.keyring.for_owner(mailbox_owner(MAILBOXES[1]))).id == item.wraps[MAILBOXES[1]][1]

    run_with_sealing(create_database(pg), tmp_path / "blobs", check)


def test_failed_read_leaves_no_object(pg, tmp_path):
    first, second = os.urandom(200_000), os.urandom(400_000)
    body = message_with(first, second)
    root = tmp_path / "blobs"

    async def check(sealing: Sealing) -> None:
        # The failure comes while the second attachment is being written, after the first is complete.
        with pytest.raises(BodyReadError):
            await seal_streamed_attachments(pieces(body, fail_at=len(body) - 200_000), sealing)
        assert stored_files(root) == []

    run_with_sealing(create_database(pg), root, check)
