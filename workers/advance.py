"""Advancing a search: `advance(search_id)`, the one place where a strategy is told results
and asked for children.

Serialized per search by a row lock (SELECT ... FOR UPDATE on the Search):
- cancelling: active child runs -> cancelled, the search -> cancelled. Workers training
  one of them notice (their run is no longer theirs) and stop.
- paused: nothing (running children finish and write their results; nobody tells them).
- queued / running: restore the strategy from its checkpoint (workers/strategy_store: in
  pieces, only the changed ones written) or build it from the spec, tell it every
  finished, untold architecture in sample_index order (reward -> tell, failure ->
  tell_failure; a result whose child.finished event is missing gets it), ask for as
  many proposals as there are free parallel slots and budget left, write Architecture +
  ChildRun rows in bulk (a duplicate of an architecture that already has a reward is
  `reused` and told at once, when the spec asks for it; failures are never reused; with
  early stopping, a duplicate of a child this search stopped is stopped again at the same
  rung with no epochs spent, as nas_engine.search does), save
  the checkpoint and the counters in the same transaction, and after commit dispatch
  `train_child` for each new run.
  Budget spent and everything told -> finished. Any unexpected error -> failed, with
  the error text in `Search.error`.

Early stopping (the spec's `early_stop`, workers/rungs.py): a stopped child is told its
value at the rung it reached with a Fidelity (nas_engine.strategies.base); it never becomes
the best, and its Architecture.reward stays empty (that is the full training's reward). A
completed child is told its rung values too. Waiting children (parked at a rung) are
decided here first where their rows allow: stopped, or queued again and dispatched.

Team reward cache (`reuse_team_rewards`): a proposal whose cell a search of the same team
already trained to the end under the same measurement (Search.measure_key: data set, split,
objective, recipe, seed) is reused, like a duplicate within the search; `reused_from` names
the architecture where it was measured. Never across teams; a stopped child's rung value is
never reused.

Live events (webapp.live): each advance writes its events (architectures sampled, reused
children finished, controller updates, the search status and counters) in one bulk insert
in its transaction; they reach the websocket clients after commit.

Counters: `children_done` counts every told child (trained, reused or failed), as
nas_engine.search does; `children_failed` and `children_reused` are the parts of it.

Throughput: a finished child asks for an advance through a Redis flag
(webapp.dispatch.request_advance), so one waiting advance serves every result that arrived
meanwhile; the advance tells them all in one pass and writes rows in bulk (about seven
queries per advance), and the controller keeps the strategy it committed in memory to skip
deserialising the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from nas_engine.counting import describe
from nas_engine.early_stopping import fidelity
from nas_engine.genotype import Genotype
from nas_engine.spec import SearchSpec
from nas_engine.strategies import Strategy
from nas_engine.strategies.base import Fidelity
from webapp import dispatch
from webapp.front.children import reused_origin
from webapp.live import events as live
from webapp.searches import models as m
from webapp.searches import services
from workers import child_runs, rungs, strategy_store
from workers.resources import checkpoint_path, dataset_for

log = logging.getLogger("nasnet.worker")

RUN_FINISHED = (m.RUN_SUCCEEDED, m.RUN_STOPPED, m.RUN_FAILED, m.RUN_REUSED)
# What a step changes on the Search row: only these are written (the spec is ~1 kB of JSON).
STEP_FIELDS = [
    "status",
    "finished_at",
    "checkpoint_at",
    "children_sampled",
    "children_done",
    "children_failed",
    "children_reused",
    "children_stopped",
    "epochs_trained",
    "epochs_saved",
    "best_reward",
    "best_architecture",
    "updated_at",
]
# The strategy this process last committed per search, with the version it committed and
# the digests of its stored pieces: a controller advancing the same search again skips
# reading and deserialising the checkpoint.
_strategies: dict[int, tuple[tuple, Strategy, dict[str, str]]] = {}


def advance(search_id: int) -> None:
    dispatch.clear_advance_request(search_id)  # before reading: a result written from now on asks again
    try:
        with transaction.atomic():
            search = _locked(m.Search.objects).filter(pk=search_id).first()
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


def _locked(searches):
    """Search rows locked FOR UPDATE with their owner read in the same query (the status
    event's Search.to_dict names the owner): `of` keeps the lock off the user row."""
    return searches.select_for_update(of=("self",)).select_related("owner")


def _fail(search_id: int, error: str) -> None:
    with transaction.atomic():
        search = _locked(m.Search.objects).filter(pk=search_id).first()
        if search is None or search.is_done:
            return
        active = m.ChildRun.objects.filter(architecture__search_id=search_id, status__in=m.RUN_ACTIVE)
        _drop_checkpoints_on_commit(active)
        active.update(status=m.RUN_CANCELLED, finished_at=timezone.now(), error="search failed", lease_expires_at=None)
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
    active = m.ChildRun.objects.filter(architecture__search=search, status__in=m.RUN_ACTIVE)
    _drop_checkpoints_on_commit(active)
    stopped = active.update(
        status=m.RUN_CANCELLED, finished_at=timezone.now(), lease_expires_at=None, error="search cancelled"
    )
    log.info("search %s: %d active child runs cancelled", search.id, stopped)
    _set_status(search, m.CANCELLED)
    live.publish_many(search.id, [live.status(search)])


def _drop_checkpoints_on_commit(active) -> None:
    """Early stopping's checkpoints of runs about to be cancelled, removed once that commits:
    nobody resumes them. Locked first (FOR UPDATE), so a worker's park or finish between this
    read and the update waits, and its run is in the list or already ended. A worker still
    training one of them removes its own when it notices (child_runs.drop_checkpoint_if_ended)."""
    _remove_checkpoints_on_commit(list(active.select_for_update().values_list("id", flat=True)))


def _remove_checkpoints_on_commit(run_ids: list[int]) -> None:
    paths = [checkpoint_path("child", run_id) for run_id in run_ids]
    transaction.on_commit(lambda: [path.unlink(missing_ok=True) for path in paths])


def _step(search: m.Search) -> None:
    spec = search.parsed_spec
    events: list[tuple[str, dict]] = []  # live events of this advance, written in one go
    to_dispatch: list[int] = []
    if spec.early_stop.active:
        stopped, to_dispatch = rungs.settle_waiting(search, spec.early_stop)
        _remove_checkpoints_on_commit([run.pk for run in stopped])
        for run in stopped:
            m.ChildRun.objects.filter(pk=run.pk).update(announced=True)  # its event is in this transaction
            events.append(live.finished(run, run.architecture.sample_index))
        if stopped:  # slots of the team's share freed, as child_runs.finish does for a result
            team_id, search_id = search.team_id, search.id
            transaction.on_commit(lambda: child_runs.wake_held_back(team_id, search_id))
    untold = _untold_runs(search)
    finished = [row for row in untold if row[2] in RUN_FINISHED]
    active = sum(row[2] in m.RUN_ACTIVE for row in untold)
    team_free = _team_free(search)
    wanted = min(spec.parallel - active, search.children_total - search.children_sampled)
    free = min(wanted, team_free)
    if team_free < wanted:
        dispatch.hold_back(search.team_id, search.id)  # its team's next run to end wakes it
    if search.status == m.RUNNING and search.checkpoint_at and not finished and free <= 0 and not to_dispatch:
        return  # a repeated kick: nothing arrived, no slot is free
    old_status = search.status
    cached = _strategies.pop(search.id, None)
    fresh = cached is not None and cached[0] == _version(search)
    strategy, stored = (cached[1], cached[2]) if fresh else (strategy_store.load(search), None)
    if search.status == m.QUEUED:
        search.started_at = search.started_at or timezone.now()
        _set_status(search, m.RUNNING, started_at=search.started_at)
    _tell(search, spec, strategy, finished, events)
    while free > 0:  # asking again while duplicates are reused (told at once) frees slots
        new_runs, reused = _sample(search, spec, strategy, free, events)
        to_dispatch += new_runs
        active += len(new_runs)
        team_free -= len(new_runs)
        if not reused:
            break
        free = min(spec.parallel - active, search.children_total - search.children_sampled, team_free)
    stored = strategy_store.save(search, strategy, stored)
    if search.children_sampled >= search.children_total and not strategy.pending():
        search.status = m.FINISHED
        search.finished_at = timezone.now()
        log.info("search %s: running -> finished (best reward %s)", search.id, search.best_reward)
    search.save(update_fields=STEP_FIELDS)
    if events or search.status != old_status:
        events.append(live.status(search))
    live.publish_many(search.id, events, search_held=True)
    if search.status == m.FINISHED and old_status != m.FINISHED:
        services.start_follow_ups(search)  # its noise floor, its top-K selection (the spec's)
    version = _version(search)
    transaction.on_commit(lambda: _strategies.__setitem__(search.id, (version, strategy, stored)))
    for run_id in to_dispatch:
        dispatch.send_on_commit(dispatch.TASK_TRAIN_CHILD, run_id)


def _team_free(search: m.Search) -> int:
    """Child runs the search's team may still have queued or running, over all its searches
    (NAS_MAX_ACTIVE_RUNS_PER_TEAM): the gpu queue is first come, first served, so without
    a bound one team's backlog would sit in front of every other team's children. A search
    held back here is advanced again when one of its team's runs ends (child_runs.finish)."""
    team_active = m.ChildRun.objects.filter(
        architecture__search__team_id=search.team_id, status__in=m.RUN_ACTIVE
    ).count()
    return max(0, settings.NAS_MAX_ACTIVE_RUNS_PER_TEAM - team_active)


def _version(search: m.Search) -> tuple:
    return (search.checkpoint_at, search.children_sampled, search.children_done, search.status)


def _record(
    search: m.Search,
    arch_id: int,
    status: str,
    reward: float | None,
    trained: int = 0,
    full: int = 0,
    reused: bool = False,
) -> None:
    """Count a told child; `trained`: the epochs it trained (or, `reused`, that the child it
    reuses trained: none spent now), of its `full` training."""
    search.children_done += 1
    search.children_failed += status == m.RUN_FAILED
    search.children_reused += reused or status == m.RUN_REUSED
    search.epochs_trained += 0 if reused else trained
    if status == m.RUN_STOPPED:
        search.children_stopped += 1
        search.epochs_saved += max(full - trained, 0)
        return  # a rung value is never the best reward
    if reward is not None and (search.best_reward is None or reward > search.best_reward):
        search.best_reward, search.best_architecture_id = reward, arch_id


def _untold_runs(search: m.Search) -> list[tuple]:
    """(architecture id, sample index, run status, reward, announced, epochs, epochs discarded)
    of the children not yet told: the active ones and those whose result waits to be told."""
    return list(
        m.ChildRun.objects.filter(architecture__search=search, architecture__told=False)
        .order_by("architecture__sample_index")
        .values_list(
            "architecture_id",
            "architecture__sample_index",
            "status",
            "reward",
            "announced",
            "epochs",
            "epochs_discarded",
        )
    )


def _announce_missing(rows: list[tuple], events: list) -> None:
    """child.finished events of results whose worker died after writing them and before
    storing the event (ChildRun.announced): told now, so announced now, in this transaction.
    A worker still about to announce waits for this transaction (it locks the Search row
    first) and then finds the run announced."""
    missing = {row[0]: row[1] for row in rows if not row[4]}
    if not missing:
        return
    runs = list(m.ChildRun.objects.filter(architecture_id__in=missing, announced=False).order_by("architecture_id"))
    m.ChildRun.objects.filter(id__in=[run.id for run in runs]).update(announced=True)
    for run in runs:
        events.append(live.finished(run, missing[run.architecture_id]))
        log.warning("child run %s: its result had no child.finished event (its worker stopped); published", run.id)


def _tell(search: m.Search, spec: SearchSpec, strategy: Strategy, rows: list[tuple], events: list) -> None:
    """Tell the strategy, in sample_index order; mark the architectures told. With early
    stopping, a trained child is told how far it trained and its rung values (Fidelity)."""
    if not rows:
        return
    _announce_missing(rows, events)
    full, early_stop = spec.child.epochs, spec.early_stop
    for arch_id, index, status, reward, _, epochs, discarded in rows:
        trained = m.epochs_trained(status, epochs, full, discarded=discarded)
        if status == m.RUN_FAILED or reward is None:
            stats = strategy.tell_failure(index)
            _record(search, arch_id, m.RUN_FAILED, None, trained)
        else:
            values = rungs.values_of(epochs)
            told = None
            if early_stop.active and status in (m.RUN_SUCCEEDED, m.RUN_STOPPED) and values:
                told = fidelity(early_stop, values, full)
            stats = strategy.tell(index, reward, told)
            _record(search, arch_id, status, reward, trained, full)
        if stats is not None:
            events.append(live.controller(stats, index))
    # Architecture.reward is the full training's: a stopped child's rung value is not one.
    run_reward = m.ChildRun.objects.filter(architecture_id=OuterRef("pk")).exclude(status=m.RUN_STOPPED)
    m.Architecture.objects.filter(id__in=[r[0] for r in rows]).update(
        told=True, reward=Subquery(run_reward.values("reward")[:1])
    )


def _sample(search: m.Search, spec: SearchSpec, strategy: Strategy, n: int, events: list) -> tuple[list[int], bool]:
    """Ask for n proposals and write their rows; returns (run ids to dispatch, any reused)."""
    proposals = strategy.ask(n)
    hashes = [p.genotype.canonical_hash() for p in proposals]
    known = _known_rewards(search, spec, hashes)
    stops = _known_stops(search, spec, [h for h in hashes if h not in known])
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
            reward=known[h][0] if h in known else None,
            told=h in known or h in stops,
            reused_from_id=known[h][1] if h in known else stops[h].original if h in stops else None,
        )
        for p, h, c in zip(proposals, hashes, counts)
    ]
    m.Architecture.objects.bulk_create(archs)
    runs, updates = [], []
    told = _reused_fidelity(spec, [a.reused_from_id for a in archs if a.reward is not None])
    full = spec.child.epochs
    for p, h, arch in zip(proposals, hashes, archs):
        reward = arch.reward
        if reward is not None:
            updates.append(strategy.tell(p.id, reward, told.get(arch.reused_from_id)))
            _record(search, arch.id, m.RUN_REUSED, reward)
            runs.append(
                m.ChildRun(architecture=arch, status=m.RUN_REUSED, reward=reward, finished_at=now, announced=True)
            )
        elif h in stops:  # stopped again at the same rung, as the local loop does: no epochs spent
            stop, values = stops[h], rungs.values_of(stops[h].epochs)
            updates.append(strategy.tell(p.id, stop.value, fidelity(spec.early_stop, values, full)))
            _record(search, arch.id, m.RUN_STOPPED, stop.value, len(values), full, reused=True)
            # The original's epoch rows, so the page shows where it stopped and its curve;
            # models.epochs_trained counts none of them for a reused child.
            runs.append(
                m.ChildRun(
                    architecture=arch,
                    status=m.RUN_STOPPED,
                    reward=stop.value,
                    epochs=stop.epochs,
                    finished_at=now,
                    announced=True,
                )
            )
        else:
            updates.append(None)
            runs.append(m.ChildRun(architecture=arch, status=m.RUN_QUEUED, dispatched_at=now))
    m.ChildRun.objects.bulk_create(runs)  # ids set (RETURNING): the reused runs' events name them
    origins = _origins(search, archs)
    for p, arch, run, stats in zip(proposals, archs, runs, updates):
        events.append(live.sampled(arch, origins.get(arch.id)))
        if run.status != m.RUN_QUEUED:
            events.append(live.finished(run, p.id))
            if stats is not None:
                events.append(live.controller(stats, p.id))
    search.children_sampled += len(proposals)
    reused = sum(r.status != m.RUN_QUEUED for r in runs)
    log.info("search %s: sampled %d children (%d reused)", search.id, len(proposals), reused)
    return [r.id for r in runs if r.status == m.RUN_QUEUED], reused > 0


