"""Start the MX and submission listeners on sockets bound by the parent process."""

from __future__ import annotations

import asyncio
import socket
import ssl

from mta.config import Config, ListenerConfig
from mta.smtp.factory import ProtocolFactory
from mta.smtp.policy import Listener
from mta.smtp.session import Handler, MtaSmtp, Services

MX = Listener(name="mx", requires_auth=False)
SUBMISSION = Listener(name="submission", requires_auth=True)
SUBMISSIONS = Listener(name="submissions", requires_auth=True, implicit_tls=True)


def bind(listener: ListenerConfig) -> socket.socket:
    """Bind a listening TCP socket with SO_REUSEPORT, so worker processes can share the port."""
    family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listener.address, listener.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(listener: Listener, sock: socket.socket, services: Services,
                tls_context: ssl.SSLContext) -> asyncio.base_events.Server:
    config: Config = services.config
    handler = Handler(listener, services)
    listener_config: ListenerConfig = getattr(config.smtp, listener.name)
    submission = listener.requires_auth
    implicit = listener.implicit_tls

    def make() -> MtaSmtp:
        # With implicit TLS the connection is encrypted before the greeting:
        # no STARTTLS to offer, and AUTH needs no further TLS.
        return MtaSmtp(
            handler,
            hostname=config.server.hostname,
            ident="ESMTP",
            data_size_limit=config.listener_limits(listener.name)[0],
            enable_SMTPUTF8=True,
            tls_context=None if implicit else tls_context,
            require_starttls=submission and not implicit,
            auth_required=submission,
            auth_require_tls=not implicit,
            timeout=config.smtp.idle_timeout,
            proxy_protocol_timeout=config.smtp.proxy_timeout if listener_config.proxy_protocol else None,
            loop=asyncio.get_running_loop(),
        )

    return await asyncio.get_running_loop().create_server(
        ProtocolFactory(make), sock=sock, backlog=1024, ssl=tls_context if implicit else None)
