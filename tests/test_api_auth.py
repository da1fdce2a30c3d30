"""API authentication: per-user bearer tokens (stored hashed) and the browser session."""

from __future__ import annotations

import hashlib

import pytest

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
    assert client.login(username="member", password="pw-member-123")
    assert client.get("/api/teams").status_code == 200
