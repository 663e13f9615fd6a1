"""Large attachments of a local delivery, sealed as objects of their own while the body is read in pieces.

Each attachment's decoded content is held in memory up to the threshold.
Past it, the content is encrypted chunk by chunk into an MTAS object and
written with a streamed put, so a delivery keeps about one chunk of it in memory. If
anything fails, the object being written is abandoned (the store removes
its partial write) and the objects already written are deleted.

The MIME walker and the transfer decoders run in a worker thread, one piece
of the body at a time, so parsing a large body does not hold the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field

from mta.mailbox.attachment_stream import PART_CANCELLED, PART_END, AttachmentHeader, AttachmentStream
from mta.storage.bodies import BodyCodec, StreamSeal
from mta.storage.keyring import mailbox_owner
from mta.storage.store import BodyStore, StoreError

log = logging.getLogger("mta.delivery")

# Sealed chunks (64 KiB each) waiting for the store, so a slow store holds back the reading of the body.
_UPLOAD_QUEUE = 4


class AttachmentParseError(Exception):
    """The attachment reader failed on a message, which no retry can change."""


@dataclass(frozen=True)
class SealedAttachment:
    """One attachment object in the body store, with a wrap of its content key per mailbox."""

    position: int
    filename: str
    content_type: str
    size: int
    object_key: str
    wraps: dict[str, tuple[bytes, int]] = field(repr=False)


@dataclass(frozen=True)
class Sealing:
    """The store that attachment objects go to, and the mailboxes whose keys wrap them."""

    bodies: BodyCodec
    store: BodyStore
    queue_id: str
    mailboxes: list[str]
    threshold: int

    def object_key(self, position: int) -> str:
        # A random part keeps the name unique when a retried attempt or another domain's delivery of the
        # same message seals this attachment again.
        return f"{self.queue_id}-{secrets.token_hex(4)}-{position}"

    async def other_wraps(self, content_key: bytes, object_key: str) -> dict[str, tuple[bytes, int]]:
        """Wrap an object's content key for every mailbox after the first."""
        return {address: await self.bodies.wrap_for(mailbox_owner(address), content_key, object_key)
                for address in self.mailboxes[1:]}


async def seal_streamed_attachments(chunks: AsyncIterable[bytes], sealing: Sealing) -> list[SealedAttachment]:
    """Read a message in pieces and seal each attachment whose decoded size exceeds the threshold."""
    reader = AttachmentStream()
    sealed: list[SealedAttachment] = []
    current: _PendingAttachment | None = None
    try:
        async for piece in chunks:
            current = await _apply(await _parse(reader.feed, piece), current, sealing, sealed)
        current = await _apply(await _parse(reader.close), current, sealing, sealed)
    except BaseException:
        if current is not None:
            await current.abort()
        for item in sealed:
            await delete_quietly(sealing.store, item.object_key)
        raise
    return sealed


async def _parse(step: Callable[..., list], *args) -> list:
    """Run one step of the attachment reader in a worker thread, raising AttachmentParseError when it fails."""
    try:
        return await asyncio.to_thread(step, *args)
    except Exception as error:
        raise AttachmentParseError(f"reading the attachments failed with {type(error).__name__}") from error


async def _apply(events: list, current: _PendingAttachment | None, sealing: Sealing,
                 sealed: list[SealedAttachment]) -> _PendingAttachment | None:
    for event in events:
        if isinstance(event, AttachmentHeader):
            current = _PendingAttachment(event, sealing)
        elif event is PART_END:
            result = await current.finish()
            if result is not None:
                sealed.append(result)
            current = None
        elif event is PART_CANCELLED:
            await current.abort()
            current = None
        else:
            await current.add(event)
    return current


class _PendingAttachment:
    """An attachment being read: held in memory up to the threshold, then streamed into its object."""

    def __init__(self, header: AttachmentHeader, sealing: Sealing):
        self._header = header
        self._sealing = sealing
        self._held: list[bytes] = []
        self._size = 0
        self._upload: _Upload | None = None

    async def add(self, data: bytes) -> None:
        self._size += len(data)
        if self._upload is not None:
            await self._upload.write(data)
            return

        self._held.append(data)
        if self._size > self._sealing.threshold:
            object_key = self._sealing.object_key(self._header.position)
            seal = await self._sealing.bodies.seal_stream(object_key, mailbox_owner(self._sealing.mailboxes[0]))
            self._upload = _Upload(self._sealing.store, object_key, seal)
            held, self._held = b"".join(self._held), []
            await self._upload.write(held)

    async def finish(self) -> SealedAttachment | None:
        """Complete the object and return it, or return None when the attachment stayed at or under the threshold."""
        if self._upload is None:
            return None
        await self._upload.close()
        seal = self._upload.seal
        wraps = {self._sealing.mailboxes[0]: (seal.wrapped_key, seal.data_key_id)}
        try:
            wraps |= await self._sealing.other_wraps(seal.content_key, self._upload.object_key)
        except BaseException:
            await delete_quietly(self._sealing.store, self._upload.object_key)
            raise
        header = self._header
        return SealedAttachment(header.position, header.filename, header.content_type, self._size,
                                self._upload.object_key, wraps)

    async def abort(self) -> None:
        if self._upload is not None:
            await self._upload.abort()


class _Upload:
    """A streamed put of one object, fed with plaintext that is sealed on the way."""

    def __init__(self, store: BodyStore, object_key: str, seal: StreamSeal):
        self.object_key = object_key
        self.seal = seal
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_UPLOAD_QUEUE)
        self._task = asyncio.create_task(store.put_stream(object_key, self._pieces()))

    async def _pieces(self):
        while (piece := await self._queue.get()) is not None:
            yield piece

    async def write(self, data: bytes) -> None:
        # On the event loop, because AES-GCM takes about 10 µs per 48 KiB piece, less than a hand-over to a thread
        # (docs/BENCHMARKS.md).
        sealed = self.seal.encryptor.update(data)
        if sealed:
            await self._send(sealed)

    async def close(self) -> None:
        await self._send(self.seal.encryptor.finalize())
        await self._send(None)
        await self._task

    async def abort(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, StoreError):
            pass

    async def _send(self, item: bytes | None) -> None:
        if not self._queue.full() and not self._task.done():
            self._queue.put_nowait(item)
            return

        # Waits for room, unless the put fails first: then its error is raised here.
        putting = asyncio.ensure_future(self._queue.put(item))
        done, _ = await asyncio.wait({putting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if putting not in done:
            putting.cancel()
            await self._task
            raise StoreError(f"the write of object {self.object_key} ended before its last chunk")


async def delete_quietly(store: BodyStore, object_key: str) -> None:
    try:
        await store.delete(object_key)
    except StoreError as error:
        log.warning("removing unused attachment object %s failed, it stays in the body store: %s", object_key, error)
