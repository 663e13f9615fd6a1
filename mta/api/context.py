"""The worker's services that the API's routes use."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from fastapi import Request

from mta.config import Config
from mta.dkim import DkimSigner
from mta.smtp.hooks import BeforeQueueChecks
from mta.spool.enqueue import Spool
from mta.storage.bodies import BodyCodec
from mta.storage.store import BodyStore


@dataclass
class Readiness:
    """Whether this worker's SMTP listeners accept sessions, set by the worker."""

    listeners_up: bool = False


@dataclass
class ApiContext:
    config: Config
    pool: asyncpg.Pool
    store: BodyStore
    bodies: BodyCodec | None = None
    spool: Spool | None = None
    signer: DkimSigner | None = None
    checks: BeforeQueueChecks | None = None
    readiness: Readiness = field(default_factory=Readiness)


def get_context(request: Request) -> ApiContext:
    return request.app.state.context
