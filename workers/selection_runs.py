"""Training one run of a selection (an architecture with one seed) on a gpu-queue worker,
and ending the selection when its last run ends.

Same durability as a child run (webapp.searches.models.LeasedWork): claimed with a lease,
heartbeats through every phase, a result written only while the run is still this claim's,
so a run taken from a dead or slow worker is trained again and still written exactly once
per architecture and seed; a requeued run continues from its last epoch's checkpoint
(NAS_ARTIFACTS_ROOT/checkpoints/selection-run-<id>.pt). The data split is the search's own (its seed), the training
seed is the run's; rewards are validation accuracy, and the test split is never loaded for
a decision.
"""

from __future__ import annotations

import logging
import time
import traceback

from django.db import transaction
from django.utils import timezone

from nas_engine.genotype import Genotype
from nas_engine.trainer import Recipe, train_child
from webapp import dispatch
from webapp.live import events as live
from webapp.searches import models as m
from workers.leases import LeaseReporter, lease_kept, retry_or_fail, worker_id
from workers.resources import checkpoint_path, dataset_for, device, objective_for

log = logging.getLogger("nasnet.worker")


def run_selection_run(run_id: int) -> None:
    run = m.SelectionRun.claim(run_id, worker_id())
    if run is None:
        log.debug("selection run %s: not claimable (taken, finished or cancelled)", run_id)
        return
    selection, arch = run.selection, run.architecture
    spec = selection.search.parsed_spec
    label = f"selection run {run.pk} (#{arch.sample_index}, seed {run.seed})"
    log.info("%s of selection %s started on %s, attempt %d", label, selection.id, run.worker, run.attempt)
    m.Selection.objects.filter(pk=selection.pk, status=m.RUN_QUEUED).update(status=m.RUN_RUNNING)
    genotype = Genotype.from_dict(arch.genotype)
    start = time.perf_counter()
    try:
        if spec.objective["name"] == "synthetic":
            # Another seed is another draw of the objective's noise (draw 0 was the search's).
            reward = objective_for(spec).draw(genotype, run.seed + 1)
            status = m.RUN_SUCCEEDED if reward is not None else m.RUN_FAILED
            _finish(run, status, reward=reward, wall_time=time.perf_counter() - start, error="synthetic failure")
            return
        recipe = Recipe.from_dict({**selection.recipe, "seed": run.seed})
        with lease_kept(run, label):
            data = dataset_for(spec.dataset, spec.seed)
            reporter = LeaseReporter(run, label)
            result = train_child(
                genotype,
                recipe,
                data,
                device=device(),
                reporter=reporter,
                checkpoint=checkpoint_path("selection-run", run.pk),
            )
    except Exception as exc:
        log.exception("%s: training raised", label)
        error = traceback.format_exception_only(type(exc), exc)[-1].strip()
        retry_or_fail(
            run, label, error, dispatch.TASK_TRAIN_SELECTION, lambda why: _finish(run, m.RUN_FAILED, error=why)
        )
        return
    if reporter.lost:
        return  # taken away or cancelled: whoever holds it now writes the result
    epochs = [e.to_dict() for e in result.epochs]
    if result.status == "ok":
        _finish(run, m.RUN_SUCCEEDED, reward=result.reward, wall_time=result.wall_time, epochs=epochs)
    else:
        _finish(run, m.RUN_FAILED, wall_time=result.wall_time, epochs=epochs, error=result.error or result.status)


def _finish(run: m.SelectionRun, status: str, *, reward=None, wall_time=None, epochs=None, error="") -> None:
    fields = {"reward": reward if status == m.RUN_SUCCEEDED else None, "wall_time": wall_time}
    fields["error"] = "" if status == m.RUN_SUCCEEDED else error
    if epochs is not None:
        fields["epochs"] = epochs
    if not run.finish(status, **fields):
        log.warning("selection run %s: no longer ours (attempt %d), result dropped", run.pk, run.attempt)
        return
    checkpoint_path("selection-run", run.pk).unlink(missing_ok=True)
    if status == m.RUN_SUCCEEDED:
        log.info("selection run %s finished: reward %.4f", run.pk, reward)
    else:
        log.warning("selection run %s failed: %s", run.pk, error)
    settle(run.selection_id)


def settle(selection_id: int) -> None:
    """Publish the selection's ranking so far; when no run is left to do, end it: the
    winner (best mean validation accuracy), the pooled spread over seeds, and for a noise
    floor the search's `noise_floor`. Serialized on the Selection row, so two workers that
    end the last two runs at once settle it once."""
    with transaction.atomic():
        selection = m.Selection.objects.select_for_update().filter(pk=selection_id).first()
        if selection is None:
            return
        events = []
        if selection.status in m.RUN_ACTIVE and not selection.runs.filter(status__in=m.RUN_ACTIVE).exists():
            ranking = selection.ranking()
            scored = [row for row in ranking if row["mean"] is not None]
            selection.noise_std = selection.pooled_std(ranking)
            selection.winner_id = scored[0]["architecture"] if scored and selection.kind == m.SELECTION_TOP_K else None
            selection.status = m.RUN_SUCCEEDED if scored else m.RUN_FAILED
            selection.error = "" if scored else "no run of this selection succeeded"
            selection.finished_at = timezone.now()
            selection.save(update_fields=["noise_std", "winner", "status", "error", "finished_at"])
            if selection.kind == m.SELECTION_NOISE_FLOOR and selection.noise_std is not None:
                m.Search.objects.filter(pk=selection.search_id).update(noise_floor=selection.noise_std)
                search = m.Search.objects.select_related("owner").get(pk=selection.search_id)
                events.append(live.status(search))  # the reward chart draws the floor
            log.info(
                "selection %s of search %s %s: winner %s, spread over seeds %s",
                selection.id,
                selection.search_id,
                selection.status,
                selection.winner_id,
                selection.noise_std,
            )
        live.publish_many(selection.search_id, [live.selection_progress(selection), *events])
