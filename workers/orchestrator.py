"""The search loop across processes: `advance(search_id)` and the periodic `reap()`.

advance, serialized per search by a row lock (SELECT ... FOR UPDATE on the Search):
- cancelling: active child runs -> cancelled, the search -> cancelled. Workers training
  one of them notice (their run is no longer theirs) and stop.
- paused: nothing (running children finish and write their results; nobody tells them).
- queued / running: restore the strategy from `Search.checkpoint` (or build it from the
  spec), tell it every finished, untold architecture in sample_index order (reward ->
  tell, failure -> tell_failure), ask for as many proposals as there are free parallel
  slots and budget left, write Architecture + ChildRun rows in bulk (a duplicate of an
  architecture that already has a reward is `reused` and told at once, when the spec
  asks for it; failures are never reused), save the checkpoint and the counters in the
  same transaction, and after commit dispatch `train_child` for each new run.
  Budget spent and everything told -> finished. Any unexpected error -> failed, with
  the error text in `Search.error`.

Live events (webapp.live): each advance writes its events (architectures sampled, reused
children finished, controller updates, the search status and counters) in one bulk insert
in its transaction; they reach the websocket clients after commit.

Counters: `children_done` counts every told child (trained, reused or failed), as
nas_engine.search does; `children_failed` and `children_reused` are the parts of it.

reap (beat): expired leases -> queued again (or failed after NAS_MAX_ATTEMPTS), queued
runs whose message was lost -> dispatched again (once the gpu queue has drained), stalled
searches -> advanced again, training jobs with an expired lease -> queued again.

Throughput: a finished child asks for an advance through a Redis flag, so one waiting
advance serves every result that arrived meanwhile; the advance tells them all in one
pass and writes rows in bulk (about seven queries per advance), and the controller keeps
the strategy it committed in memory to skip deserialising the checkpoint.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from nas_engine.genotype import Genotype
from nas_engine.spec import Limits, SearchSpec, validate_spec
from nas_engine.strategies import Strategy, restore_into
from nas_engine.strategies.base import checkpoint_bytes, parse_checkpoint
from webapp.live import events as live
from webapp.searches import models as m
from workers import fleet
from workers.celery import app

log = logging.getLogger("nasnet.worker")

TASK_ADVANCE = "workers.tasks.advance_search"
TASK_TRAIN = "workers.tasks.train_child"
TASK_TRAIN_JOB = "workers.tasks.run_training_job"
RUN_FINISHED = (m.RUN_SUCCEEDED, m.RUN_FAILED, m.RUN_REUSED)
# A stored spec was validated at submission; quotas changed since must not break it.
_NO_LIMITS = Limits(max_children=10**9, max_parallel=10**6)
_specs: dict[tuple[int, str], SearchSpec] = {}
# The strategy this process last committed per search, with the version it committed: a
# controller advancing the same search again skips deserialising the checkpoint.
_strategies: dict[int, tuple[tuple, Strategy]] = {}


# -- dispatch ---------------------------------------------------------------------------------
def ensure_routes() -> None:
    """(Re)declare the queues and their bindings: an emptied Redis loses the bindings too,
    and a publish to an exchange without them fails ("Table empty")."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in ("controller", "gpu"):
            app.amqp.queues[name](channel).declare()


def queue_length(name: str) -> int:
    """Messages waiting in a queue (0 when the broker cannot say)."""
    try:
        with app.connection_for_read() as conn:
            return conn.default_channel.queue_declare(queue=name, passive=True).message_count
    except Exception:  # noqa: BLE001 - a missing queue or a broker without counts
        return 0


def send(name: str, *args) -> None:
    try:
        app.send_task(name, args=list(args), retry=False)
    except Exception:  # noqa: BLE001 - broker hiccup or lost bindings: repair, retry once
        log.warning("publishing %s%s failed; redeclaring the queues and retrying", name, args)
        ensure_routes()
        app.send_task(name, args=list(args))


def send_on_commit(name: str, *args) -> None:
    transaction.on_commit(lambda: send(name, *args))


# Every finished child asks for an advance; one waiting advance serves them all. A Redis
# flag (SET NX, cleared when the advance starts reading) coalesces the requests, so the
# controller queue does not fill with no-op advances. Without Redis: always send. A flag
# whose message was lost expires; the reaper re-kicks searches that stall meanwhile.
PENDING_KEY = "nasnet:advance-pending:%s"
PENDING_TTL = 60
_flags: dict[str, object] = {}


def _flag_client():
    url = app.conf.broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return None
    if url not in _flags:
        import redis

        _flags[url] = redis.Redis.from_url(url, socket_timeout=5)
    return _flags[url]


