"""The workers: Celery tasks that train children and drive searches, the glue between the
database rows (webapp) and nas_engine (ARCHITECTURE.md).

`celery -A workers worker ...` (or `python -m workers all`) loads the app from here. The app
itself belongs to the Django project (webapp/celery.py), which names the task module
`workers.tasks` by string only: the web app sends tasks by name and never imports this package.
"""

import os

# Workers are long-lived and run a few queries per task: keep their database connections
# (a new PostgreSQL connection per task costs more than a synthetic child). 0 opts out.
# Set before Django reads its settings, and only in worker processes: the web server keeps 0.
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "600")

from webapp.celery import app  # noqa: E402 - after the environment default above

# Celery's Django fixup closes the connection after every task unless told to reuse it.
# Reuse it; `close_old_connections` before each task (workers.tasks) still drops a broken one.
app.conf["CELERY_DB_REUSE_MAX"] = int(os.environ.get("NAS_WORKER_DB_REUSE_MAX", "1000"))

__all__ = ("app",)
