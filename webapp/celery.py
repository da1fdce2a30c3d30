"""The Celery app "nasnet", with the Django project as in Celery's own Django example.

Settings come from Django's (namespace CELERY_: JSON only, late acks, queue routes, beat).
The task code lives in `workers.tasks`, named here only as a string: a worker started with
`celery -A workers` loads it, while the web process, which only sends tasks by name
(webapp.dispatch), never imports it.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("nasnet", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