def request_advance(search_id: int) -> None:
    client = _flag_client()
    try:
        if client is not None and not client.set(PENDING_KEY % search_id, 1, nx=True, ex=PENDING_TTL):
            return  # an advance is already waiting: it will see this result
    except Exception:  # noqa: BLE001 - no flag, no harm: send anyway
        log.warning("advance flag for search %s unavailable; sending anyway", search_id, exc_info=True)
    send(TASK_ADVANCE, search_id)


def _clear_request(search_id: int) -> None:
    client = _flag_client()
    try:
        if client is not None:
            client.delete(PENDING_KEY % search_id)
    except Exception:  # noqa: BLE001 - the flag expires on its own
        log.warning("could not clear the advance flag of search %s", search_id, exc_info=True)


# -- strategy checkpoints as bytes (nas_engine.strategies.base.checkpoint_bytes) ------------
def strategy_to_bytes(strategy: Strategy) -> bytes:
    return checkpoint_bytes(strategy)


def strategy_from_bytes(data: bytes, spec: SearchSpec) -> Strategy:
    payload = parse_checkpoint(data, "search checkpoint")
    strategy = spec.make_strategy()
    restore_into(strategy, payload)
    return strategy


def search_spec(search: m.Search) -> SearchSpec:
    key = (search.id, json.dumps(search.spec, sort_keys=True))
    if key not in _specs:
        if len(_specs) > 256:
            _specs.clear()
        _specs[key] = validate_spec(search.spec, data_root=settings.NAS_DATA_ROOT, limits=_NO_LIMITS)
    return _specs[key]


def load_strategy(search: m.Search) -> Strategy:
    spec = search_spec(search)
    if search.checkpoint_at is not None:
        return strategy_from_bytes(search.checkpoint, spec)
    return spec.make_strategy()


# -- advance ----------------------------------------------------------------------------------
def advance(search_id: int) -> None:
    _clear_request(search_id)  # before reading: a result written from now on asks again
    try:
        with transaction.atomic():
            search = m.Search.objects.select_for_update().defer("checkpoint").filter(pk=search_id).first()
            if search is None:
                log.info("advance: search %s no longer exists", search_id)
                return
            if search.status == m.CANCELLING:
                _cancel(search)
            elif search.status in m.SEARCH_ADVANCING:
                _step(search)
    except Exception as exc:
        log.exception("search %s failed while advancing", search_id)
        _fail(search_id, f"{type(exc).__name__}: {exc}")


def _fail(search_id: int, error: str) -> None:
    with transaction.atomic():
        search = m.Search.objects.select_for_update().filter(pk=search_id).first()
        if search is None or search.is_done:
            return
        m.ChildRun.objects.filter(architecture__search_id=search_id, status__in=m.RUN_ACTIVE).update(
            status=m.RUN_CANCELLED, finished_at=timezone.now(), error="search failed", lease_expires_at=None
        )
        _set_status(search, m.FAILED, error=error[:10000])
        live.publish_many(search.id, [live.status(search)])


def _set_status(search: m.Search, status: str, **fields) -> None:
    old = search.status
    search.status = status
    for key, value in fields.items():
        setattr(search, key, value)
    if status in m.SEARCH_DONE:
        search.finished_at = timezone.now()
    search.save(update_fields=["status", "finished_at", "updated_at", *fields])
    log.info("search %s: %s -> %s", search.id, old, status)


def _cancel(search: m.Search) -> None:
    stopped = m.ChildRun.objects.filter(architecture__search=search, status__in=m.RUN_ACTIVE).update(
        status=m.RUN_CANCELLED, finished_at=timezone.now(), lease_expires_at=None, error="search cancelled"
    )
    log.info("search %s: %d active child runs cancelled", search.id, stopped)
    _set_status(search, m.CANCELLED)
    live.publish_many(search.id, [live.status(search)])


def _step(search: m.Search) -> None:
    spec = search_spec(search)
    untold = _untold_runs(search)
    finished = [row for row in untold if row[2] in RUN_FINISHED]
    active = sum(row[2] in m.RUN_ACTIVE for row in untold)
    free = min(spec.parallel - active, search.children_total - search.children_sampled)
    if search.status == m.RUNNING and search.checkpoint_at and not finished and free <= 0:
        return  # a repeated kick: nothing arrived, no slot is free
    events: list[tuple[str, dict]] = []  # live events of this advance, written in one go
    old_status = search.status
    cached = _strategies.pop(search.id, None)
    strategy = cached[1] if cached and cached[0] == _version(search) else load_strategy(search)
    if search.status == m.QUEUED:
        search.started_at = search.started_at or timezone.now()
        _set_status(search, m.RUNNING, started_at=search.started_at)
    _tell(search, strategy, finished, events)
    to_dispatch: list[int] = []
    while free > 0:  # asking again while duplicates are reused (told at once) frees slots
        new_runs, reused = _sample(search, spec, strategy, free, events)
        to_dispatch += new_runs
        active += len(new_runs)
        if not reused:
            break
        free = min(spec.parallel - active, search.children_total - search.children_sampled)
    search.checkpoint = strategy_to_bytes(strategy)
    search.checkpoint_at = timezone.now()
    if search.children_sampled >= search.children_total and not strategy.pending():
        search.status = m.FINISHED
        search.finished_at = timezone.now()
        log.info("search %s: running -> finished (best reward %s)", search.id, search.best_reward)
    search.save()
    if events or search.status != old_status:
        events.append(live.status(search))
    live.publish_many(search.id, events)
    version = _version(search)
    transaction.on_commit(lambda: _strategies.__setitem__(search.id, (version, strategy)))
    for run_id in to_dispatch:
        send_on_commit(TASK_TRAIN, run_id)


