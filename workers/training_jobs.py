"""Running a training job (the transfer step) on a gpu-queue worker: claim it with a lease,
train the genotype at its recipe, write its bundle under NAS_ARTIFACTS_ROOT and its result.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from django.conf import settings

from nas_engine.bundle import save_bundle
from nas_engine.genotype import Genotype
from nas_engine.trainer import Recipe, train_child
from webapp.live import events as live
from webapp.searches import models as m
from workers.leases import LeaseReporter, lease_kept, worker_id
from workers.resources import dataset_for, device

log = logging.getLogger("nasnet.worker")


def run_training_job(job_id: int) -> None:
    job = m.TrainingJob.claim(job_id, worker_id())
    if job is None:
        return
    log.info("training job %s started on %s, attempt %d", job_id, job.worker, job.attempt)
    _publish_job(job_id)
    try:
        genotype, recipe = Genotype.from_dict(job.genotype), Recipe.from_dict(job.recipe)
        with lease_kept(job, f"training job {job_id}"):
            data = dataset_for(job.dataset, recipe.seed)
        reporter = LeaseReporter(job, f"training job {job_id}", on_epochs=lambda epochs: _publish_job(job_id))
        result = train_child(genotype, recipe, data, device=device(), reporter=reporter, keep_model=True)
        if reporter.lost:
            return
        relative = Path("jobs") / str(job_id)
        if result.status == "ok":
            save_bundle(Path(settings.NAS_ARTIFACTS_ROOT) / relative, genotype, recipe, data, result)
    except Exception as exc:
        error = traceback.format_exception_only(type(exc), exc)[-1].strip()
        log.exception("training job %s failed: %s", job_id, error)
        job.finish(m.RUN_FAILED, error=error)
        _publish_job(job_id)
        return
    ok = result.status == "ok"
    job.finish(
        m.RUN_SUCCEEDED if ok else m.RUN_FAILED,
        reward=result.reward,
        params=result.params,
        mult_adds=result.mult_adds,
        wall_time=result.wall_time,
        epochs=[e.to_dict() for e in result.epochs],
        bundle_path=str(relative) if ok else "",
        error=result.error or "",
    )
    if ok:
        log.info("training job %s finished: reward %.4f after %.1f s", job_id, result.reward, result.wall_time)
    else:
        log.warning("training job %s failed after %.1f s: %s", job_id, result.wall_time, result.error)
    _publish_job(job_id)


def _publish_job(job_id: int) -> None:
    """A job.progress event to the search the job's architecture came from (if any)."""
    job = m.TrainingJob.objects.select_related("architecture").filter(pk=job_id).first()
    if job is not None and job.architecture is not None:
        live.publish(job.architecture.search_id, *live.job_progress(job))
