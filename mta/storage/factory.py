"""Build the body store that ``[storage]`` names."""

from __future__ import annotations

import os

from mta.config import Config, ConfigError
from mta.storage.local import LocalStore
from mta.storage.store import BodyStore


def build_store(config: Config) -> BodyStore:
    """Return the configured store, not yet started. ``load`` has checked the settings already."""
    storage = config.storage
    if storage.kind == "local":
        return LocalStore(config.data_path(storage.path))

    # Imported here so that a local store never loads aioboto3.
    from mta.storage import residency
    from mta.storage.s3 import S3Settings, S3Store

    access_key_id = storage.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret_access_key = storage.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access_key_id or not secret_access_key:
        raise ConfigError("storage.kind 's3' needs credentials: set storage.access_key_id and "
                          "storage.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")

    endpoint_url = residency.resolve_endpoint(storage.region, storage.endpoint_url, storage.extra_endpoint_hosts,
                                              storage.allow_loopback_endpoint)
    return S3Store(S3Settings(
        bucket=storage.bucket,
        region=storage.region,
        endpoint_url=endpoint_url,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        # A session token belongs to the environment's key pair, never to keys from the file.
        session_token="" if storage.access_key_id else os.environ.get("AWS_SESSION_TOKEN", ""),
        prefix=storage.prefix,
        part_size=storage.part_size,
        timeout=storage.timeout,
        max_attempts=storage.max_attempts,
        max_connections=storage.max_connections,
    ))
