"""A throw-away PostgreSQL cluster for tests, on a loopback TCP port.

It uses the server binaries that the ``pgserver`` package ships, so the tests
need nothing from the system. PostgreSQL refuses to run as root, so under
root the cluster belongs to the unprivileged user that pgserver itself
creates. Tests can stop and start the cluster to simulate an outage.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from pgserver._commands import POSTGRES_BIN_PATH

# Tests and the load harness share one helper, which never hands out a port twice in a process.
from loadtest.target import free_port

SYSTEM_USER = "pgserver"


class PgCluster:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mta-test-pg-"))
        self.pgdata = self.directory / "data"
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            from pgserver.utils import ensure_user_exists

            ensure_user_exists(SYSTEM_USER)
            self.user = SYSTEM_USER
            account = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            # The binaries must be readable by that user wherever the venv lives.
            from pgserver.utils import ensure_prefix_permissions
            ensure_prefix_permissions(POSTGRES_BIN_PATH)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([str(POSTGRES_BIN_PATH / program), *args], check=True, user=self.user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-l", str(self.directory / "log"),
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)
