"""The staff workers page: who is online, on which device, each of its processes training
what; queue depths.

`/staff/workers` renders it and `/staff/workers.json` gives the same snapshot, which the
page fetches every few seconds. Non-staff users get a 404 (the page does not exist for
them), anonymous visitors the login page.
"""

from __future__ import annotations

from datetime import timedelta
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from webapp import dispatch
from webapp.fleet.models import (
    LOST,
    OFFLINE,
    ONLINE,
    TASK_ADVANCE,
    TASK_TRAIN_CHILD,
    TASK_TRAIN_SELECTION,
    TASK_TRAINING_JOB,
    Worker,
    WorkerProcess,
    lease_beats,
)
from webapp.searches import models as m

REFRESH_SECONDS = 5
OFFLINE_SHOWN_FOR = timedelta(days=1)  # cleanly stopped workers drop off the page after this
STATUS_ORDER = {ONLINE: 0, LOST: 1, OFFLINE: 2}
BADGES = {ONLINE: "succeeded", LOST: "failed", OFFLINE: "finished"}  # existing badge colours: green, red, grey


def staff_only(view):
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if not request.user.is_staff:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapped


def queue_depths() -> dict[str, int]:
    """Messages waiting in the broker's queues (0 where the broker cannot say)."""
    return {name: dispatch.queue_length(name) for name in dispatch.QUEUES}


def _counts(model) -> dict[str, int]:
    row = model.objects.aggregate(
        queued=Count("id", filter=Q(status=m.RUN_QUEUED)), running=Count("id", filter=Q(status=m.RUN_RUNNING))
    )
    return {"queued": row["queued"], "running": row["running"]}


def _search_ref(search: m.Search | None) -> dict | None:
    if search is None:
        return None
    return {"id": search.id, "name": search.name, "url": reverse("front:search", args=[search.id])}


def _arch_ref(arch: m.Architecture | None) -> dict | None:
    if arch is None:
        return None
    return {"id": arch.id, "sample_index": arch.sample_index, "url": reverse("front:architecture", args=[arch.id])}


def _tasks(processes: list[WorkerProcess], now) -> dict[int, dict]:
    """What each busy process runs, with the search and architecture it belongs to (four
    queries at most, whatever the number of workers)."""
    kinds = (TASK_TRAIN_CHILD, TASK_TRAINING_JOB, TASK_TRAIN_SELECTION, TASK_ADVANCE)
    ids = {
        name: [p.task_object_id for p in processes if p.task_name == name and p.task_object_id is not None]
        for name in kinds
    }
    # Only what the page shows: names, not the heavy fields (specs, genotypes, epochs).
    refs = ("architecture__id", "architecture__sample_index", "architecture__search__id", "architecture__search__name")
    runs = m.ChildRun.objects.select_related("architecture__search").only("id", "attempt", *refs)
    runs = runs.in_bulk(ids[TASK_TRAIN_CHILD]) if ids[TASK_TRAIN_CHILD] else {}
    jobs = m.TrainingJob.objects.select_related("architecture__search").only("id", "name", *refs)
    jobs = jobs.in_bulk(ids[TASK_TRAINING_JOB]) if ids[TASK_TRAINING_JOB] else {}
    picks = m.SelectionRun.objects.select_related("architecture__search").only("id", "seed", "selection_id", *refs)
    picks = picks.in_bulk(ids[TASK_TRAIN_SELECTION]) if ids[TASK_TRAIN_SELECTION] else {}
    searches = m.Search.objects.only("id", "name").in_bulk(ids[TASK_ADVANCE]) if ids[TASK_ADVANCE] else {}
    out = {}
    for p in processes:
        if not p.task_name:
            continue
        oid = p.task_object_id
        task = {"name": p.task_name, "id": oid, "label": p.task_name, "url": None, "search": None, "architecture": None}
        task["since_s"] = round((now - p.task_started_at).total_seconds()) if p.task_started_at else None
        if p.task_name == TASK_TRAIN_CHILD:
            run = runs.get(oid)
            task["label"] = f"child run {oid}"
            if run is not None:
                task["label"] += f" (attempt {run.attempt})"
                task["architecture"] = _arch_ref(run.architecture)
                task["search"] = _search_ref(run.architecture.search)
                task["url"] = task["architecture"]["url"]
        elif p.task_name == TASK_TRAINING_JOB:
            job = jobs.get(oid)
            task["label"] = f"training job {oid}"
            task["url"] = reverse("front:training_job", args=[oid])
            if job is not None:
                task["label"] += f": {job.name}"
                task["architecture"] = _arch_ref(job.architecture)
                task["search"] = _search_ref(job.architecture.search if job.architecture else None)
        elif p.task_name == TASK_TRAIN_SELECTION:
            pick = picks.get(oid)
            task["label"] = f"selection run {oid}"
            if pick is not None:
                task["label"] += f" (seed {pick.seed})"
                task["url"] = reverse("front:selection", args=[pick.selection_id])
                task["architecture"] = _arch_ref(pick.architecture)
                task["search"] = _search_ref(pick.architecture.search)
        elif p.task_name == TASK_ADVANCE:
            task["label"] = "advance search" if oid is None else f"advance search {oid}"
            task["search"] = _search_ref(searches.get(oid))
            task["url"] = task["search"]["url"] if task["search"] else None
        elif oid is not None:
            task["label"] = f"{p.task_name} {oid}"
        out[p.id] = task
    return out


