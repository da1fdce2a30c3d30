from django.apps import AppConfig
from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, router
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "webapp.accounts"
    label = "accounts"
    verbose_name = "Teams and access"

    def ready(self) -> None:
        # The reviewers group (webapp.accounts.roles) is set up after every migrate, not
        # in a data migration: permissions are made by post_migrate, after all migrations
        # ran, so a data migration would have to make them itself, would see the models
        # only as they were when it was written, and would run once; this handler runs
        # on every migrate (a fresh database included) and sees the current models.
        post_migrate.connect(sync_reviewers, sender=self, dispatch_uid="accounts.sync_reviewers")


def sync_reviewers(sender, using=DEFAULT_DB_ALIAS, apps=global_apps, **kwargs) -> None:
    from django.contrib.auth.management import create_permissions

    from webapp.accounts.roles import sync_reviewers_group

    try:
        Group = apps.get_model("auth", "Group")
    except LookupError:  # auth not migrated on this database
        return
    if not router.allow_migrate_model(using, Group):
        return
    # post_migrate goes app by app in INSTALLED_APPS order, and accounts comes before
    # searches, live and fleet: their permissions do not exist yet. Make them now, the
    # way auth does later (idempotent, nothing is made twice).
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using, apps=apps)
    sync_reviewers_group(apps=apps, using=using)
