"""Log output on standard error: Postfix-style lines or one JSON object per line.

Both formats keep the message text as the MTA wrote it, so a grep for a
session id or queue id finds the same records in either. With
``[logging] pseudonymise_addresses`` every email address is replaced by its
keyed pseudonym (mta.pseudonym). That happens in the formatter, on the
finished text, so it covers every logger, arguments and exception traces.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from mta.config import LoggingConfig
from mta.pseudonym import Pseudonymiser

# Session lines start with the session id (8 characters of lower-case base32),
# queue and delivery lines with the queue id (16 of upper-case base32), or both
# in that order (mta.ids).
_LEADING_IDS = re.compile(r"(?:(?P<session_id>[a-z2-7]{8}): )?(?:(?P<queue_id>[A-Z2-7]{16}): )?")


class PostfixStyleFormatter(logging.Formatter):
    """``time name[pid]: message``, with the level named only for warnings and worse."""

    def __init__(self, pseudonymiser: Pseudonymiser | None = None):
        super().__init__("%(asctime)s %(name)s[%(process)d]: %(message)s")
        self.pseudonymiser = pseudonymiser

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            prefix, _, message = text.partition("]: ")
            text = f"{prefix}]: {record.levelname.lower()}: {message}"
        if self.pseudonymiser is not None:
            text = self.pseudonymiser.apply(text)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, pid, message and ids.

    ``session_id`` and ``queue_id`` come from ``extra=`` where a call passes
    them, else from the message's leading ids. ``exception`` carries the
    trace of a record logged with one.
    """

    def __init__(self, pseudonymiser: Pseudonymiser | None = None):
        super().__init__()
        self.pseudonymiser = pseudonymiser

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": message,
        }
        entry.update(leading_ids(record, message))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)

        if self.pseudonymiser is not None:
            for name in ("message", "exception", "stack"):
                if name in entry:
                    entry[name] = self.pseudonymiser.apply(entry[name])
        return json.dumps(entry, ensure_ascii=False)


def rfc3339(timestamp: float) -> str:
    """Format a Unix time as RFC 3339 in UTC with milliseconds, such as 2026-05-04T09:15:02.481Z."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def leading_ids(record: logging.LogRecord, message: str) -> dict[str, str]:
    ids = {}
    match = _LEADING_IDS.match(message)
    for name in ("session_id", "queue_id"):
        value = getattr(record, name, None) or match.group(name)
        if value:
            ids[name] = value
    return ids


class OneLineLibraryErrors(logging.Filter):
    """Fold a library's exception into its log line instead of a traceback.

    asyncpg's pool logs a full traceback each time it fails to reconnect
    during a database outage; one line with the error is enough.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith("asyncpg"):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {error!r}"
            record.args = ()
            record.exc_info = None
        return True


def setup_logging(level: str, settings: LoggingConfig, data_dir: Path) -> None:
    """Send every logger's records to standard error in the configured format."""
    pseudonymiser = None
    if settings.pseudonymise_addresses:
        key_path = Path(settings.pseudonym_key_file)
        pseudonymiser = Pseudonymiser(key_path if key_path.is_absolute() else data_dir / key_path)

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(OneLineLibraryErrors())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter(pseudonymiser))
    else:
        handler.setFormatter(PostfixStyleFormatter(pseudonymiser))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    # aiosmtpd logs every command at INFO, with addresses; our session lines replace it.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # At debug level botocore logs request parameters, which include message bodies.
    for name in ("botocore", "aiobotocore", "aioboto3"):
        logging.getLogger(name).setLevel(logging.WARNING)
