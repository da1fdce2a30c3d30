"""Publishing live events of a search (ARCHITECTURE.md, "Live events").

    publish(search_id, *progress(run, sample_index))
    publish_many(search_id, [(type, payload), ...])    # one counter update, one bulk insert

Each event is stored as a `SearchEvent` row (the truth) in the caller's transaction and,
once that transaction commits, sent to the Channels group `search-<id>` as one
"live.events" message. A channel layer that fails or is missing is logged and ignored:
a client that missed a live event catches up from the rows.

A client receives {"seq", "type", "search_id", **payload} (SearchEvent.message()). The
payloads carry the models' own to_dict(), the shape the API answers with, cut to size by
model_dict() (below):

    architecture.sampled  {"architecture": Architecture, "url": "/architectures/<id>",
                           "svg": "/architectures/<id>/cells.svg", "reused_from": null or
                           {"architecture", "sample_index", "search", "search_name"}
                           (where a reused child was measured; search_name null: this search)}
    child.progress        {"run": ChildRun, "sample_index": int}
    child.finished        {"run": ChildRun, "sample_index": int}  (succeeded, failed, reused, cancelled)
    controller.update     {"sample_index", "step", "loss", "entropy", "mean_reward", "baseline",
                           "approx_kl", "clip_fraction", "policy"}  (nas_engine UpdateStats: no model)
    search.status         {"search": Search}
    job.progress          {"job": TrainingJob}  (a training job of one of the search's
                           architectures: the transfer step)
    selection.progress    {"selection": Selection}  (a top-K selection or noise floor of the
                           search: created, a run ended, finished; its ranking included)
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import Iterable

from django.db import connection, transaction
from django.db.models import Max

from webapp.live.models import SearchEvent, SearchEventCounter
from webapp.searches.models import Architecture, Search, TrainingJob, latest_epoch

log = logging.getLogger("nasnet.live")

SAMPLED, PROGRESS, FINISHED, CONTROLLER, STATUS, JOB, SELECTION = (
    "architecture.sampled",
    "child.progress",
    "child.finished",
    "controller.update",
    "search.status",
    "job.progress",
    "selection.progress",
)
EVENT_TYPES = (SAMPLED, PROGRESS, FINISHED, CONTROLLER, STATUS, JOB, SELECTION)
SEND_TIMEOUT = 5.0  # seconds a publish may wait on the channel layer


def group_name(search_id: int) -> str:
    return f"search-{search_id}"


def hold_search(search_id: int) -> None:
    """Lock the Search row FOR KEY SHARE until the caller's transaction ends: what the event
    rows' foreign key check takes anyway, taken first. It waits for an advance (which holds
    the row FOR UPDATE) to commit, and keeps one from starting meanwhile."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {Search._meta.db_table} WHERE id = %s FOR KEY SHARE", [search_id])


def allocate(search_id: int, n: int, *, search_held: bool = False) -> int:
    """Reserve n sequence numbers for a search; returns the last (first = last - n + 1).
    The counter row stays locked until the caller's transaction ends.

    Lock order: the Search row first (hold_search, unless the caller already did), then the
    counter. An advance holds the Search row FOR UPDATE while it publishes; taking the
    counter first here would deadlock with it."""
    if not search_held:
        hold_search(search_id)
    table = SearchEventCounter._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (search_id, last_seq) VALUES (%s, %s) "
            f"ON CONFLICT (search_id) DO UPDATE SET last_seq = {table}.last_seq + EXCLUDED.last_seq "
            "RETURNING last_seq",
            [search_id, n],
        )
        return cursor.fetchone()[0]


def last_stored_seq(search_id: int | None) -> int:
    """The highest seq of the search's committed events (0: none). State read after it is at
    least as new, so a client asking for the events after it misses nothing."""
    if search_id is None:
        return 0
    return SearchEvent.objects.filter(search_id=search_id).aggregate(last=Max("seq"))["last"] or 0


def publish(search_id: int, type: str, payload: dict, *, search_held: bool = False) -> list[dict]:
    return publish_many(search_id, [(type, payload)], search_held=search_held)


def publish_many(search_id: int, events: Iterable[tuple[str, dict]], *, search_held: bool = False) -> list[dict]:
    """Store the events (consecutive seqs, in the given order) and send them on commit.
    Returns the messages as clients receive them. `search_held`: the caller's transaction
    already holds the Search row (hold_search, or FOR UPDATE)."""
    events = list(events)
    if not events:
        return []
    for type_, _ in events:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown live event type {type_!r}")
    with transaction.atomic(savepoint=False):
        last = allocate(search_id, len(events), search_held=search_held)
        first = last - len(events) + 1
        rows = [
            SearchEvent(search_id=search_id, seq=first + i, type=type_, payload=_finite(payload))
            for i, (type_, payload) in enumerate(events)
        ]
        SearchEvent.objects.bulk_create(rows)
        messages = [row.message() for row in rows]
        transaction.on_commit(lambda: send(search_id, messages))
    return messages


def _finite(value):
    """JSON without NaN/inf (PostgreSQL's jsonb refuses them, browsers' JSON.parse too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def send(search_id: int, messages: list[dict]) -> None:
    """Send stored events to the search's group; never raises."""
    try:
        from channels.layers import InMemoryChannelLayer, get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            return
        if isinstance(layer, InMemoryChannelLayer):
            from asgiref.sync import async_to_sync

            # The in-memory layer lives on the web server's loop: async_to_sync runs there.
            async_to_sync(_group_send)(layer, group_name(search_id), messages)
        else:
            _sender_loop().submit(_group_send(layer, group_name(search_id), messages))
    except Exception:  # noqa: BLE001 - the rows are the truth; clients catch up from them
        log.warning("live events %s of search %s not sent", [m["seq"] for m in messages], search_id, exc_info=True)


