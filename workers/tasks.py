"""Thin Celery tasks: they take ids and hand over to the module that owns the concept.

Names and routing live in webapp.dispatch and settings.CELERY_TASK_ROUTES: train_child,
run_training_job and train_selection_run go to the `gpu` queue, everything else to `controller`. Tasks are
acknowledged late and rejected on worker loss; the database rows, not the broker, say what
is left to do.
"""

from __future__ import annotations

from celery import signals

from webapp import dispatch
from webapp.celery import app
from workers import advance, child_runs, fleet, reaper, selection_runs, training_jobs

# fleet's signal handlers (the staff workers page) are connected by importing it.
__all__ = ("advance_search", "train_child", "reap", "run_training_job", "train_selection_run", "fleet")


@signals.task_prerun.connect
def _drop_broken_connections(**kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()


@app.task(name=dispatch.TASK_ADVANCE)
def advance_search(search_id: int) -> None:
    advance.advance(search_id)


@app.task(name=dispatch.TASK_TRAIN_CHILD)
def train_child(child_run_id: int) -> None:
    child_runs.run_child(child_run_id)


@app.task(name=dispatch.TASK_REAP)
def reap() -> dict:
    return reaper.reap()


@app.task(name=dispatch.TASK_TRAIN_JOB)
def run_training_job(job_id: int) -> None:
    training_jobs.run_training_job(job_id)


@app.task(name=dispatch.TASK_TRAIN_SELECTION)
def train_selection_run(run_id: int) -> None:
    selection_runs.run_selection_run(run_id)
