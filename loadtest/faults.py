"""Faults injected during a load run, with the loss check still applied.

Written on the command line as ``KIND@SECONDS`` or ``KIND@SECONDS+DURATION``:

- ``kill-node@10``: SIGKILL every MTA process at 10 s, then start it again;
- ``restart-postgres@20``: restart the MTA's PostgreSQL (fast shutdown) at 20 s;
- ``store-outage@15+10``: make the body store fail from 15 s for 10 s. Only
  bodies above ``storage.inline_max_size`` use the store, so pair it with
  attachment traffic. A delivery that fails to read its body is retried
  when its lease expires (300 s by default), so allow a long drain.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass

from loadtest.target import MtaUnderTest

KINDS = ("kill-node", "restart-postgres", "store-outage")


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    duration: float = 10.0

    @classmethod
    def parse(cls, text: str) -> "Fault":
        kind, separator, timing = text.partition("@")
        if kind not in KINDS or not separator:
            raise ValueError(f"invalid fault {text!r}: use KIND@SECONDS[+DURATION] with KIND one of "
                             f"{', '.join(KINDS)}")
        start, _, duration = timing.partition("+")
        try:
            return cls(kind, float(start), float(duration) if duration else 10.0)
        except ValueError:
            raise ValueError(f"invalid fault timing in {text!r}: expected seconds such as 10 or 10+5") from None

    def __str__(self) -> str:
        return f"{self.kind}@{self.at:g}+{self.duration:g}" if self.kind == "store-outage" else f"{self.kind}@{self.at:g}"


async def run_faults(faults: list[Fault], target: MtaUnderTest) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    for fault in sorted(faults, key=lambda item: item.at):
        await asyncio.sleep(max(0.0, started + fault.at - loop.time()))
        print(f"\nfault: {fault} at {loop.time() - started:.1f}s", file=sys.stderr, flush=True)
        if fault.kind == "kill-node":
            await asyncio.to_thread(target.restart)
        elif fault.kind == "restart-postgres":
            await asyncio.to_thread(restart_postgres, target)
        else:
            await store_outage(target, fault.duration)


def restart_postgres(target: MtaUnderTest) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    pgdata = target.directory / "var" / "pg"
    # The embedded server runs as pgserver's own user when started by root.
    user = "pgserver" if os.geteuid() == 0 else None
    # -l keeps the server's output in its log file instead of a pipe that closes with pg_ctl.
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-l", str(pgdata / "log"),
                    "-m", "fast", "-w", "restart"],
                   check=True, user=user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


async def store_outage(target: MtaUnderTest, duration: float) -> None:
    blobs = target.directory / "var" / "blobs"
    parked = blobs.with_name("blobs.parked")
    # A file where the store's directory should be makes every access fail.
    blobs.rename(parked)
    blobs.write_bytes(b"")
    try:
        await asyncio.sleep(duration)
    finally:
        blobs.unlink()
        parked.rename(blobs)
