"""Thin Celery tasks: they take ids and hand over to the orchestrator or the child runner.

Routing (settings.CELERY_TASK_ROUTES): train_child and run_training_job go to the `gpu`
queue, everything else to `controller`. Tasks are acknowledged late and rejected on
worker loss; the database rows, not the broker, say what is left to do.
"""

from __future__ import annotations

from workers import child, orchestrator
from workers.celery import app


@app.task(name="workers.tasks.advance_search")
def advance_search(search_id: int) -> None:
    orchestrator.advance(search_id)


@app.task(name="workers.tasks.train_child")
def train_child(child_run_id: int) -> None:
    child.run_child(child_run_id)


@app.task(name="workers.tasks.reap")
def reap() -> dict:
    return orchestrator.reap()


@app.task(name="workers.tasks.run_training_job")
def run_training_job(job_id: int) -> None:
    child.run_training_job(job_id)
