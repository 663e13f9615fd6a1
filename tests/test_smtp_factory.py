"""The protocol factory gives each connection what aiosmtpd's constructor would."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from mta.config import Config
from mta.smtp.factory import ProtocolFactory, stream_state_names
from mta.smtp.listener import SUBMISSION
from mta.smtp.session import Handler, MtaSmtp, Services


def _maker() -> Callable[[], MtaSmtp]:
    """Return a constructor of submission protocols that share one handler, as a listener's do."""
    handler = Handler(SUBMISSION, Services(config=Config(), pool=None, spool=None, signer=None, auth_throttle=None))
    tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    def make() -> MtaSmtp:
        return MtaSmtp(handler, hostname="mta.test", data_size_limit=1024, enable_SMTPUTF8=True,
                       tls_context=tls_context, require_starttls=True, auth_required=True, auth_require_tls=True,
                       timeout=30.0, loop=asyncio.get_running_loop())
    return make


def test_factory_protocol_matches_constructor():
    async def compare() -> None:
        make = _maker()
        cloned, constructed = ProtocolFactory(make)(), make()
        per_connection = stream_state_names(asyncio.get_running_loop())

        assert vars(cloned).keys() == vars(constructed).keys()
        for name in vars(constructed).keys() - per_connection - {"_smtp_methods", "_auth_methods"}:
            assert getattr(cloned, name) == getattr(constructed, name), name
        assert cloned._smtp_methods.keys() == constructed._smtp_methods.keys()
        assert all(method.__self__ is cloned for method in cloned._smtp_methods.values())
        assert sorted(cloned._auth_methods) == ["LOGIN", "PLAIN"]
        assert all(entry.method.__self__ is cloned for entry in cloned._auth_methods.values())

    asyncio.run(compare())


def test_factory_protocols_share_no_stream_state():
    async def compare() -> None:
        factory = ProtocolFactory(_maker())
        first, second = factory(), factory()

        assert first._stream_reader_wr() is not second._stream_reader_wr()
        assert first._closed is not second._closed
        assert first._drain_waiters is not second._drain_waiters
        assert first._client_connected_cb.__self__ is first

    asyncio.run(compare())
