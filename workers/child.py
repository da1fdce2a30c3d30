"""Training a child run (and a training job) on a gpu-queue worker.

A run is claimed with a conditional UPDATE (queued -> running, or running with an expired
lease), so two workers never train the same one; `attempt` is the claim's token: every
later write is conditional on (status running, attempt, worker) still being ours. The
reward is written once. A reporter heartbeats (extends the lease), writes per-epoch
metrics at most every few seconds, and stops training when the search is cancelled or
the run was taken away (lease expired and reclaimed).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

from nas_engine.data import DatasetSplit, load_dataset
from nas_engine.genotype import Genotype
from nas_engine.synthetic import SyntheticObjective
from nas_engine.trainer import EpochMetrics, Recipe, Reporter, train_child
from webapp.live import events as live
from webapp.searches import models as m
from workers import orchestrator

log = logging.getLogger("nasnet.worker")

WORKER = f"{socket.gethostname()}:{os.getpid()}"
STOP_STATUSES = (m.CANCELLING, m.CANCELLED, m.FAILED, m.FINISHED)
_datasets: dict[str, DatasetSplit] = {}
_objectives: dict[tuple, SyntheticObjective] = {}


def device() -> torch.device:
    # One worker process per GPU, pinned by CUDA_VISIBLE_DEVICES: it sees "cuda:0" only.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dataset_for(dataset: dict, seed: int) -> DatasetSplit:
    """The data set of a spec, loaded once per process."""
    key = json.dumps({**dataset, "seed": seed}, sort_keys=True)
    if key not in _datasets:
        _datasets[key] = load_dataset(
            dataset["name"],
            data_root=settings.NAS_DATA_ROOT,
            cache_dir=settings.NAS_CACHE_DIR,
            image_size=dataset.get("image_size"),
            subset_per_class=dataset.get("subset_per_class"),
            val_size=dataset.get("val_size"),
            seed=seed,
        )
    return _datasets[key]


def objective_for(spec) -> SyntheticObjective:
    o = spec.objective
    key = (json.dumps(spec.space.to_dict(), sort_keys=True), spec.seed, o["noise"], o["failure_rate"], o["duration_s"])
    if key not in _objectives:
        _objectives[key] = SyntheticObjective(
            spec.space, spec.seed, noise=o["noise"], failure_rate=o["failure_rate"], duration_s=o["duration_s"]
        )
    return _objectives[key]


# -- claiming and writing results ---------------------------------------------------------------
def _lease_end():
    return timezone.now() + timedelta(seconds=settings.NAS_LEASE_SECONDS)


def claim(run_id: int) -> m.ChildRun | None:
    now = timezone.now()
    claimable = m.ChildRun.objects.filter(pk=run_id).exclude(architecture__search__status__in=STOP_STATUSES)
    updated = (
        claimable.filter(status=m.RUN_QUEUED) | claimable.filter(status=m.RUN_RUNNING, lease_expires_at__lt=now)
    ).update(
        status=m.RUN_RUNNING,
        attempt=F("attempt") + 1,
        worker=WORKER,
        lease_expires_at=_lease_end(),
        heartbeat_at=now,
        started_at=now,
    )
    if not updated:
        return None
    return m.ChildRun.objects.select_related("architecture__search").get(pk=run_id)


@contextmanager
def lease_kept(ours, label: str) -> Iterator[None]:
    """Heartbeats from a thread while the worker does something long that reports no
    progress: decoding a large image folder the first time can outlast the lease, and the
    reaper would hand the run to another worker meanwhile."""
    every = min(5.0, settings.NAS_LEASE_SECONDS / 3)
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every):
                if not ours.update(heartbeat_at=timezone.now(), lease_expires_at=_lease_end()):
                    return  # no longer ours: the training that follows notices and stops
        except Exception:  # noqa: BLE001 - the lease then runs out and the run is requeued
            log.warning("%s: heartbeat while loading data failed", label, exc_info=True)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"lease {label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _ours(run: m.ChildRun):
    return m.ChildRun.objects.filter(pk=run.pk, status=m.RUN_RUNNING, attempt=run.attempt, worker=WORKER)


def finish(run: m.ChildRun, status: str, *, reward=None, error: str = "", wall_time=None, epochs=None) -> bool:
    fields = dict(status=status, reward=reward, error=error, wall_time=wall_time, finished_at=timezone.now())
    fields["lease_expires_at"] = None
    if epochs is not None:
        fields["epochs"] = epochs
    if not _ours(run).update(**fields):
        log.warning("child run %s: no longer ours (attempt %d), result dropped", run.pk, run.attempt)
        return False
    arch = run.architecture
    search_id = arch.search_id
    live.publish(search_id, *live.finished(arch.id, arch.sample_index, status, reward, wall_time))
    took = f" after {wall_time:.1f} s" if wall_time is not None else ""
    if status == m.RUN_SUCCEEDED:
        log.info("child run %s of search %s finished: reward %.4f%s", run.pk, search_id, reward, took)
    elif status == m.RUN_FAILED:
        log.warning("child run %s of search %s failed%s: %s", run.pk, search_id, took, error)
    else:
        log.info("child run %s of search %s %s%s: %s", run.pk, search_id, status, took, error)
    orchestrator.request_advance(search_id)
    return True


def retry_or_fail(run: m.ChildRun, error: str) -> None:
    if run.attempt >= settings.NAS_MAX_ATTEMPTS:
        finish(run, m.RUN_FAILED, error=f"{error} (after {run.attempt} attempts)")
        return
    requeued = _ours(run).update(status=m.RUN_QUEUED, dispatched_at=timezone.now(), lease_expires_at=None)
    if requeued:
        log.warning("child run %s failed on attempt %d (%s), queued for a retry", run.pk, run.attempt, error)
        orchestrator.send(orchestrator.TASK_TRAIN, run.pk)
    else:
        log.warning("child run %s failed on attempt %d (%s); no longer ours, not retried", run.pk, run.attempt, error)


# -- the reporter ---------------------------------------------------------------------------------
class LeaseReporter(Reporter):
    """Heartbeats, throttled epoch writes and the stop signal for one claimed row.

    `ours` selects the row only while it is still ours (running, our attempt, our worker):
    an update that touches nothing means it was taken away. With `search_id`, training
    also stops when that search is cancelled. `on_epochs(epochs)`, if given, is called
    after each epoch write (it publishes the live progress event).
    """

    def __init__(
        self,
        ours,
        label: str,
        search_id: int | None = None,
        every: float | None = None,
        on_epochs: Callable[[list[dict]], None] | None = None,
    ):
        self.ours, self.label, self.search_id, self.on_epochs = ours, label, search_id, on_epochs
        self.every = every if every is not None else min(5.0, settings.NAS_LEASE_SECONDS / 3)
        self.epochs: list[dict] = []
        self.last_beat = time.monotonic()
        self.dirty = False
        self.lost = False
        self.cancelled = False

    def on_batch(self, epoch: int, batch: int, batches: int) -> None:
        self._maybe_beat()

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics.to_dict())
        self.dirty = True
        self._maybe_beat(force=metrics.epoch == metrics.epochs)

    def should_stop(self) -> bool:
        return self.lost or self.cancelled

    def _maybe_beat(self, force: bool = False) -> None:
        if self.lost or not (force or time.monotonic() - self.last_beat >= self.every):
            return
        self.last_beat = time.monotonic()
        fields = dict(heartbeat_at=timezone.now(), lease_expires_at=_lease_end())
        wrote_epochs = self.dirty
        if self.dirty:
            fields["epochs"] = list(self.epochs)
            self.dirty = False
        if not self.ours.update(**fields):
            self.lost = True
            log.warning("%s: taken away (lease lost or search cancelled), stopping", self.label)
            return
        if wrote_epochs and self.on_epochs is not None:
            self.on_epochs(self.epochs)
        if self.search_id is not None:
            status = m.Search.objects.filter(pk=self.search_id).values_list("status", flat=True).first()
            self.cancelled = status in STOP_STATUSES


# -- the tasks' bodies --------------------------------------------------------------------------
def run_child(run_id: int) -> None:
    run = claim(run_id)
    if run is None:
        log.debug("child run %s: not claimable (taken, finished or cancelled)", run_id)
        return
    arch = run.architecture
    spec = orchestrator.search_spec(arch.search)
    genotype = Genotype.from_dict(arch.genotype)
    log.info(
        "child run %s (#%d of search %s) started on %s, attempt %d",
        run.pk,
        arch.sample_index,
        arch.search_id,
        WORKER,
        run.attempt,
    )
    start = time.perf_counter()
    try:
        if spec.objective["name"] == "synthetic":
            reward = objective_for(spec)(genotype)
            elapsed = time.perf_counter() - start
            if reward is None:
                finish(run, m.RUN_FAILED, error="synthetic failure", wall_time=elapsed)
            else:
                finish(run, m.RUN_SUCCEEDED, reward=reward, wall_time=elapsed)
            return
        reporter = LeaseReporter(
            _ours(run),
            f"child run {run.pk}",
            arch.search_id,
            on_epochs=lambda epochs: live.publish(
                arch.search_id, *live.progress(arch.id, arch.sample_index, epochs[-1])
            ),
        )
        with lease_kept(_ours(run), f"child run {run.pk}"):
            data = dataset_for(spec.dataset, spec.seed)
        result = train_child(genotype, spec.child, data, device=device(), reporter=reporter)
    except Exception as exc:
        log.exception("child run %s: training raised", run.pk)
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        retry_or_fail(run, last)
        return
    epochs = [e.to_dict() for e in result.epochs]
    if result.status == "ok":
        finish(run, m.RUN_SUCCEEDED, reward=result.reward, wall_time=result.wall_time, epochs=epochs)
    elif result.status == "diverged":
        finish(run, m.RUN_FAILED, error=f"diverged: {result.error}", wall_time=result.wall_time, epochs=epochs)
    elif not reporter.lost:  # stopped because the search is cancelling: the advance cancels it
        finish(run, m.RUN_CANCELLED, error="search cancelled", wall_time=result.wall_time, epochs=epochs)


def run_training_job(job_id: int) -> None:
    """Claim a TrainingJob, train it at its recipe, write its bundle under NAS_ARTIFACTS_ROOT."""
    from nas_engine.commands.train import save_bundle

    now = timezone.now()
    claimed = (
        m.TrainingJob.objects.filter(pk=job_id, status=m.RUN_QUEUED)
        | m.TrainingJob.objects.filter(pk=job_id, status=m.RUN_RUNNING, lease_expires_at__lt=now)
    ).update(
        status=m.RUN_RUNNING, attempt=F("attempt") + 1, worker=WORKER, lease_expires_at=_lease_end(), started_at=now
    )
    if not claimed:
        return
    job = m.TrainingJob.objects.get(pk=job_id)
    ours = m.TrainingJob.objects.filter(pk=job_id, status=m.RUN_RUNNING, attempt=job.attempt, worker=WORKER)
    log.info("training job %s started on %s, attempt %d", job_id, WORKER, job.attempt)
    _publish_job(job_id)
    try:
        genotype, recipe = Genotype.from_dict(job.genotype), Recipe.from_dict(job.recipe)
        with lease_kept(ours, f"training job {job_id}"):
            data = dataset_for(job.dataset, recipe.seed)
        reporter = LeaseReporter(ours, f"training job {job_id}", on_epochs=lambda epochs: _publish_job(job_id))
        result = train_child(genotype, recipe, data, device=device(), reporter=reporter, keep_model=True)
        if reporter.lost:
            return
        relative = Path("jobs") / str(job_id)
        if result.status == "ok":
            save_bundle(Path(settings.NAS_ARTIFACTS_ROOT) / relative, genotype, recipe, data, result)
    except Exception as exc:
        error = traceback.format_exception_only(type(exc), exc)[-1].strip()
        log.exception("training job %s failed: %s", job_id, error)
        ours.update(status=m.RUN_FAILED, error=error, finished_at=timezone.now(), lease_expires_at=None)
        _publish_job(job_id)
        return
    ok = result.status == "ok"
    ours.update(
        status=m.RUN_SUCCEEDED if ok else m.RUN_FAILED,
        reward=result.reward,
        params=result.params,
        mult_adds=result.mult_adds,
        wall_time=result.wall_time,
        epochs=[e.to_dict() for e in result.epochs],
        bundle_path=str(relative) if ok else "",
        error=result.error or "",
        finished_at=timezone.now(),
        lease_expires_at=None,
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
