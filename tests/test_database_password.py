"""database.password_file: the password put into the configured URL."""

from __future__ import annotations

import pytest

from mta.config import ConfigError
from mta.db import with_password


def test_password_file_fills_url(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("p@ss:w/rd\n")

    url = with_password("postgresql://mta@db.example.eu:5432/mta", str(secret))

    assert url == "postgresql://mta:p%40ss%3Aw%2Frd@db.example.eu:5432/mta"


def test_no_password_file_keeps_url():
    assert with_password("postgresql://mta@db/mta", "") == "postgresql://mta@db/mta"


@pytest.mark.parametrize("url, content, message", [
    ("postgresql://db/mta", "secret", "must name the user"),
    ("postgresql://mta:inline@db/mta", "secret", "contains a password"),
    ("postgresql://mta@db/mta", "\n", "is empty"),
])
def test_password_file_errors(tmp_path, url, content, message):
    secret = tmp_path / "password"
    secret.write_text(content)

    with pytest.raises(ConfigError, match=message):
        with_password(url, str(secret))


def test_missing_password_file(tmp_path):
    with pytest.raises(ConfigError, match="could not be read"):
        with_password("postgresql://mta@db/mta", str(tmp_path / "absent"))