def _origins(search: m.Search, archs: list[m.Architecture]) -> dict[int, dict]:
    """{architecture id: where its reward was measured, as the page names it} for the reused
    ones, read in one query: the live row links "#k of <search>" before any reload."""
    reused = [a for a in archs if a.reused_from_id is not None]
    if not reused:
        return {}
    originals = m.Architecture.objects.select_related("search").only(
        "id", "sample_index", "search__id", "search__name", "search__team_id"
    )
    found = originals.in_bulk({a.reused_from_id for a in reused})
    out = {}
    for arch in reused:
        if arch.reused_from_id in found:
            arch.reused_from = found[arch.reused_from_id]
            out[arch.id] = reused_origin(arch, search)
    return out


def _reused_fidelity(spec: SearchSpec, originals: list[int]) -> dict:
    """With early stopping, what a reused child is told beside its reward, as the local loop
    tells it: trained in full, with the rung values of the run that measured it (none when
    that run kept no per-epoch rows). {original architecture id: Fidelity}."""
    if not spec.early_stop.active or not originals:
        return {}
    full, early_stop = spec.child.epochs, spec.early_stop
    bare = Fidelity(full, full, (), early_stop.stopped_reward)
    out = dict.fromkeys(originals, bare)
    for arch_id, epochs in m.ChildRun.objects.filter(architecture_id__in=originals).values_list(
        "architecture_id", "epochs"
    ):
        values = rungs.values_of(epochs)
        if len(values) == full:
            out[arch_id] = fidelity(early_stop, values, full)
    return out


