"""`manage.py createmember USERNAME TEAM [--password P] [--staff] [--role owner|member]`.

Creates whatever is missing (the user, the team, the membership) and says what it did;
running it twice changes nothing the second time. `--staff` makes the user, new or
existing, a reviewer: staff, in the "reviewers" group (webapp.accounts.roles), which
lets them use Django admin without being a superuser.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from webapp.accounts.models import ROLE_CHOICES, ROLE_MEMBER, Membership, Team
from webapp.accounts.roles import REVIEWERS, sync_reviewers_group


class Command(BaseCommand):
    help = "Create a user, a team and the user's membership in it, whichever are missing."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("team")
        parser.add_argument("--password", help="set this password (a new user without one cannot log in)")
        parser.add_argument(
            "--staff",
            action="store_true",
            help="make the user a reviewer: staff (sees every team) in the reviewers group (uses the admin)",
        )
        parser.add_argument("--role", choices=[r for r, _ in ROLE_CHOICES], help="default: member")

    @transaction.atomic
    def handle(self, *args, username: str, team: str, password: str | None, staff: bool, role: str | None, **kw):
        username, team_name = username.strip(), team.strip()
        if not username or not team_name:
            raise CommandError("USERNAME and TEAM must not be empty")
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
        self.say(f"{'created' if created else 'found'} user {username}")
        if password is not None:
            user.set_password(password)
            self.say(f"set the password of {username}")
        if staff and not user.is_staff:
            user.is_staff = True
            self.say(f"made {username} staff")
        user.save()
        if staff:
            # is_staff alone grants no admin page: the group holds the permissions. It is
            # made by migrate; set up again here in case someone deleted it by hand.
            group = sync_reviewers_group()
            if user.groups.filter(pk=group.pk).exists():
                self.say(f"{username} is already staff in the {REVIEWERS} group")
            else:
                user.groups.add(group)
                self.say(f"added {username} to the {REVIEWERS} group")

        team_obj, created = Team.objects.get_or_create(name=team_name)
        self.say(f"{'created' if created else 'found'} team {team_name}")

        membership = Membership.objects.filter(user=user, team=team_obj).first()
        if membership is None:
            Membership.objects.create(user=user, team=team_obj, role=role or ROLE_MEMBER)
            self.say(f"added {username} to {team_name} as {role or ROLE_MEMBER}")
        elif role and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
            self.say(f"changed the role of {username} in {team_name} to {role}")
        else:
            self.say(f"{username} is already in {team_name} as {membership.role}")

    def say(self, line: str) -> None:
        self.stdout.write(line)
