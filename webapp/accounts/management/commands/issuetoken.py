"""`manage.py issuetoken USERNAME [--name N] [--days D]`: print a new API token, once.

Only its SHA-256 is stored; the raw value goes to stdout alone (easy to capture in a
script), the note about it (when it expires included) to stderr. It expires after D days,
NAS_API_TOKEN_DAYS by default; --days 0: never.
"""

from __future__ import annotations

from datetime import UTC

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Issue a new API token for a user and print it (it is not stored and cannot be shown again)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the token by")
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help=f"days until it expires, 0: never (default: NAS_API_TOKEN_DAYS, now {settings.NAS_API_TOKEN_DAYS})",
        )

    def handle(self, *args, username: str, name: str, days: int | None, **kw):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no such user: {username!r} (create it with createmember)")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        if len(name) > 100:
            raise CommandError("--name: at most 100 characters")
        days = settings.NAS_API_TOKEN_DAYS if days is None else days
        if days < 0:
            raise CommandError(f"--days: 0 (never expires) or more, got {days}")
        token, raw = ApiToken.issue(user, name=name, days=days)
        if token.expires_at is None:
            expiry = "never expires"
        else:
            when = f"{token.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
            expiry = f"expires on {when} (in {days} day{'s' if days != 1 else ''})"
        self.stderr.write(
            f"token {token.prefix}… for {username}: use 'Authorization: Bearer <token>'; shown once; {expiry}"
        )
        self.stdout.write(raw)
