"""Who may see and submit what: teams, memberships and API tokens.

Every object a user can reach (a search, an architecture, a training job, a bundle)
belongs to a team; `Team.objects.for_user(user)` is the one question every view,
API call, websocket and download asks. Staff see every team.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

ROLE_OWNER = "owner"
ROLE_MEMBER = "member"
ROLE_CHOICES = [(ROLE_OWNER, "Owner"), (ROLE_MEMBER, "Member")]

TOKEN_PREFIX_LENGTH = 8


class TeamQuerySet(models.QuerySet):
    def for_user(self, user) -> TeamQuerySet:
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self.all()
        return self.filter(memberships__user=user).distinct()


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TeamQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def has_member(self, user) -> bool:
        if not user.is_authenticated:
            return False
        return user.is_staff or self.memberships.filter(user=user).exists()

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name}


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=ROLE_CHOICES, default=ROLE_MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="one_membership_per_team")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A per-user API token. Only its SHA-256 is stored; the raw value is shown once.

    It expires: a token copied into a script or a CI secret outlives the reason it was
    issued, and nobody remembers to delete it. `expires_at` is null for "never": tokens
    issued before expiry existed, and those issued with days=0 on purpose."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=TOKEN_PREFIX_LENGTH, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never expires")

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user, name: str = "", days: int | None = None) -> tuple[ApiToken, str]:
        """Create a token valid for `days` days (default NAS_API_TOKEN_DAYS; 0: never expires);
        return it and the raw value (never stored, never shown again)."""
        days = settings.NAS_API_TOKEN_DAYS if days is None else days
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise ValueError(f"days: a whole number >= 0 (0: never expires), got {days!r}")
        expires_at = timezone.now() + timedelta(days=days) if days else None
        raw = "nas_" + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, prefix=raw[:TOKEN_PREFIX_LENGTH], digest=hash_token(raw), expires_at=expires_at
        )
        return token, raw

    def has_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
