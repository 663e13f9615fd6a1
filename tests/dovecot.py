"""A real Dovecot LMTP server for tests, on a loopback port and a UNIX socket.

Dovecot runs in the foreground with a configuration written under a test
directory. It starts as root and drops to ``nobody`` for delivery, so the
mail directory belongs to that user. Mail goes to Maildir folders, one per
address, under ``mail/DOMAIN/USER``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from loadtest.target import free_port

_CONFIG = """\
protocols = lmtp
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = mta-test-{port}
listen = 127.0.0.1
ssl = no
default_internal_user = nobody
default_login_user = nobody
default_internal_group = {group}
mail_location = maildir:{root}/mail/%d/%n
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
  default_fields = uid=nobody gid={group} home={root}/mail/%d/%n
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
"""


class Dovecot:
    def __init__(self, root: Path, users: list[str]):
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.users = users

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "lmtp"

    def start(self) -> None:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not Path(binary).exists():
            raise RuntimeError("dovecot is not installed: run `make system-deps` (Debian package dovecot-lmtpd)")

        nobody = pwd.getpwnam("nobody")
        group = "nogroup"
        (self.root / "mail").mkdir(parents=True, exist_ok=True)
        os.chown(self.root / "mail", nobody.pw_uid, nobody.pw_gid)
        self.root.chmod(0o755)
        (self.root / "users").write_text("".join(f"{user}:{{PLAIN}}unused::::::\n" for user in self.users))
        config = self.root / "dovecot.conf"
        config.write_text(_CONFIG.format(root=self.root, port=self.port, group=group))

        self.process = subprocess.Popen([binary, "-F", "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.process.stderr.read().decode()} {self.log()}")
            if self.socket_path.exists() and "starting up" in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start within 15 s: {self.log()}")

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text() if path.exists() else ""

    def delivered(self, address: str) -> list[bytes]:
        """Return the messages in the INBOX of address."""
        local, _, domain = address.partition("@")
        folder = self.root / "mail" / domain / local / "new"
        if not folder.exists():
            return []
        return [path.read_bytes() for path in sorted(folder.iterdir())]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
