"""The threads that run inbound checks which block: pyspf's DNS waits and dkimpy's body hashing.

They get a small pool of their own, so a flood of slow SPF lookups or large
signed messages waits here and never takes the default pool's threads from
password hashing and the body store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

RESULT = TypeVar("RESULT")

# Threads for inbound checks per worker process; further checks queue for one.
THREADS = 4

_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="inbound-check")


async def run(function: Callable[..., RESULT], *args: object) -> RESULT:
    return await asyncio.get_running_loop().run_in_executor(_pool, function, *args)
