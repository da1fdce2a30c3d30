"""Shared fixtures. Personas (the healthchecks habit): an owner and a member of team
"alpha", an outsider who belongs to team "beta" only and must see nothing of alpha's,
and a staff user who sees everything. Django tests run against the real PostgreSQL
(see webapp/test_settings.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def personas(db):
    from django.contrib.auth.models import User

    from webapp.accounts.models import ROLE_MEMBER, ROLE_OWNER, Membership, Team

    alpha, beta = Team.objects.create(name="alpha"), Team.objects.create(name="beta")
    owner = User.objects.create_user("owner", password="pw-owner-123")
    member = User.objects.create_user("member", password="pw-member-123")
    outsider = User.objects.create_user("outsider", password="pw-outsider-123")
    staff = User.objects.create_user("staff", password="pw-staff-123", is_staff=True, is_superuser=True)
    Membership.objects.create(user=owner, team=alpha, role=ROLE_OWNER)
    Membership.objects.create(user=member, team=alpha, role=ROLE_MEMBER)
    Membership.objects.create(user=outsider, team=beta, role=ROLE_OWNER)

    class P:
        pass

    p = P()
    p.alpha, p.beta, p.owner, p.member, p.outsider, p.staff = alpha, beta, owner, member, outsider, staff
    return p
