"""Make one SMTP protocol per connection without repeating aiosmtpd's set-up.

aiosmtpd's ``SMTP.__init__`` walks the protocol and the handler with
``inspect.getmembers`` and ``dir()`` on every connection to build its
command, hook and AUTH tables, and logs the AUTH mechanisms each time. With
a new connection per message, py-spy put about a quarter of the event
loop's time there. The factory runs the real constructor once, keeps the
settings it produced, and gives each new protocol its own stream state and
its own methods in the tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import MethodType
from typing import Any

from aiosmtpd.smtp import _AuthMechAttr

from mta.smtp.session import MtaSmtp

# Tables whose entries are methods bound to the protocol itself.
_BOUND_TABLES = ("_smtp_methods", "_auth_methods")


def stream_state_names(loop: asyncio.AbstractEventLoop) -> frozenset[str]:
    """Return the attribute names that asyncio's StreamReaderProtocol sets up per connection."""
    # SMTP passes a callback, and StreamReaderProtocol sets some fields only when given one.
    probe = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), client_connected_cb=print, loop=loop)
    return frozenset(vars(probe))


class ProtocolFactory:
    """Protocols equal to what ``make()`` returns, at a fraction of its cost."""

    def __init__(self, make: Callable[[], MtaSmtp]):
        template = make()
        self._loop = template.loop
        per_connection = stream_state_names(self._loop) | set(_BOUND_TABLES)
        self._settings = {name: value for name, value in vars(template).items() if name not in per_connection}
        self._commands = {name: method.__func__ for name, method in template._smtp_methods.items()}
        self._auth_methods: dict[str, _AuthMechAttr] = dict(template._auth_methods)

    def __call__(self) -> MtaSmtp:
        protocol = MtaSmtp.__new__(MtaSmtp)
        reader = asyncio.StreamReader(loop=self._loop, limit=protocol.line_length_limit)
        asyncio.StreamReaderProtocol.__init__(protocol, reader, client_connected_cb=protocol._cb_client_connected,
                                              loop=self._loop)
        protocol.__dict__.update(self._settings)
        protocol._smtp_methods = {name: MethodType(function, protocol) for name, function in self._commands.items()}
        protocol._auth_methods = {name: self._rebind(entry, protocol) for name, entry in self._auth_methods.items()}
        return protocol

    @staticmethod
    def _rebind(entry: _AuthMechAttr, protocol: Any) -> _AuthMechAttr:
        # Built-in mechanisms are the protocol's own methods; others belong to the shared handler.
        if not entry.is_builtin:
            return entry
        return _AuthMechAttr(MethodType(entry.method.__func__, protocol), True)
