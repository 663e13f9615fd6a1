"""Group commit: one task writes what many callers hand over, in shared transactions.

Callers submit an item and get a future. The task gathers what arrives within
``window`` seconds of the first item, up to ``max_batch`` items, and passes
them to ``apply`` as one batch, so the round trips and the commit of a
transaction are shared. ``apply`` returns one result per item. When it
raises, every future of the batch gets that exception and the task goes on
with the next batch. On stop the task drains what was submitted before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("mta.spool")

Item = TypeVar("Item")
Result = TypeVar("Result")


class StoppingError(Exception):
    """The group commit is stopping and takes no new items."""


class GroupCommit(Generic[Item, Result]):
    def __init__(self, name: str, apply: Callable[[list[Item]], Awaitable[list[Result]]],
                 max_batch: int, window: float):
        self.name = name
        self.apply = apply
        self.max_batch = max_batch
        self.window = window
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        # Totals over the writer's life, for benchmarks: batches written and items in them.
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    @property
    def tasks(self) -> list[asyncio.Task]:
        return [self._task] if self._task is not None else []

    @property
    def stopping(self) -> bool:
        return self._stopping

    def submit(self, item: Item) -> asyncio.Future:
        """Hand item over and return the future of its result."""
        if self._stopping:
            raise StoppingError(f"{self.name} is stopping")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        return future

    async def stop(self, grace: float) -> None:
        """Write what was submitted, then end the task; after grace seconds, cancel it."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except asyncio.TimeoutError:
            log.warning("%s did not finish in %.0f s, %d items left unwritten", self.name, grace,
                        len(self._pending))
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while not (self._stopping and not self._pending):
            await self._wake.wait()
            if 0 < len(self._pending) < self.max_batch and not self._stopping:
                await asyncio.sleep(self.window)

            batch = self._pending[:self.max_batch]
            del self._pending[:self.max_batch]
            if not self._pending and not self._stopping:
                self._wake.clear()
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        try:
            results = await self.apply([item for item, _ in batch])
        except Exception as error:
            # Every caller gets the error, whatever it is, and the task goes on with the next batch.
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return

        self.batches += 1
        self.items += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
