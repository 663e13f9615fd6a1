"""Build the RFC 5322 / MIME message for a load-test Event.

Messages use CRLF line endings only, keep every line within the 998-octet
limit of RFC 5322, and carry an X-Loadtest-Id header by which the harness
finds them at the sink. Text lines stay within 76 characters, and base64
lines are exactly 76 characters.
"""

from __future__ import annotations

import base64
import random
import re
from datetime import UTC, datetime
from email.utils import format_datetime

from loadtest.model import Event

MAX_LINE_OCTETS = 998  # RFC 5322, section 2.1.1, without the CRLF
TEXT_LINE_CHARS = 76
HEADER_LINE_CHARS = 78  # recommended limit of RFC 5322, section 2.1.1

# base64 turns each 57 octets into one 76-character line, so a random block
# of whole lines can be encoded once and repeated for large attachments.
BASE64_LINE_OCTETS = 57
RANDOM_BLOCK_OCTETS = BASE64_LINE_OCTETS * 1024

ID_DOMAIN = "loadtest.invalid"

WORDS = (
    "the", "invoice", "for", "order", "shipment", "arrives", "tomorrow", "morning", "please",
    "confirm", "delivery", "address", "payment", "reference", "account", "balance", "meeting",
    "agenda", "notes", "quarterly", "report", "attached", "figures", "revenue", "forecast", "team",
    "schedule", "update", "regards", "thanks", "question", "answer", "project", "deadline",
    "review", "draft", "contract", "customer", "supplier", "budget", "approval", "office",
    "travel", "request", "minutes", "call", "we", "will", "send", "you", "our", "latest",
    "version", "before", "friday", "and", "discuss", "it", "next", "week",
)

