"""A long-running coroutine of a worker, started and stopped with it."""

from __future__ import annotations

import asyncio


class BackgroundTask:
    """Runs ``_loop`` as one named task from ``start`` until ``stop`` cancels it."""

    task_name = "background"

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.task_name)

    @property
    def tasks(self) -> list[asyncio.Task]:
        return [self._task] if self._task is not None else []

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        raise NotImplementedError
