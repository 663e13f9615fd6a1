"""A body store in a local directory, durable before it returns.

A put writes a temporary file, fsyncs it, renames it into place and fsyncs
the directory, so a crash leaves either the whole object or nothing under its
name. Blocking file calls run in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


class StoreError(Exception):
    """The body store failed to write, read or delete an object."""


class LocalStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        # Two levels of fan-out keep directories small at millions of objects.
        return self.root / key[:2] / key[2:4] / key

    async def put(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._put, key, data)
        except OSError as error:
            raise StoreError(f"failed to store object {key}: {error.strerror}") from error

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except OSError as error:
            raise StoreError(f"failed to read object {key}: {error.strerror}") from error

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, True)
        except OSError as error:
            raise StoreError(f"failed to delete object {key}: {error.strerror}") from error

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")

        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

        os.rename(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
