"""Login throttling (django-axes): after NAS_LOGIN_FAILURE_LIMIT wrong passwords for one
username from one address, that pair is refused, right password included, with a 429 page
saying how long to wait, for NAS_LOGIN_COOLOFF_MINUTES. Through the real login pages (the
site's and the admin's) and the real PostgreSQL; the API's bearer tokens are not affected."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.db.models import F
from django.test import AsyncClient, Client

from webapp.accounts.models import ApiToken

ROOT = Path(__file__).resolve().parent.parent
SITE = "/accounts/login/"
ADMIN = "/admin/login/?next=/admin/"
LOCKED = "Too many failed logins"


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def attempt(client: Client, username: str, password: str, url: str = SITE, **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


def fail(client: Client, username: str, times: int, url: str = SITE, **extra) -> list[int]:
    return [attempt(client, username, "wrong-password", url, **extra).status_code for _ in range(times)]


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_the_defaults_are_five_failures_and_fifteen_minutes(settings):
    assert settings.AXES_FAILURE_LIMIT == 5 and settings.AXES_COOLOFF_TIME.total_seconds() == 15 * 60
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]] and settings.AXES_RESET_ON_SUCCESS


def test_five_wrong_passwords_lock_the_user_out_with_a_429_page(client, personas):
    # The first four are the login form again (200), the fifth already answers the lockout.
    assert fail(client, "member", 5) == [200, 200, 200, 200, 429]
    response = attempt(client, "member", "pw-member-123")
    assert response.status_code == 429 and not logged_in(client)
    page = response.content.decode()
    assert LOCKED in page and "Try again in 15 minutes" in page
    assert response["Retry-After"] == "900"
    assert client.get("/").status_code == 302  # still the login page


def test_four_wrong_passwords_do_not_lock(client, personas):
    assert fail(client, "member", 4) == [200] * 4
    assert attempt(client, "member", "pw-member-123").status_code == 302 and logged_in(client)


def test_another_user_from_the_same_address_is_not_locked_out(client, personas):
    fail(client, "member", 5)
    assert attempt(client, "owner", "pw-owner-123").status_code == 302 and logged_in(client)


def test_the_same_user_from_another_address_is_not_locked_out(client, personas):
    """Per (username, address): an attacker elsewhere cannot lock the real user out."""
    fail(client, "member", 5, REMOTE_ADDR="203.0.113.7")
    assert attempt(client, "member", "pw-member-123", REMOTE_ADDR="198.51.100.2").status_code == 302


def test_after_the_cool_off_the_right_password_works(client, personas):
    from axes.models import AccessAttempt

    fail(client, "member", 5)
    assert attempt(client, "member", "pw-member-123").status_code == 429
    # 16 minutes later, as far as the stored attempt knows.
    assert AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=16)) == 1
    assert attempt(client, "member", "pw-member-123").status_code == 302 and logged_in(client)


def test_a_try_during_the_lockout_starts_the_wait_again(client, personas):
    """As the page says: an attacker who keeps guessing stays locked out."""
    from axes.models import AccessAttempt

    fail(client, "member", 5)
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=14))
    assert attempt(client, "member", "pw-member-123").status_code == 429  # 14 minutes on: still locked
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=14))
    assert attempt(client, "member", "pw-member-123").status_code == 429  # 28 minutes on, 14 since the try
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=16))
    assert attempt(client, "member", "pw-member-123").status_code == 302


def test_a_shorter_cool_off_is_honoured_and_named(client, personas, settings):
    settings.AXES_COOLOFF_TIME = timedelta(minutes=1)
    fail(client, "member", 5)
    response = attempt(client, "member", "pw-member-123")
    assert response.status_code == 429 and "Try again in 1 minute." in response.content.decode()


def test_a_successful_login_resets_the_count(client, personas):
    fail(client, "member", 4)
    assert attempt(client, "member", "pw-member-123").status_code == 302
    client.logout()
    # Counted from zero again: four more failures are still under the limit.
    assert fail(client, "member", 4) == [200] * 4
    assert attempt(client, "member", "pw-member-123").status_code == 302 and logged_in(client)


def test_the_admin_login_is_throttled_too(client, personas):
    assert fail(client, "staff", 5, ADMIN) == [200, 200, 200, 200, 429]
    response = attempt(client, "staff", "pw-staff-123", ADMIN)
    assert response.status_code == 429 and LOCKED in response.content.decode() and not logged_in(client)
    # The count is the user's at that address, whichever login page it came through.
    assert attempt(client, "staff", "pw-staff-123").status_code == 429


def test_the_lockout_page_under_asgi_is_the_same_429(personas):
    """daphne serves the site through Django's async handler, where axes' middleware takes
    another path than under the test client's WSGI one."""

    async def run() -> list:
        client = AsyncClient()
        statuses = []
        for _ in range(5):
            r = await client.post(SITE, {"username": "member", "password": "wrong-password"})
            statuses.append(r.status_code)
        return statuses, await client.post(SITE, {"username": "member", "password": "pw-member-123"})

    statuses, response = async_to_sync(run)()
    assert statuses == [200, 200, 200, 200, 429]
    assert response.status_code == 429 and "Try again in 15 minutes" in response.content.decode()


