"""Attachments large enough to be stored as objects of their own.

Only a message larger than the threshold can carry such an attachment, so
smaller messages are never parsed past their header. An attachment is a
non-multipart part with a filename or ``Content-Disposition: attachment``,
and its size is that of its decoded content (base64 or quoted-printable
undone), which is also what is stored and fetched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser

# Characters kept of a filename.
MAX_FILENAME = 255


@dataclass(frozen=True)
class Attachment:
    position: int
    filename: str
    content_type: str
    data: bytes = field(repr=False)


def large_attachments(body: bytes, threshold: int) -> list[Attachment]:
    """Return the attachments of a message whose decoded size exceeds threshold octets, numbered from 1."""
    if threshold <= 0 or len(body) <= threshold:
        return []

    message = BytesParser(policy=policy.default).parsebytes(body)
    found = []
    position = 0
    for part in message.walk():
        if part.is_multipart() or not is_attachment(part):
            continue
        position += 1
        data = part.get_payload(decode=True) or b""
        if len(data) > threshold:
            found.append(Attachment(position, attachment_filename(part, position), part.get_content_type(), data))
    return found


def is_attachment(part) -> bool:
    """Return whether a part has Content-Disposition: attachment or a filename."""
    return part.get_content_disposition() == "attachment" or part.get_filename() is not None


def attachment_filename(part, position: int) -> str:
    name = part.get_filename() or f"attachment-{position}"
    # Only the last path element, so a name such as ../../x cannot leave a directory it is saved in.
    name = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "").strip()
    return (name or f"attachment-{position}")[:MAX_FILENAME]