def _known_rewards(search: m.Search, spec: SearchSpec, hashes: list[str]) -> dict[str, tuple[float, int]]:
    """hash -> (reward, architecture where it was measured) for the proposals that need no
    training: duplicates within the search (`reuse_duplicates`), then cells another search
    of the team trained to the end under the same measurement (`reuse_team_rewards`).
    The earliest measurement wins; a reused architecture points at its original."""
    known: dict[str, tuple[float, int]] = {}
    sources = []
    if spec.reuse_duplicates:
        sources.append(m.Architecture.objects.filter(search=search).order_by("sample_index"))
    if spec.reuse_team_rewards and search.measure_key:
        sources.append(
            m.Architecture.objects.filter(search__team_id=search.team_id, search__measure_key=search.measure_key)
            .exclude(search=search)
            .order_by("id")
        )
    for rows in sources:
        wanted = [h for h in hashes if h not in known]
        if not wanted:
            break
        found = rows.filter(canonical_hash__in=wanted, reward__isnull=False).values_list(
            "canonical_hash", "reward", "id", "reused_from_id"
        )
        for h, reward, arch_id, original in found:
            known.setdefault(h, (reward, original or arch_id))
    return known


@dataclass(frozen=True)
class _Stop:
    """A child of this search that early stopping stopped: its rung value, the architecture
    where it was measured, and its per-epoch rows."""

    value: float
    original: int
    epochs: list


