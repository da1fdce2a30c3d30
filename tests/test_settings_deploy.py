"""Production settings: `check --deploy` is clean, and bad environment values stop the
process at start-up with a message naming the variable."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(48)[:64],
    "DJANGO_ALLOWED_HOSTS": "example.com",
    "DATABASE_URL": "postgres://nas:secret@db.example.com:5432/nas",
    "REDIS_URL": "redis://redis.example.com:6379/0",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "NAS_", "REDIS_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "webapp.settings", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output


@pytest.mark.parametrize(
    "name, value",
    [
        ("DJANGO_DEBUG", "maybe"),
        ("DATABASE_URL", "mysql://x"),
        ("NAS_LEASE_SECONDS", "abc"),
        ("DJANGO_SECRET_KEY", None),
        ("DJANGO_SECRET_KEY", "short"),
        ("DJANGO_HSTS_SECONDS", "-1"),
        ("REDIS_URL", "http://redis"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name, value):
    env = dict(PRODUCTION)
    if value is None:
        env.pop(name)
    else:
        env[name] = value
    result = manage("check", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and f"{name}:" in result.stderr, result.stderr