def test_a_locked_out_user_keeps_using_the_api(client, personas):
    _, raw = ApiToken.issue(personas.member)
    fail(client, "member", 5)
    assert attempt(client, "member", "pw-member-123").status_code == 429
    assert client.get("/api/teams", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200
    # A session opened before the lockout keeps working as well: only logging in is throttled.
    other = Client()
    other.force_login(personas.member)
    assert other.get("/api/teams").status_code == 200


def test_behind_a_proxy_the_address_is_the_one_the_proxy_saw(client, personas, settings):
    """DJANGO_BEHIND_PROXY=1: REMOTE_ADDR is the proxy for everyone, so the client is the
    right-most X-Forwarded-For entry (the one the proxy appended); what the client put in
    front of it is not believed."""
    from axes.models import AccessAttempt

    settings.AXES_CLIENT_IP_CALLABLE = "webapp.accounts.throttle.client_ip_behind_proxy"
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    for spoofed in ("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4", "5.5.5.5"):
        attempt(client, "member", "wrong-password", HTTP_X_FORWARDED_FOR=f"{spoofed}, 203.0.113.7", **proxy)
    assert list(AccessAttempt.objects.values_list("ip_address", "failures_since_start")) == [("203.0.113.7", 5)]
    locked = attempt(client, "member", "pw-member-123", HTTP_X_FORWARDED_FOR="203.0.113.7", **proxy)
    assert locked.status_code == 429
    # Another client behind the same proxy is not locked out.
    other = attempt(Client(), "member", "pw-member-123", HTTP_X_FORWARDED_FOR="198.51.100.2", **proxy)
    assert other.status_code == 302


@pytest.mark.parametrize("header", [None, "", "not-an-address", "203.0.113.7:4711"])
def test_behind_a_proxy_a_missing_or_odd_header_falls_back_to_the_peer(client, personas, settings, header):
    from axes.models import AccessAttempt

    settings.AXES_CLIENT_IP_CALLABLE = "webapp.accounts.throttle.client_ip_behind_proxy"
    extra = {"REMOTE_ADDR": "10.0.0.2"} | ({} if header is None else {"HTTP_X_FORWARDED_FOR": header})
    assert attempt(client, "member", "wrong-password", **extra).status_code == 200
    assert AccessAttempt.objects.get().ip_address == "10.0.0.2"


def settings_of(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "NAS_"))}
    code = (
        "from webapp import settings as s; "
        "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), s.AXES_CLIENT_IP_CALLABLE)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def test_the_limits_come_from_the_environment():
    result = settings_of(NAS_LOGIN_FAILURE_LIMIT="3", NAS_LOGIN_COOLOFF_MINUTES="60", DJANGO_BEHIND_PROXY="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "3600.0", "webapp.accounts.throttle.client_ip_behind_proxy"]
    assert settings_of().stdout.split() == ["5", "900.0", "None"]


@pytest.mark.parametrize("name", ["NAS_LOGIN_FAILURE_LIMIT", "NAS_LOGIN_COOLOFF_MINUTES"])
def test_a_limit_below_one_stops_start_up(name):
    result = settings_of(**{name: "0"})
    assert result.returncode != 0 and f"{name}: must be >= 1" in result.stderr