async def _group_send(layer, group: str, messages: list[dict]) -> None:
    await asyncio.wait_for(layer.group_send(group, {"type": "live.events", "events": messages}), SEND_TIMEOUT)


class _SenderLoop:
    """One event loop in a daemon thread per process, for publishing from sync code.

    async_to_sync outside a server starts a fresh loop per call, and channels_redis keeps
    its connection pool per loop: every publish paid a new Redis connection (4.4 ms against
    0.4 ms here). Keyed by pid: a forked Celery pool process starts its own."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="live-events-sender", daemon=True).start()

    def submit(self, coro) -> None:
        """Run `coro` on the loop and wait for it (so events leave in publish order)."""
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(SEND_TIMEOUT + 1)


_sender: _SenderLoop | None = None
_sender_lock = threading.Lock()


def _sender_loop() -> _SenderLoop:
    global _sender
    with _sender_lock:
        if _sender is None or _sender.pid != os.getpid():
            _sender = _SenderLoop()
        return _sender


# -- payloads -----------------------------------------------------------------------------------
# What an event leaves out of a model's to_dict(): the immutable, bulky fields a client reads
# once from the API or the page (a genotype is ~2 kB, a spec ~1 kB).
OMITTED: dict[type, tuple[str, ...]] = {
    Search: ("spec",),
    Architecture: ("genotype",),
    TrainingJob: ("genotype", "dataset"),
}


def model_dict(row) -> dict:
    """The one serialisation of a model row in a live event: `row.to_dict()` (the API's
    shape, webapp/api/views.py), with two cuts and nothing else changed (same keys, same
    types):

    - the fields in OMITTED[type(row)] are left out: immutable and bulky (Search `spec`,
      Architecture `genotype`, TrainingJob `genotype` and `dataset`); a client gets them
      once from the API or the page;
    - an `epochs` list (ChildRun, TrainingJob) is cut to its newest entry (`[]` when none):
      a client accumulates the history from the stream, and stored whole in every event a
      600-epoch job would write 600 x 600 / 2 epoch records.

    TrainingJob `recipe` stays (the pages read recipe.epochs before the first epoch)."""
    data = row.to_dict()
    for key in OMITTED.get(type(row), ()):
        data.pop(key, None)
    if "epochs" in data:
        newest = latest_epoch(data["epochs"])
        data["epochs"] = [newest] if newest else []
    return data


def sampled(arch, origin: dict | None = None) -> tuple[str, dict]:
    """An Architecture row just written (its id set), with its page and its cells' drawing.
    `origin`: where a reused child's reward was measured, as the page names it
    (webapp.front.children.reused_origin), so a live row reads "#k of <search>" at once."""
    return SAMPLED, {
        "architecture": model_dict(arch),
        "url": f"/architectures/{arch.id}",  # its page
        "svg": f"/architectures/{arch.id}/cells.svg",  # both cells drawn (image/svg+xml)
        "reused_from": origin,
    }


def progress(run, sample_index: int) -> tuple[str, dict]:
    """A ChildRun training, as it is once its latest epoch is written (`run.epochs` set)."""
    return PROGRESS, {"run": model_dict(run), "sample_index": sample_index}


def finished(run, sample_index: int) -> tuple[str, dict]:
    """A ChildRun as its final status left it: succeeded, failed, reused or cancelled."""
    return FINISHED, {"run": model_dict(run), "sample_index": sample_index}


def controller(stats, sample_index: int) -> tuple[str, dict]:
    """nas_engine UpdateStats (not a model: a flat payload). `policy[k][j]`: probability of
    option j at decision k after the update (ragged, SearchSpace.decision_sizes()), rounded:
    it feeds a heatmap."""
    return CONTROLLER, {
        "sample_index": sample_index,
        "step": stats.step,
        "loss": stats.loss,
        "entropy": stats.entropy,
        "mean_reward": stats.mean_reward,
        "baseline": stats.baseline,
        "approx_kl": stats.approx_kl,
        "clip_fraction": stats.clip_fraction,
        "policy": [[round(p, POLICY_DIGITS) for p in row] for row in (stats.policy or [])],
    }


POLICY_DIGITS = 4  # 50 decisions x up to 13 options: about 3 kB per update


def job_progress(job) -> tuple[str, dict]:
    """A TrainingJob row, for the search its architecture came from. Reads job.owner: load
    it with the row (select_related("owner"))."""
    return JOB, {"job": model_dict(job)}


def status(search) -> tuple[str, dict]:
    """The whole state of a Search row (status, counters, best), and with early stopping its
    decisions per rung (Search.rung_counts: one aggregate query). Reads search.owner: load it
    with the row (select_related("owner"))."""
    payload = {"search": model_dict(search)}
    rungs = search.rung_counts()
    if rungs:
        payload["rungs"] = rungs
    return STATUS, payload


def selection_progress(selection) -> tuple[str, dict]:
    """A Selection row (top-K or noise floor) of the search, with its ranking so far."""
    return SELECTION, {"selection": model_dict(selection)}
