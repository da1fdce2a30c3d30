"""Management commands: createmember and issuetoken."""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from webapp.accounts.models import ApiToken, Membership, Team


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_createmember_creates_the_user_the_team_and_the_membership(db):
    out = run("createmember", "alice", "vision", "--password", "s3cret-pass", "--role", "owner")
    assert "created user alice" in out and "created team vision" in out and "as owner" in out
    user = User.objects.get(username="alice")
    assert user.check_password("s3cret-pass") and not user.is_staff
    assert Membership.objects.get(user=user, team__name="vision").role == "owner"


def test_createmember_is_idempotent(db):
    run("createmember", "alice", "vision")
    out = run("createmember", "alice", "vision")
    assert "found user alice" in out and "found team vision" in out and "already in vision as member" in out
    assert (User.objects.count(), Team.objects.count(), Membership.objects.count()) == (1, 1, 1)


def test_createmember_without_a_password_makes_a_user_who_cannot_log_in(db):
    run("createmember", "bob", "vision")
    assert not User.objects.get(username="bob").has_usable_password()


def test_createmember_adds_an_existing_user_to_a_second_team_and_changes_a_role(db):
    run("createmember", "alice", "vision")
    run("createmember", "alice", "audio")
    out = run("createmember", "alice", "vision", "--role", "owner")
    assert "changed the role of alice in vision to owner" in out
    assert sorted(Membership.objects.values_list("team__name", "role")) == [("audio", "member"), ("vision", "owner")]


def test_createmember_makes_staff(db):
    out = run("createmember", "root", "ops", "--staff")
    assert "made root staff" in out and User.objects.get(username="root").is_staff


def test_createmember_refuses_an_unknown_role(db):
    with pytest.raises(CommandError):
        run("createmember", "alice", "vision", "--role", "admin")
    assert User.objects.count() == 0


def test_issuetoken_prints_a_token_that_is_stored_hashed(db):
    run("createmember", "alice", "vision")
    raw = run("issuetoken", "alice", "--name", "ci").strip()
    token = ApiToken.objects.get()
    assert token.name == "ci" and token.user.username == "alice"
    assert token.digest == hashlib.sha256(raw.encode()).hexdigest() and raw.startswith(token.prefix)


def test_an_issued_token_authenticates_on_the_api(client, db):
    run("createmember", "alice", "vision")
    raw = run("issuetoken", "alice").strip()
    r = client.get("/api/teams", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert r.status_code == 200 and r.json()["results"][0]["name"] == "vision"


def test_issuetoken_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="no such user"):
        run("issuetoken", "nobody")
    assert ApiToken.objects.count() == 0