def _known_stops(search: m.Search, spec: SearchSpec, hashes: list[str]) -> dict[str, _Stop]:
    """hash -> _Stop for the proposals (not reusing a final reward) that duplicate a child
    this search stopped early: each is reused as stopped at the same rung, told the same
    Fidelity, as nas_engine.search does (`reuse_duplicates`). Within the search only: a rung
    value is never reused across searches. The earliest stopped child wins."""
    if not (hashes and spec.reuse_duplicates and spec.early_stop.active):
        return {}
    runs = m.ChildRun.objects.filter(
        architecture__search=search, architecture__canonical_hash__in=hashes, status=m.RUN_STOPPED
    ).exclude(reward=None)
    found = runs.order_by("architecture__sample_index").values_list(
        "architecture__canonical_hash", "reward", "architecture_id", "architecture__reused_from_id", "epochs"
    )
    stops: dict[str, _Stop] = {}
    for h, value, arch_id, original, epochs in found:
        if rungs.values_of(epochs):  # a stopped run always has its rows; one without is not reused
            stops.setdefault(h, _Stop(value, original or arch_id, epochs))
    return stops


def _counts(spec: SearchSpec, genotypes: list[Genotype]) -> list[tuple[int | None, int | None]]:
    """params and mult-adds, for real children only (the synthetic objective has none)."""
    if spec.objective["name"] != "accuracy":
        return [(None, None)] * len(genotypes)
    macro = spec.child.macro_config(dataset_for(spec.dataset, spec.seed))
    out = []
    for genotype in genotypes:
        counts = describe(genotype, macro)
        out.append((counts.params, counts.mult_adds))
    return out
