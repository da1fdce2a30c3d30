"""The staff role "reviewers": staff who use Django admin without being superusers.

`is_staff` only lets a user log in to the admin; every page there also asks for a model
permission, so a staff user with none gets 403 everywhere. The reviewers group holds:

- the view permission of every model the admin registers (all lists and pages, read-only);
- the change permission of the models whose admin actions are the review and intervention
  tools (cancel a search, requeue its failed runs, cancel a selection or a training job):
  those actions declare `allowed_permissions=("change",)` (webapp/searches/admin.py). On a
  search or a training job this also lets a reviewer rename it, its one editable field; a
  selection has none.

and nothing else: no add or delete of teams' data (promoting an architecture adds a
training job, so reviewers cannot), no change of users, groups or memberships (a reviewer
cannot make themselves a superuser or set a password).

The group is defined here, in code, and rewritten to exactly this after every `migrate`
(webapp.accounts.apps): a permission granted to it by hand does not survive. To give
someone more, give it to them or to another group.
"""

from __future__ import annotations

from django.apps import apps as global_apps
from django.contrib import admin
from django.contrib.auth import get_permission_codename
from django.db import DEFAULT_DB_ALIAS

REVIEWERS = "reviewers"
# What the review actions check; see the module's docstring.
ACTION_PERMISSIONS = ("searches.change_search", "searches.change_selection", "searches.change_trainingjob")


def reviewer_permission_names() -> set[str]:
    """The group's permissions as "app_label.codename". Read from the admin's registry
    (filled when the apps are ready), so a model newly registered there is viewable by
    reviewers after the next `migrate` without anyone having to remember this list."""
    views = {
        f"{model._meta.app_label}.{get_permission_codename('view', model._meta)}" for model in admin.site._registry
    }
    return views | set(ACTION_PERMISSIONS)


def sync_reviewers_group(apps=global_apps, using: str = DEFAULT_DB_ALIAS):
    """Create the reviewers group if missing and set its permissions to exactly
    `reviewer_permission_names()`. The permissions must exist already (post_migrate makes
    them). `apps` is the migration state's registry when called from post_migrate."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    wanted = reviewer_permission_names()
    found = {
        f"{p.content_type.app_label}.{p.codename}": p
        for p in Permission.objects.using(using).select_related("content_type")
        if f"{p.content_type.app_label}.{p.codename}" in wanted
    }
    missing = wanted - found.keys()
    if missing:
        # Loud: a group quietly short of what the code says is worse than a failed command.
        raise RuntimeError(f"cannot set up the {REVIEWERS} group, missing permissions: {sorted(missing)}")
    group, _ = Group.objects.using(using).get_or_create(name=REVIEWERS)
    group.permissions.set(found.values())
    return group
