"""The Celery app "nasnet": settings from Django (namespace CELERY_), tasks in workers.tasks.

celery -A workers worker -Q controller      # or: python -m workers all
"""

from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
# Workers are long-lived and run a few queries per task: keep their database connections
# (a new PostgreSQL connection per task costs more than a synthetic child). 0 opts out.
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "600")

app = Celery("nasnet", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes the connection after every task unless told to reuse it.
# Reuse it; `close_old_connections` before each task still drops a broken or expired one.
app.conf["CELERY_DB_REUSE_MAX"] = int(os.environ.get("NAS_WORKER_DB_REUSE_MAX", "1000"))


@signals.task_prerun.connect
def _drop_broken_connections(**kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()


from workers import fleet  # noqa: E402,F401 - the Worker rows of the staff workers page (signal handlers)
