"""API authentication: `Authorization: Bearer <token>` checked against stored hashes; an
expired token (ApiToken.expires_at) is refused with 401."""

from __future__ import annotations

from datetime import UTC, timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from webapp.accounts.models import ApiToken, hash_token

LAST_USED_RESOLUTION = timedelta(minutes=1)  # ApiToken.last_used_at is at most this stale


class HashedTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace") not in (self.keyword, "Token"):
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        raw = header[1].decode(errors="replace")
        token = ApiToken.objects.select_related("user").filter(digest=hash_token(raw)).first()
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        if token.has_expired():
            # Say so, with the way out: "invalid" would send its owner hunting for a typo.
            when = token.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
            raise exceptions.AuthenticationFailed(f"token expired on {when}; issue a new one (manage.py issuetoken)")
        now = timezone.now()
        # To the minute: written on every call, the row serialised every client sharing the
        # token and cost each API request a write.
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return self.keyword
