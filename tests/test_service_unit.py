"""config/systemd/mta.service: the settings operators rely on, and systemd-analyze where it runs."""

from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest

from mta.config import DeliveryConfig
from tests.mtaprocess import REPOSITORY

UNIT = REPOSITORY / "config" / "systemd" / "mta.service"


def service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_unit_runs_serve_with_reload():
    service = service_section()

    assert service["ExecStart"].endswith("mta --config /etc/mta/mta.toml serve")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"


def test_unit_stop_timeout_exceeds_grace():
    timeout = service_section()["TimeoutStopSec"]

    assert timeout.endswith("s")
    assert float(timeout[:-1]) > DeliveryConfig().stop_grace


def test_unit_hardening():
    service = service_section()

    assert service["User"] not in ("", "root")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/mta"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert int(service["LimitNOFILE"]) >= 65536


def test_unit_passes_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify requires ExecStart's program to exist, and /opt/mta is not installed here.
    unit = tmp_path / "mta.service"
    unit.write_text(UNIT.read_text().replace("/opt/mta/bin/mta", shutil.which("true")))

    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
