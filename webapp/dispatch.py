"""Everything that puts work on the queues, in one place: the task names, the queues, one
`send` with one retry policy, `request_advance`, and what the broker can tell (queue
lengths, reachability).

The web app and the workers both send through here; only workers define the tasks
(workers/tasks.py), so a message names its task by string. The rows in the database are
the truth, a message only says "look now": a send that fails twice is logged, not raised,
and the periodic reaper re-dispatches what a lost message should have started.
"""

from __future__ import annotations

import logging

from django.db import transaction

from webapp.celery import app

log = logging.getLogger("nasnet.dispatch")

# Task names (settings.CELERY_TASK_ROUTES and CELERY_BEAT_SCHEDULE use the same strings;
# tests/test_dispatch.py checks that every name is a task the workers define).
TASK_ADVANCE = "workers.tasks.advance_search"
TASK_TRAIN_CHILD = "workers.tasks.train_child"
TASK_TRAIN_JOB = "workers.tasks.run_training_job"
TASK_TRAIN_SELECTION = "workers.tasks.train_selection_run"
TASK_REAP = "workers.tasks.reap"
# Queues: `controller` (advances, the reaper: short tasks) and `gpu` (training, one at a time).
QUEUE_CONTROLLER, QUEUE_GPU = "controller", "gpu"
QUEUES = (QUEUE_CONTROLLER, QUEUE_GPU)
BROKER_TIMEOUT = 3.0  # seconds a reachability check may take


def ensure_queues() -> None:
    """(Re)declare the queues and their bindings: an emptied Redis loses the bindings too,
    and a publish to an exchange without them fails ("Table empty")."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in QUEUES:
            app.amqp.queues[name](channel).declare()


def queue_length(name: str) -> int:
    """Messages waiting in a queue (0 when the broker cannot say)."""
    try:
        with app.connection_for_read() as conn:
            return conn.default_channel.queue_declare(queue=name, passive=True).message_count
    except Exception:  # noqa: BLE001 - a missing queue or a broker without counts
        return 0


def ping_broker(timeout: float = BROKER_TIMEOUT) -> None:
    """Raises when the broker does not accept a connection within `timeout` seconds."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def send(name: str, *args) -> bool:
    """Publish task `name` with `args`. The one retry policy: a failed publish redeclares the
    queues and tries once more with Celery's own retries; if that fails too it is logged and
    False returned (the reaper picks the work up from the rows)."""
    try:
        app.send_task(name, args=list(args), retry=False)
        return True
    except Exception:  # noqa: BLE001 - broker hiccup or lost bindings: repair, retry once
        log.warning("publishing %s%s failed; redeclaring the queues and retrying", name, args)
    try:
        ensure_queues()
        app.send_task(name, args=list(args))
        return True
    except Exception:  # noqa: BLE001 - the row is committed; the reaper dispatches it again
        log.exception("could not publish %s%s; the periodic reaper will pick it up", name, args)
        return False


def send_on_commit(name: str, *args) -> None:
    """`send` once the current transaction commits (at once outside a transaction): a worker
    must never receive an id whose row it cannot see yet."""
    transaction.on_commit(lambda: send(name, *args))


# Every finished child asks for an advance; one waiting advance serves them all. A Redis
# flag (SET NX, cleared when the advance starts reading) coalesces the requests, so the
# controller queue does not fill with no-op advances. A flag whose message was lost
# expires; the reaper re-kicks searches that stall meanwhile.
PENDING_KEY = "nasnet:advance-pending:%s"
PENDING_TTL = 60
_flag_clients: dict[str, object] = {}


def _flag_client():
    url = app.conf.broker_url or ""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    if url not in _flag_clients:
        import redis

        _flag_clients[url] = redis.Redis.from_url(url, socket_timeout=5)
    return _flag_clients[url]


def request_advance(search_id: int) -> None:
    """Ask for an advance of the search, unless one is already waiting."""
    client = _flag_client()
    try:
        if client is not None and not client.set(PENDING_KEY % search_id, 1, nx=True, ex=PENDING_TTL):
            return  # an advance is already waiting: it will see this result
    except Exception:  # noqa: BLE001 - no flag, no harm: send anyway
        log.warning("advance flag for search %s unavailable; sending anyway", search_id, exc_info=True)
    send(TASK_ADVANCE, search_id)


def clear_advance_request(search_id: int) -> None:
    """Called by the advance before it reads: a result written from now on asks again."""
    client = _flag_client()
    try:
        if client is not None:
            client.delete(PENDING_KEY % search_id)
    except Exception:  # noqa: BLE001 - the flag expires on its own
        log.warning("could not clear the advance flag of search %s", search_id, exc_info=True)


# Searches the advance held back because their team had its whole share of the gpu queue
# (NAS_MAX_ACTIVE_RUNS_PER_TEAM), per team: the next run of the team to end wakes them. A set
# in Redis, so a finished child costs one SPOP-like call rather than a database query. Lost
# with Redis, nothing is stuck: the reaper advances searches that have nothing running.
HELD_KEY = "nasnet:held-back:%s"


def hold_back(team_id: int, search_id: int) -> None:
    client = _flag_client()
    try:
        if client is not None:
            client.sadd(HELD_KEY % team_id, search_id)
    except Exception:  # noqa: BLE001 - the reaper advances it instead
        log.warning("could not mark search %s as held back", search_id, exc_info=True)


def take_held_back(team_id: int) -> list[int] | None:
    """The team's held-back searches, now forgotten (each is advanced once by the caller);
    None when there is no Redis to ask (the caller then asks the database)."""
    client = _flag_client()
    if client is None:
        return None
    try:
        pipe = client.pipeline()  # MULTI/EXEC: read and forget at once, so a search is woken once
        pipe.smembers(HELD_KEY % team_id)
        pipe.delete(HELD_KEY % team_id)
        members, _ = pipe.execute()
    except Exception:  # noqa: BLE001 - asked again from the database
        log.warning("held-back searches of team %s unavailable", team_id, exc_info=True)
        return None
    return sorted(int(member) for member in members)
