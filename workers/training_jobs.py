"""Running a training job (the transfer step) on a gpu-queue worker: claim it with a lease,
train the genotype at its recipe, write its bundle under NAS_ARTIFACTS_ROOT and its result.

A job checkpoints after every epoch (NAS_ARTIFACTS_ROOT/checkpoints/job-<id>.pt). When its
lease is lost (a worker killed, a node gone) the reaper queues it again and the next claim
continues after the last finished epoch instead of from zero; the row's
`resumed_from_epoch` says where. The checkpoint is removed once the job has a final status.
The job reports validation accuracy (its reward) and, where the data set has a test split,
the test accuracy, scored once after the last epoch. A job submitted with a size budget
is fitted here, once the data set's real shape is known: the widest N and F within the
budget (nas_engine.transfer.fit_recipe), recorded on the row before training starts.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from django.conf import settings

from nas_engine.bundle import save_bundle
from nas_engine.genotype import Genotype
from nas_engine.limits import check_cost, training_cost
from nas_engine.trainer import Recipe, train_child
from nas_engine.transfer import fit_recipe, penultimate_filters
from webapp.live import events as live
from webapp.searches import models as m
from webapp.searches import services
from workers.leases import LeaseReporter, lease_kept, worker_id
from workers.resources import checkpoint_path, dataset_for, device

log = logging.getLogger("nasnet.worker")


def run_training_job(job_id: int) -> None:
    job = m.TrainingJob.claim(job_id, worker_id())
    if job is None:
        return
    log.info("training job %s started on %s, attempt %d", job_id, job.worker, job.attempt)
    _publish_job(job_id)
    try:
        genotype, recipe = Genotype.from_dict(job.genotype), Recipe.from_dict(job.recipe)
        label = f"training job {job_id}"
        # Heartbeats from a thread through every phase, not only per batch: loading the data,
        # building a large network, reading a checkpoint, scoring a 10,000-image test split
        # and writing the bundle each report no progress and may outlast the lease.
        with lease_kept(job, label):
            data = dataset_for(job.dataset, recipe.seed)
            recipe = _fit_to_budget(job, genotype, recipe, data)
            reporter = LeaseReporter(job, label, on_epochs=lambda epochs: _publish_job(job_id))
            checkpoint = checkpoint_path("job", job_id)
            result = train_child(
                genotype,
                recipe,
                data,
                device=device(),
                reporter=reporter,
                keep_model=True,
                test=True,
                checkpoint=checkpoint,
            )
            if reporter.lost:
                # No longer ours: whoever claims it next resumes from the checkpoint, unless
                # it was cancelled, when nobody will.
                if not m.TrainingJob.objects.filter(pk=job_id, status__in=m.RUN_ACTIVE).exists():
                    checkpoint.unlink(missing_ok=True)
                    log.info("training job %s stopped: %s", job_id, "cancelled")
                return
            relative = Path("jobs") / str(job_id)
            if result.status == "ok":
                save_bundle(Path(settings.NAS_ARTIFACTS_ROOT) / relative, genotype, recipe, data, result)
    except Exception as exc:
        error = traceback.format_exception_only(type(exc), exc)[-1].strip()
        log.exception("training job %s failed: %s", job_id, error)
        if job.finish(m.RUN_FAILED, error=error):
            checkpoint_path("job", job_id).unlink(missing_ok=True)
        _publish_job(job_id)
        return
    ok = result.status == "ok"
    finished = job.finish(
        m.RUN_SUCCEEDED if ok else m.RUN_FAILED,
        reward=result.reward,
        test_acc=result.test_acc,
        test_source=data.test_source[:200] if result.test_acc is not None else "",
        resumed_from_epoch=result.resumed_from_epoch,
        params=result.params,
        mult_adds=result.mult_adds,
        wall_time=result.wall_time,
        epochs=[e.to_dict() for e in result.epochs],
        bundle_path=str(relative) if ok else "",
        error=result.error or "",
    )
    if finished:
        checkpoint.unlink(missing_ok=True)
    if ok:
        log.info(
            "training job %s finished: val acc %s, test acc %s after %.1f s%s",
            job_id,
            _acc(result.reward),
            _acc(result.test_acc),
            result.wall_time,
            f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else "",
        )
    else:
        log.warning("training job %s failed after %.1f s: %s", job_id, result.wall_time, result.error)
    _publish_job(job_id)


def _fit_to_budget(job: m.TrainingJob, genotype: Genotype, recipe: Recipe, data) -> Recipe:
    """With a budget, the recipe at the widest N and F within it on this data set (now that
    its real shape is known), recorded on the row once: a resumed job keeps that fit, so
    its checkpoint still matches. Without a budget, the recipe as submitted."""
    budget = job.budget or {}
    if not budget or budget.get("fitted"):
        return recipe
    limits = {key: budget[key] for key in ("max_params", "max_mult_adds") if budget.get(key) is not None}
    fitted, counts = fit_recipe(genotype, recipe, data, limits, budget.get("repeats"))
    # The submission checked the recipe it was given; the budget chose the width since.
    deployment = services.limits()
    deployment.check_recipe(fitted, "recipe")
    images = len(data.train_labels)
    cost = training_cost(counts.mult_adds, images, fitted.epochs)
    check_cost(deployment, "max_job_cost", cost, "recipe", fitted, images)
    n_at_p = f"{fitted.repeats}@{penultimate_filters(genotype, fitted.filters)}"
    record = {
        "repeats": fitted.repeats,
        "filters": fitted.filters,
        "n_at_p": n_at_p,
        "params": counts.params,
        "mult_adds": counts.mult_adds,
    }
    job.budget = {**budget, "fitted": record}
    job.recipe = fitted.to_dict()
    job.heartbeat(recipe=job.recipe, budget=job.budget)
    log.info("training job %s: fitted to its budget at %s (F=%d)", job.id, n_at_p, fitted.filters)
    _publish_job(job.id)
    return fitted


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _publish_job(job_id: int) -> None:
    """A job.progress event to the search the job's architecture came from (if any)."""
    job = m.TrainingJob.objects.select_related("architecture", "owner").filter(pk=job_id).first()
    if job is not None and job.architecture is not None:
        live.publish(job.architecture.search_id, *live.job_progress(job))