ATTACHMENT_TYPES = (
    ("application/pdf", "pdf"),
    ("image/jpeg", "jpg"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    ("application/zip", "zip"),
)

# The id left of the "@" in a Message-ID must be dot-atom-text (RFC 5322, section 3.2.3).
_DOT_ATOM_TEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_RUN_NAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
# An address as the model writes it: a dot-atom local part and a domain name,
# so nothing in it can end the header or the address list.
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
_BASE36_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def unique_id(run: str, number: int) -> str:
    """Return ``{run}.{number in base 36}``, an id unique per (run, number) and valid in a Message-ID.

    The run name may contain letters, digits, "-" and single dots between
    them, so an earlier unique_id can serve as a run name. The number contains
    no dot, so the last "." always separates it from the run name.
    """
    if not isinstance(run, str) or not _RUN_NAME.fullmatch(run):
        raise ValueError(
            f"run must be letters, digits and '-', with single dots only between them, got {run!r}"
        )
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise ValueError(f"number must be an integer of at least 0, got {number!r}")

    digits = []
    while True:
        number, remainder = divmod(number, 36)
        digits.append(_BASE36_DIGITS[remainder])
        if number == 0:
            break
    return f"{run}.{''.join(reversed(digits))}"


def build_message(event: Event, message_id: str, rng: random.Random, *, date: datetime | None = None) -> bytes:
    """Build the message for `event` as CRLF-terminated bytes.

    The text part is exactly event.body_size octets when that is at least 2,
    and empty otherwise. With attachments the message is multipart/mixed, and
    each attachment decodes to exactly its size in event.attachment_sizes.
    `rng` supplies the words, attachment types and attachment bytes, so the
    same seed gives the same message apart from the Date header. `date`
    defaults to the current time in UTC.

    Raises ValueError for a message_id that is not dot-atom-text of at most
    255 characters. Raises ValueError for a sender or recipient that is not a
    plain address of at most 254 characters, the path limit of RFC 5321.
    Either could otherwise inject a header or make a line too long.
    """
    if not isinstance(message_id, str) or len(message_id) > 255 or not _DOT_ATOM_TEXT.fullmatch(message_id):
        raise ValueError(
            f"message_id must be RFC 5322 dot-atom-text of at most 255 characters, got {message_id!r}"
        )
    for address in (event.sender, *event.recipients):
        if not isinstance(address, str) or len(address) > 254 or not _ADDRESS.fullmatch(address):
            raise ValueError(
                f"address {address!r} of event is not a plain local@domain address of at most 254 characters"
            )
    if not event.recipients:
        raise ValueError("event has no recipients")

    headers = [
        f"From: {event.sender}",
        _fold_address_list("To", event.recipients),
        f"Subject: {_sentence(rng, 3, 7)}",
        f"Date: {format_datetime(date or datetime.now(UTC))}",
        f"Message-ID: <{message_id}@{ID_DOMAIN}>",
        f"X-Loadtest-Id: {message_id}",
        "MIME-Version: 1.0",
    ]
    text = _text_body(rng, event.body_size)

    if not event.attachment_sizes:
        headers += [
            "Content-Type: text/plain; charset=us-ascii",
            "Content-Transfer-Encoding: 7bit",
        ]
        message = _join_headers(headers) + b"\r\n" + text
    else:
        # base64 and the text words never contain "_", so the boundary cannot occur in a part.
        boundary = f"=_loadtest_{rng.getrandbits(96):024x}"
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        message = _join_headers(headers) + b"\r\n" + _multipart_body(rng, boundary, text, event.attachment_sizes)

    _check_wire_format(message)
    return message


def _join_headers(lines: list[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def _fold_address_list(name: str, addresses: tuple[str, ...]) -> str:
    """Return the header `name: a, b, ...`, folded before an address that would pass 78 characters."""
    lines = [f"{name}: {addresses[0]}"]
    for address in addresses[1:]:
        lines[-1] += ","
        if len(lines[-1]) + 1 + len(address) > HEADER_LINE_CHARS:
            lines.append(f" {address}")
        else:
            lines[-1] += f" {address}"
    return "\r\n".join(lines)


def _sentence(rng: random.Random, min_words: int, max_words: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(min_words, max_words))
    return " ".join(words).capitalize()


def _text_body(rng: random.Random, size: int) -> bytes:
    """Return `size` octets of paragraphs, each line at most 76 characters plus CRLF."""
    if size < 2:
        return b""

    lines: list[bytes] = []
    remaining = size
    while remaining > 0:
        # A line takes its text plus CRLF. When the rest fits one line, fill it
        # exactly, so that the body ends on a CRLF at the requested size.
        if remaining <= TEXT_LINE_CHARS + 2:
            lines.append(_filler(rng, remaining - 2) + b"\r\n")
            break
        if lines and lines[-1] != b"\r\n" and rng.random() < 0.08:
            line = b""
        else:
            line = _text_line(rng)
        # Leave at least 2 octets, so that the last line still has room for its CRLF.
        if remaining - (len(line) + 2) < 2:
            line = line[: remaining - 4]
        lines.append(line + b"\r\n")
        remaining -= len(line) + 2
    return b"".join(lines)


def _text_line(rng: random.Random) -> bytes:
    """Return whole words up to a random width of 40 to 76 characters, the first capitalised."""
    width = rng.randint(40, TEXT_LINE_CHARS)
    words = rng.choices(WORDS, k=16)
    line = words[0].capitalize()
    for word in words[1:]:
        if len(line) + 1 + len(word) > width:
            break
        line += " " + word
    return line.encode("ascii")


def _filler(rng: random.Random, length: int) -> bytes:
    """Return exactly `length` octets of words, padded with "." where a cut leaves a trailing space."""
    text = ""
    while len(text) < length:
        text += rng.choice(WORDS) + " "
    return text[:length].rstrip().ljust(length, ".").encode("ascii")


def _multipart_body(rng: random.Random, boundary: str, text: bytes, attachment_sizes: tuple[int, ...]) -> bytes:
    delimiter = f"--{boundary}\r\n".encode("ascii")
    parts = [
        b"This is a multi-part message in MIME format.\r\n",
        b"\r\n" + delimiter,
        b"Content-Type: text/plain; charset=us-ascii\r\n",
        b"Content-Transfer-Encoding: 7bit\r\n",
        b"\r\n",
        text,
    ]
    for number, size in enumerate(attachment_sizes, start=1):
        content_type, extension = rng.choice(ATTACHMENT_TYPES)
        filename = f"{_sentence(rng, 1, 3).replace(' ', '-').lower()}-{number}.{extension}"
        parts += [
            b"\r\n" + delimiter,
            f'Content-Type: {content_type}; name="{filename}"\r\n'.encode("ascii"),
            f'Content-Disposition: attachment; filename="{filename}"\r\n'.encode("ascii"),
            b"Content-Transfer-Encoding: base64\r\n",
            b"\r\n",
            _base64_lines(rng, size),
        ]
    parts.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(parts)


def _base64_lines(rng: random.Random, size: int) -> bytes:
    """Return base64 of `size` random-looking octets in 76-character CRLF lines.

    One random block is encoded once and repeated, so a 10 MB attachment
    costs one block of random numbers and a join.
    """
    if size < 0:
        raise ValueError(f"attachment size must be at least 0, got {size}")
    if size == 0:
        return b""

    block = rng.randbytes(min(size, RANDOM_BLOCK_OCTETS))
    whole_blocks, rest = divmod(size, len(block))
    # Because the block is a whole number of 57-octet lines, its encoding
    # ends on a line boundary and copies of it concatenate into valid base64.
    encoded_block = base64.encodebytes(block).replace(b"\n", b"\r\n")
    encoded_rest = base64.encodebytes(block[:rest]).replace(b"\n", b"\r\n") if rest else b""
    return encoded_block * whole_blocks + encoded_rest


def _check_wire_format(message: bytes) -> None:
    """Raise RuntimeError if the message has a bare CR or LF, or a line over 998 octets.

    Inputs are validated and the builders only emit CRLF lines, so a failure
    here is a bug in this module.
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        raise RuntimeError("internal error: build_message produced a bare CR or LF")
    longest = max(len(line) for line in message.split(b"\r\n"))
    if longest > MAX_LINE_OCTETS:
        raise RuntimeError(f"internal error: build_message produced a line of {longest} octets")