def _version(search: m.Search) -> tuple:
    return (search.checkpoint_at, search.children_sampled, search.children_done, search.status)


def _record(search: m.Search, arch_id: int, status: str, reward: float | None) -> None:
    search.children_done += 1
    search.children_failed += status == m.RUN_FAILED
    search.children_reused += status == m.RUN_REUSED
    if reward is not None and (search.best_reward is None or reward > search.best_reward):
        search.best_reward, search.best_architecture_id = reward, arch_id


def _untold_runs(search: m.Search) -> list[tuple]:
    """(architecture id, sample index, run status, reward) of the children not yet told:
    the active ones and those whose result waits to be told."""
    return list(
        m.ChildRun.objects.filter(architecture__search=search, architecture__told=False)
        .order_by("architecture__sample_index")
        .values_list("architecture_id", "architecture__sample_index", "status", "reward")
    )


def _tell(search: m.Search, strategy: Strategy, rows: list[tuple], events: list) -> None:
    """Tell the strategy, in sample_index order; mark the architectures told."""
    if not rows:
        return
    for arch_id, index, status, reward in rows:
        if status == m.RUN_FAILED or reward is None:
            stats = strategy.tell_failure(index)
            _record(search, arch_id, m.RUN_FAILED, None)
        else:
            stats = strategy.tell(index, reward)
            _record(search, arch_id, status, reward)
        if stats is not None:
            events.append(live.controller(stats, index))
    run_reward = m.ChildRun.objects.filter(architecture_id=OuterRef("pk")).values("reward")[:1]
    m.Architecture.objects.filter(id__in=[r[0] for r in rows]).update(told=True, reward=Subquery(run_reward))


def _sample(search: m.Search, spec: SearchSpec, strategy: Strategy, n: int, events: list) -> tuple[list[int], bool]:
    """Ask for n proposals and write their rows; returns (run ids to dispatch, any reused)."""
    proposals = strategy.ask(n)
    hashes = [p.genotype.canonical_hash() for p in proposals]
    known: dict[str, float] = {}
    if spec.reuse_duplicates:
        known = dict(
            m.Architecture.objects.filter(search=search, canonical_hash__in=hashes, reward__isnull=False)
            .order_by("sample_index")
            .values_list("canonical_hash", "reward")
        )
    counts = _counts(spec, [p.genotype for p in proposals])
    now = timezone.now()
    archs = [
        m.Architecture(
            search=search,
            sample_index=p.id,
            genotype=p.genotype.to_dict(),
            canonical_hash=h,
            params=c[0],
            mult_adds=c[1],
            reward=known.get(h),
            told=h in known,
        )
        for p, h, c in zip(proposals, hashes, counts)
    ]
    m.Architecture.objects.bulk_create(archs)
    runs = []
    for p, arch in zip(proposals, archs):
        events.append(live.sampled(arch))
        reward = known.get(arch.canonical_hash)
        if reward is not None:
            stats = strategy.tell(p.id, reward)
            _record(search, arch.id, m.RUN_REUSED, reward)
            events.append(live.finished(arch.id, p.id, m.RUN_REUSED, reward))
            if stats is not None:
                events.append(live.controller(stats, p.id))
            runs.append(m.ChildRun(architecture=arch, status=m.RUN_REUSED, reward=reward, finished_at=now))
        else:
            runs.append(m.ChildRun(architecture=arch, status=m.RUN_QUEUED, dispatched_at=now))
    m.ChildRun.objects.bulk_create(runs)
    search.children_sampled += len(proposals)
    reused = sum(r.status == m.RUN_REUSED for r in runs)
    log.info("search %s: sampled %d children (%d reused)", search.id, len(proposals), reused)
    return [r.id for r in runs if r.status == m.RUN_QUEUED], reused > 0


