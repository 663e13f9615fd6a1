"""Attachments of a message read in pieces: their header facts, then their decoded content.

This joins the streaming MIME walker (mta.mailbox.mime_stream) to the
transfer decoders (mta.mailbox.transfer_decoding), so a caller sees what
mta.mailbox.attachments.large_attachments would return for the whole
message, one piece of content at a time, and decides itself what to keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from mta.mailbox.attachments import attachment_filename
from mta.mailbox.mime_stream import PART_CANCELLED, PART_END, MimeWalker, PartStart
from mta.mailbox.transfer_decoding import TransferDecoder, decoder_for

__all__ = ["PART_CANCELLED", "PART_END", "AttachmentHeader", "AttachmentStream"]


@dataclass(frozen=True)
class AttachmentHeader:
    """An attachment's number among the message's attachments (from 1), its filename and content type."""

    position: int
    filename: str
    content_type: str


class AttachmentStream:
    """Feed a message in pieces; get AttachmentHeader, decoded content (bytes), PART_END and PART_CANCELLED."""

    def __init__(self):
        self._walker = MimeWalker()
        self._decoder: TransferDecoder | None = None

    def feed(self, piece: bytes) -> list:
        return self._decode(self._walker.feed(piece))

    def close(self) -> list:
        return self._decode(self._walker.close())

    def _decode(self, events: list) -> list:
        out = []
        for event in events:
            if isinstance(event, PartStart):
                headers = event.headers
                # The same lower-cased value get_payload(decode=True) chooses its decoding by.
                self._decoder = decoder_for(str(headers.get("content-transfer-encoding", "")).lower())
                out.append(AttachmentHeader(event.position, attachment_filename(headers, event.position),
                                            headers.get_content_type()))
            elif event is PART_END:
                out.append(self._decoder.finish())
                out.append(PART_END)
            elif event is PART_CANCELLED:
                out.append(PART_CANCELLED)
            else:
                out.append(self._decoder.feed(event))
        return [event for event in out if event != b""]
