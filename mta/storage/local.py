"""A body store in a local directory, durable before it returns.

A put writes a temporary file, fsyncs it, renames it into place and fsyncs
the directory, so a crash leaves either the whole object or nothing under its
name. Blocking file calls run in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from mta.storage.store import StoredObject, StoreError

__all__ = ["LocalStore", "StoreError"]

# Octets read per piece by get_stream.
READ_SIZE = 1024 * 1024
_TEMPORARY_SUFFIX = ".tmp"


class LocalStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        # Two levels of fan-out keep directories small at millions of objects.
        return self.root / key[:2] / key[2:4] / key

    async def start(self) -> None:
        """Nothing to open: each call opens its own file."""

    async def close(self) -> None:
        """Nothing to close."""

    async def check(self) -> str | None:
        if not os.access(self.root, os.W_OK):
            return f"body store not writable: {self.root}"
        return None

    async def put(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._put, key, data)
        except OSError as error:
            raise StoreError(f"failed to store object {key}: {error.strerror}") from error

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Write the chunks to a temporary file and publish it as ``put`` does.

        A failure, in the store or in ``chunks``, removes the temporary file,
        so nothing is left under the key. Store failures raise StoreError,
        and other errors propagate unchanged.
        """
        path = self._path(key)
        temporary = path.with_name(path.name + _TEMPORARY_SUFFIX)
        descriptor = await _store_call(key, _open_temporary, temporary)
        try:
            try:
                async for chunk in chunks:
                    await _store_call(key, _write_all, descriptor, chunk)
                await _store_call(key, os.fsync, descriptor)
            finally:
                os.close(descriptor)
            await _store_call(key, _publish, temporary, path)
        except BaseException:
            await asyncio.to_thread(_remove_quietly, temporary)
            raise

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except OSError as error:
            raise StoreError(f"failed to read object {key}: {error.strerror}") from error

    async def get_stream(self, key: str) -> AsyncIterator[bytes]:
        """Yield the object in pieces of up to ``READ_SIZE`` octets."""
        try:
            file = await asyncio.to_thread(open, self._path(key), "rb")
        except OSError as error:
            raise StoreError(f"failed to read object {key}: {error.strerror}") from error

        try:
            while piece := await asyncio.to_thread(file.read, READ_SIZE):
                yield piece
        except OSError as error:
            raise StoreError(f"failed to read object {key}: {error.strerror}") from error
        finally:
            file.close()

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield the keys that start with ``prefix``, in sorted order."""
        try:
            directories = await asyncio.to_thread(_sorted_directories, self.root)
            for directory in directories:
                # A fan-out directory is named by the first two octets of its keys.
                if not directory.name.startswith(prefix[:2]):
                    continue
                for key in await asyncio.to_thread(_keys_under, directory):
                    if key.startswith(prefix):
                        yield key
        except OSError as error:
            raise StoreError(f"failed to list objects under {self.root}: {error.strerror}") from error

    async def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Yield the objects whose keys start with ``prefix``, in sorted order, with their modification times."""
        async for key in self.list_keys(prefix):
            try:
                status = await asyncio.to_thread(os.stat, self._path(key))
            except FileNotFoundError:
                # Deleted since it was listed.
                continue
            except OSError as error:
                raise StoreError(f"failed to read the time of object {key}: {error.strerror}") from error
            yield StoredObject(key, datetime.fromtimestamp(status.st_mtime, UTC))

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, True)
        except OSError as error:
            raise StoreError(f"failed to delete object {key}: {error.strerror}") from error

    async def remove_abandoned_writes(self, before: datetime, dry_run: bool = False) -> int:
        try:
            return await asyncio.to_thread(_remove_temporaries, self.root, before.timestamp(), dry_run)
        except OSError as error:
            raise StoreError(f"failed to remove abandoned temporary files under {self.root}: "
                             f"{error.strerror}") from error

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        temporary = path.with_name(path.name + _TEMPORARY_SUFFIX)

        descriptor = _open_temporary(temporary)
        try:
            _write_all(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

        _publish(temporary, path)


async def _store_call(key: str, function, *args):
    """Run a blocking file call in a worker thread, raising StoreError for its OSError."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as error:
        raise StoreError(f"failed to store object {key}: {error.strerror}") from error


def _open_temporary(temporary: Path) -> int:
    temporary.parent.mkdir(parents=True, exist_ok=True)
    return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def _publish(temporary: Path, path: Path) -> None:
    """Rename the fsynced temporary file into place and fsync its directory."""
    os.rename(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        # The put is failing already, and a leftover temporary file is never read as an object.
        pass


def _sorted_directories(root: Path) -> list[Path]:
    return sorted(entry for entry in root.iterdir() if entry.is_dir())


def _keys_under(directory: Path) -> list[str]:
    keys = [entry.name for entry in directory.glob("*/*")
            if entry.is_file() and not entry.name.endswith(_TEMPORARY_SUFFIX)]
    return sorted(keys)


def _remove_temporaries(root: Path, before: float, dry_run: bool) -> int:
    """Remove the temporary files under root last written before the POSIX time before."""
    count = 0
    for temporary in root.glob(f"*/*/*{_TEMPORARY_SUFFIX}"):
        try:
            if temporary.stat().st_mtime >= before:
                continue
            if not dry_run:
                temporary.unlink()
        except FileNotFoundError:
            # Published or removed by its own put since it was listed.
            continue
        count += 1
    return count