def _age_s(now, then) -> int | None:
    return None if then is None else max(0, round((now - then).total_seconds()))


def snapshot() -> dict:
    """Everything the page shows, as JSON-ready data."""
    now = timezone.now()
    workers = [
        w
        for w in Worker.objects.prefetch_related("processes")
        if w.status != OFFLINE or now - w.last_seen <= OFFLINE_SHOWN_FOR
    ]  # a handful of rows: filtering here keeps the query trivial
    processes = [p for w in workers for p in w.processes.all()]
    beats = lease_beats(p.identity for p in processes)
    heard = {w.id: w.last_heard(beats) for w in workers}
    status = {w.id: w.shown_status(heard[w.id], now) for w in workers}
    workers.sort(key=lambda w: (STATUS_ORDER.get(status[w.id], 3), w.hostname))
    tasks = _tasks(processes, now)
    rows = []
    for w in workers:
        procs = [
            {
                "identity": p.identity,
                "pid": p.pid,
                "index": p.index,
                "label": f"#{p.index} (pid {p.pid})" if p.index is not None else f"pid {p.pid}",
                "task": tasks.get(p.id),
                "lease_seen_s": _age_s(now, beats.get(p.identity)),
            }
            for p in w.processes.all()
        ]
        rows.append(
            {
                "hostname": w.hostname,
                "queues": w.queue_list,
                "device": w.device,
                "pid": w.pid,
                "status": status[w.id],
                "badge": BADGES.get(status[w.id], ""),
                "busy": any(p["task"] for p in procs),
                "started_at": w.started_at.isoformat(),
                "last_seen": heard[w.id].isoformat(),
                "last_seen_s": _age_s(now, heard[w.id]),
                "tasks_done": w.tasks_done + sum(p.tasks_done for p in w.processes.all()),
                "processes": procs,
            }
        )
    return {
        "generated_at": now.isoformat(),
        "refresh_seconds": REFRESH_SECONDS,
        "workers": rows,
        "online": sum(r["status"] == ONLINE for r in rows),
        "queues": queue_depths(),
        "child_runs": _counts(m.ChildRun),
        "training_jobs": _counts(m.TrainingJob),
        "searches_active": m.Search.objects.filter(status__in=(m.QUEUED, m.RUNNING)).count(),
    }


@staff_only
def workers_page(request: HttpRequest) -> HttpResponse:
    return render(request, "fleet/workers.html", {"data": snapshot()})


@staff_only
def workers_json(request: HttpRequest) -> JsonResponse:
    response = JsonResponse(snapshot())
    response["Cache-Control"] = "no-store"
    return response
