"""An S3 body store for the baseline benchmark: moto's S3 server on loopback.

Nothing here reaches a real provider: the server listens on 127.0.0.1 (and
the benchmark runs in a network namespace with only lo), the credentials are
dummies, and instance metadata lookups are turned off. moto keeps objects in
the memory of this process and runs in its threads, so its CPU time counts
as "other" in the benchmark's table, not as the MTA's.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from loadtest import target

LOOPBACK = "127.0.0.1"
REGION = "eu-west-1"
# Dummies that botocore signs with; moto's server does not check them.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "bench-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "bench-secret-access-key",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@contextmanager
def moto_store() -> Iterator[tuple[str, dict[str, str]]]:
    """Run moto's S3 server with one empty bucket; yield the MTA's [storage] section and its environment."""
    # Imported here, so runs without S3 need neither moto nor boto3.
    import boto3
    from moto.server import ThreadedMotoServer

    # werkzeug logs one line per request.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = target.free_port(LOOPBACK)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://{LOOPBACK}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                              aws_access_key_id=ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=ENVIRONMENT["AWS_SECRET_ACCESS_KEY"])
        # moto keeps its buckets for the life of the process, across servers, so each run gets a new one.
        bucket = f"bench-bodies-{secrets.token_hex(4)}"
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield storage_section(endpoint, bucket), dict(ENVIRONMENT)
    finally:
        server.stop()


def storage_section(endpoint: str, bucket: str) -> str:
    return (f'[storage]\nkind = "s3"\nbucket = "{bucket}"\nregion = "{REGION}"\nendpoint_url = "{endpoint}"\n'
            "allow_loopback_endpoint = true\n")