def _counts(spec: SearchSpec, genotypes: list[Genotype]) -> list[tuple[int | None, int | None]]:
    """params and mult-adds, for real children only (the synthetic objective has none)."""
    if spec.objective["name"] != "accuracy":
        return [(None, None)] * len(genotypes)
    from nas_engine.counting import describe
    from workers.child import dataset_for

    macro = spec.child.macro_config(dataset_for(spec.dataset, spec.seed))
    out = []
    for genotype in genotypes:
        counts = describe(genotype, macro)
        out.append((counts.params, counts.mult_adds))
    return out


# -- reap -------------------------------------------------------------------------------------
def reap() -> dict:
    """Requeue expired leases, re-dispatch lost messages, re-kick stalled searches."""
    ensure_routes()
    now = timezone.now()
    lease = timedelta(seconds=settings.NAS_LEASE_SECONDS)
    requeued, failed, redispatched, kicked = [], [], [], set()
    given_up: list[m.Architecture] = []
    with transaction.atomic():
        expired = m.ChildRun.objects.select_for_update(skip_locked=True).filter(
            status=m.RUN_RUNNING, lease_expires_at__lt=now
        )
        for run in expired.select_related("architecture"):
            if run.attempt < settings.NAS_MAX_ATTEMPTS:
                run.status, run.dispatched_at, run.lease_expires_at = m.RUN_QUEUED, now, None
                requeued.append(run.id)
                log.warning(
                    "child run %s: lease expired (worker %s, attempt %d), requeued", run.id, run.worker, run.attempt
                )
            else:
                run.status, run.finished_at, run.lease_expires_at = m.RUN_FAILED, now, None
                run.error = f"lease expired after {run.attempt} attempts"
                failed.append(run.id)
                kicked.add(run.architecture.search_id)
                given_up.append(run.architecture)
                log.warning("child run %s failed: %s", run.id, run.error)
            run.save(update_fields=["status", "dispatched_at", "lease_expires_at", "finished_at", "error"])
        lost = m.ChildRun.objects.select_for_update(skip_locked=True).filter(
            Q(dispatched_at__lt=now - lease) | Q(dispatched_at__isnull=True),
            status=m.RUN_QUEUED,
            architecture__search__status__in=(m.QUEUED, m.RUNNING, m.PAUSED),
        )
        # While the gpu queue still holds messages, a run may just be waiting its turn:
        # re-dispatch once it has drained (an emptied Redis has an empty queue).
        redispatched = list(lost.values_list("id", flat=True)) if queue_length("gpu") == 0 else []
        m.ChildRun.objects.filter(id__in=redispatched).update(dispatched_at=now)
        jobs = _reap_jobs(now)
        active = m.ChildRun.objects.filter(architecture__search=OuterRef("pk"), status__in=m.RUN_ACTIVE)
        stalled = (
            m.Search.objects.annotate(has_active=Exists(active))
            .filter(Q(status__in=(m.QUEUED, m.CANCELLING)) | Q(status=m.RUNNING, has_active=False))
            .values_list("id", flat=True)
        )
        kicked.update(stalled)
        for run_id in requeued + redispatched:
            send_on_commit(TASK_TRAIN, run_id)
        for search_id in sorted(kicked):
            send_on_commit(TASK_ADVANCE, search_id)
        for job_id in jobs:
            send_on_commit(TASK_TRAIN_JOB, job_id)
    # After the transaction: publishing locks the Search row, which an advance may hold
    # while it waits for the child runs locked above.
    for arch in given_up:
        live.publish(arch.search_id, *live.finished(arch.id, arch.sample_index, m.RUN_FAILED))
    if redispatched:
        log.warning("child runs %s: never claimed within the lease, dispatched again", redispatched)
    return {
        "requeued": requeued,
        "failed": failed,
        "redispatched": redispatched,
        "kicked": sorted(kicked),
        "jobs_requeued": jobs,
        "workers_lost": fleet.mark_lost_workers(),
    }


def _reap_jobs(now) -> list[int]:
    """Training jobs whose lease expired: queued again, or failed after NAS_MAX_ATTEMPTS."""
    expired = m.TrainingJob.objects.select_for_update(skip_locked=True).filter(
        status=m.RUN_RUNNING, lease_expires_at__lt=now
    )
    requeued = []
    for job in expired:
        if job.attempt < settings.NAS_MAX_ATTEMPTS:
            job.status, job.lease_expires_at = m.RUN_QUEUED, None
            requeued.append(job.id)
            log.warning("training job %s: lease expired (attempt %d), requeued", job.id, job.attempt)
        else:
            job.status, job.finished_at, job.lease_expires_at = m.RUN_FAILED, now, None
            job.error = f"lease expired after {job.attempt} attempts"
            log.warning("training job %s failed: %s", job.id, job.error)
        job.save(update_fields=["status", "lease_expires_at", "finished_at", "error"])
    return requeued
