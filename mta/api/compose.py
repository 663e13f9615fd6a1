"""Turn a JSON message or a raw RFC 5322 upload into message octets and envelope recipients.

Both end as CRLF-terminated octets that go through the same submission
checks as mail on port 587 (mta.api.submit). JSON messages are built with
the standard library's email package, which encodes non-ASCII header
text (RFC 2047) and bodies (quoted-printable or base64).
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.policy
import email.utils
import re
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from pydantic import BaseModel, ConfigDict, Field

from mta.rfc5322 import header_section
from mta.smtp.policy import valid_address

# Fields the JSON message sets itself, or that only this MTA may add.
_RESERVED_FIELDS = frozenset({
    "from", "to", "cc", "bcc", "subject", "sender", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition", "received", "return-path", "dkim-signature", "authentication-results",
})
_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$")
_BCC_FIELD = re.compile(rb"^bcc[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", re.IGNORECASE | re.MULTILINE)


class ComposeError(ValueError):
    """The message cannot be built. The text names the field."""


class AddressError(ComposeError):
    """An address in the message is invalid. The text names it."""


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", max_length=128, description="such as application/pdf")
    content: str = Field(description="the file's octets in base64")


class JsonMessage(BaseModel):
    """A message described field by field, with text, html or both."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", max_length=998, description="alice@example.com or \"Alice\" <alice@example.com>")
    to: list[str] = Field(default_factory=list, max_length=1000)
    cc: list[str] = Field(default_factory=list, max_length=1000)
    bcc: list[str] = Field(default_factory=list, max_length=1000,
                           description="recipients that no header field names")
    subject: str = Field("", max_length=998)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50,
                                    description="more header fields, such as Reply-To or List-Unsubscribe")


def compose(message: JsonMessage) -> tuple[bytes, list[str]]:
    """Return the message octets and the envelope recipients: to, cc and bcc."""
    if message.text is None and message.html is None:
        raise ComposeError("text or html is required")
    author = _address("from", message.from_)
    recipients = {field: [_address(field, entry) for entry in getattr(message, field)] for field in ("to", "cc", "bcc")}

    built = EmailMessage(policy=email.policy.SMTP)
    try:
        built["From"] = email.utils.formataddr(author)
        for field in ("to", "cc"):
            entries = [email.utils.formataddr(pair) for pair in recipients[field]]
            if entries:
                built[field.capitalize()] = ", ".join(entries)
        if message.subject:
            built["Subject"] = _single_line("subject", message.subject)
        for name, value in message.headers.items():
            built[_field_name(name)] = _single_line(name, value)
        _add_body(built, message)
        data = built.as_bytes()
    except (ValueError, TypeError, IndexError, email.errors.MessageError) as error:
        raise ComposeError(f"the message cannot be encoded: {error}") from None
    return data, [address for pairs in recipients.values() for _, address in pairs]


def _add_body(built: EmailMessage, message: JsonMessage) -> None:
    if message.text is not None:
        built.set_content(message.text)
        if message.html is not None:
            built.add_alternative(message.html, subtype="html")
    else:
        built.set_content(message.html, subtype="html")

    for number, attachment in enumerate(message.attachments):
        if not _MEDIA_TYPE.match(attachment.content_type):
            raise ComposeError(f"attachments.{number}.content_type: invalid media type {attachment.content_type!r}")
        try:
            content = base64.b64decode(attachment.content, validate=True)
        except (binascii.Error, ValueError):
            raise ComposeError(f"attachments.{number}.content: invalid base64") from None
        maintype, _, subtype = attachment.content_type.lower().partition("/")
        built.add_attachment(content, maintype=maintype, subtype=subtype,
                             filename=_single_line("filename", attachment.filename))


def _address(field: str, entry: str) -> tuple[str, str]:
    """Return (display name, address) of one entry, or raise AddressError."""
    parsed = email.utils.getaddresses([_single_line(field, entry)])
    # A comma would smuggle in a second address that the envelope check never sees.
    if len(parsed) != 1 or not parsed[0][1].isascii() or not valid_address(parsed[0][1]):
        raise AddressError(f"{field}: invalid address {entry!r}, expected one address")
    return parsed[0]


def _field_name(name: str) -> str:
    if not _FIELD_NAME.match(name) or name.lower() in _RESERVED_FIELDS or name.lower().startswith("content-"):
        raise ComposeError(f"headers: the field {name!r} is invalid or set by other properties")
    return name


def _single_line(field: str, value: str) -> str:
    # A line break would let the value start a header field of its own.
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ComposeError(f"{field}: line breaks and NUL are not allowed")
    return value


def normalise_raw(data: bytes) -> bytes:
    """Return an upload whose lines all end in LF with CRLF instead, and any other upload unchanged.

    Files made on Unix end lines with LF alone. Where no CR occurs at all
    there is only one reading of the lines, so the conversion is safe. Mixed
    line ends stay as they are, for the policy check to reject.
    """
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return data


def raw_recipients(data: bytes) -> tuple[bytes, list[str]]:
    """Return the message without its Bcc fields, and the addresses of its To, Cc and Bcc fields."""
    headers = header_section(data)
    parsed = BytesHeaderParser(policy=email.policy.compat32).parsebytes(headers)
    values = [str(value) for name in ("to", "cc", "bcc") for value in parsed.get_all(name, [])]
    addresses = []
    for _, address in email.utils.getaddresses(values):
        if not address:
            continue
        if not valid_address(address):
            raise AddressError(f"invalid recipient address {address!r} in the header fields")
        addresses.append(address)
    return _BCC_FIELD.sub(b"", headers) + data[len(headers):], addresses
