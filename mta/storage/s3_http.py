"""The HTTP session of the S3 client, with redirects refused.

aiobotocore sends requests through aiohttp, which follows a 3xx reply to
any host by default and sends the PUT body there again. The EU allow-list
is checked against the configured endpoint only, so a redirect could move a
body to a host outside it, or to plain http, and the put would still
succeed. Here a 3xx reply becomes a connection error, so botocore neither
follows it nor starts its own bucket-region redirect, and the request
fails with StoreError after its retries (checked with aiobotocore 2.25).
"""

from __future__ import annotations

import aiohttp
from aiobotocore.httpsession import AIOHTTPSession


class _WithoutRedirects:
    """An aiohttp ClientSession whose requests never follow a redirect."""

    def __init__(self, session):
        self._session = session

    async def request(self, *args, **kwargs):
        kwargs["allow_redirects"] = False
        response = await self._session.request(*args, **kwargs)
        if 300 <= response.status < 400:
            location = response.headers.get("Location", "")
            response.release()
            raise aiohttp.ClientConnectionError(f"S3 endpoint replied {response.status}, a redirect to "
                                                f"{location[:200]!r}, which is refused")
        return response


class NoRedirectSession(AIOHTTPSession):
    async def _get_session(self, proxy_url):
        return _WithoutRedirects(await super()._get_session(proxy_url))
