"""API authentication: per-user bearer tokens (stored hashed) and the browser session."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.http import HttpRequest
from django.utils import timezone

from webapp.accounts.models import ApiToken


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_good_token_authenticates_its_user(client, personas):
    token, raw = ApiToken.issue(personas.member, name="laptop")
    r = client.get("/api/teams", **bearer(raw))
    assert r.status_code == 200 and [t["name"] for t in r.json()["results"]] == ["alpha"]
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_last_used_is_written_at_most_once_a_minute(client, personas):
    """Written on every call, the token row serialised the clients sharing it."""
    from datetime import timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    token, raw = ApiToken.issue(personas.member)
    client.get("/api/teams", **bearer(raw))
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/teams", **bearer(raw)).status_code == 200
    assert not [q for q in queries if q["sql"].startswith("UPDATE") and "apitoken" in q["sql"]]
    old = timezone.now() - timedelta(minutes=2)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=old)
    client.get("/api/teams", **bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at > old


def test_the_token_keyword_is_also_accepted(client, personas):
    _, raw = ApiToken.issue(personas.member)
    assert client.get("/api/teams", HTTP_AUTHORIZATION=f"Token {raw}").status_code == 200


def test_the_database_holds_only_the_hash(client, personas):
    token, raw = ApiToken.issue(personas.owner)
    row = ApiToken.objects.values().get(pk=token.pk)
    assert raw not in [str(v) for v in row.values()]
    assert row["digest"] == hashlib.sha256(raw.encode()).hexdigest()
    assert row["prefix"] == raw[:8]


@pytest.mark.parametrize("header", ["Bearer nas_wrong", "Bearer", "Bearer a b", "Bearer \u00e9t\u00e9"])
def test_a_wrong_token_is_401(client, personas, header):
    ApiToken.issue(personas.owner)
    r = client.get("/api/searches", HTTP_AUTHORIZATION=header)
    assert r.status_code == 401 and r.json()["field"] == "authorization"
    assert r["WWW-Authenticate"] == "Bearer"


def test_a_revoked_token_is_401(client, personas):
    token, raw = ApiToken.issue(personas.owner)
    assert client.get("/api/searches", **bearer(raw)).status_code == 200
    token.delete()
    assert client.get("/api/searches", **bearer(raw)).status_code == 401


def test_the_token_of_an_inactive_user_is_401(client, personas):
    _, raw = ApiToken.issue(personas.owner)
    personas.owner.is_active = False
    personas.owner.save()
    assert client.get("/api/searches", **bearer(raw)).status_code == 401


def test_a_token_acts_only_for_its_user(client, personas):
    _, raw = ApiToken.issue(personas.outsider)
    assert client.get("/api/teams", **bearer(raw)).json()["results"] == [{"id": personas.beta.id, "name": "beta"}]


def test_a_token_post_needs_no_csrf_token(personas):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    _, raw = ApiToken.issue(personas.owner)
    r = strict.post("/api/searches", "{}", content_type="application/json", **bearer(raw))
    assert r.status_code == 400 and r.json()["field"] == "team"


def test_a_session_post_needs_the_csrf_token(personas):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(personas.owner)
    assert strict.get("/api/searches").status_code == 200
    r = strict.post("/api/searches", "{}", content_type="application/json")
    assert r.status_code == 403 and r.json()["field"] == "authorization"


def test_the_session_login_works(client, personas):
    # axes' backend refuses an authenticate() without a request; login() passes this one on.
    assert client.login(request=HttpRequest(), username="member", password="pw-member-123")
    assert client.get("/api/teams").status_code == 200


# -- expiry -------------------------------------------------------------------------------------


def test_an_expired_token_is_401_with_the_date_and_what_to_do(client, personas):
    token, raw = ApiToken.issue(personas.member, days=30)
    assert client.get("/api/teams", **bearer(raw)).status_code == 200
    token.expires_at = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    token.save()
    r = client.get("/api/teams", **bearer(raw))
    assert r.status_code == 401 and r["WWW-Authenticate"] == "Bearer"
    assert r.json() == {
        "field": "authorization",
        "error": "token expired on 2025-03-01 12:30 UTC; issue a new one (manage.py issuetoken)",
    }


def test_a_token_is_refused_from_the_moment_it_expires(client, personas):
    token, raw = ApiToken.issue(personas.member)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() + timedelta(seconds=30))
    assert client.get("/api/teams", **bearer(raw)).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    assert client.get("/api/teams", **bearer(raw)).status_code == 401


def test_a_token_expires_after_NAS_API_TOKEN_DAYS_by_default(personas, settings):
    assert settings.NAS_API_TOKEN_DAYS == 90
    before = timezone.now()
    token, _ = ApiToken.issue(personas.member)
    assert before + timedelta(days=90) <= token.expires_at <= timezone.now() + timedelta(days=90)
    settings.NAS_API_TOKEN_DAYS = 7
    token, _ = ApiToken.issue(personas.member)
    assert token.expires_at - token.created_at < timedelta(days=7, seconds=1)
    assert token.expires_at - token.created_at > timedelta(days=7, seconds=-1)


def test_days_zero_never_expires(client, personas, settings):
    token, raw = ApiToken.issue(personas.member, days=0)
    assert token.expires_at is None
    settings.NAS_API_TOKEN_DAYS = 0
    assert ApiToken.issue(personas.member)[0].expires_at is None
    assert client.get("/api/teams", **bearer(raw)).status_code == 200


def test_a_token_from_before_expiry_existed_never_expires(client, personas):
    """Tokens issued before the column existed have NULL there (the migration adds no date)."""
    token, raw = ApiToken.issue(personas.member)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=None)
    assert client.get("/api/teams", **bearer(raw)).status_code == 200


def test_negative_days_are_refused(personas):
    with pytest.raises(ValueError, match="days"):
        ApiToken.issue(personas.member, days=-1)
    assert not ApiToken.objects.exists()


def issuetoken(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("issuetoken", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_issuetoken_days_sets_the_expiry_and_says_when(client, personas):
    raw, note = issuetoken("member", "--days", "30")
    token = ApiToken.objects.get()
    assert timedelta(days=30, seconds=-1) < token.expires_at - token.created_at < timedelta(days=30, seconds=1)
    assert f"expires on {token.expires_at:%Y-%m-%d %H:%M} UTC (in 30 days)" in note and raw not in note
    assert client.get("/api/teams", **bearer(raw)).status_code == 200


def test_issuetoken_defaults_to_the_setting_and_days_zero_never_expires(personas, settings):
    settings.NAS_API_TOKEN_DAYS = 12
    _, note = issuetoken("member")
    assert "(in 12 days)" in note and ApiToken.objects.get().expires_at is not None
    _, note = issuetoken("member", "--days", "0", "--name", "ci")
    assert "never expires" in note and ApiToken.objects.get(name="ci").expires_at is None


def test_issuetoken_refuses_negative_days(personas):
    with pytest.raises(CommandError, match="--days: 0"):
        issuetoken("member", "--days", "-3")
    assert not ApiToken.objects.exists()
