"""`manage.py issuetoken USERNAME [--name N]`: print a new API token, once.

Only its SHA-256 is stored; the raw value goes to stdout alone (easy to capture in a
script), the note about it to stderr.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Issue a new API token for a user and print it (it is not stored and cannot be shown again)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the token by")

    def handle(self, *args, username: str, name: str, **kw):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no such user: {username!r} (create it with createmember)")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        if len(name) > 100:
            raise CommandError("--name: at most 100 characters")
        token, raw = ApiToken.issue(user, name=name)
        self.stderr.write(f"token {token.prefix}… for {username}: use 'Authorization: Bearer <token>'; shown once")
        self.stdout.write(raw)
