"""Each worker keeps its rows in webapp.fleet's tables (the staff workers page): one per
node (Worker) and one per process of it that runs tasks (WorkerProcess).

- worker_ready (the worker's main process): register the node (upsert by Celery node name:
  queues, pid, device), record its pool processes, and start a heartbeat thread that writes
  `last_seen` every HEARTBEAT_SECONDS (one UPDATE) and records the pool again whenever its
  processes changed (a pool process replaced after --max-tasks-per-child, or after it died).
  The device probe runs beside the beats, not before them: on a GPU machine it can take
  longer than LOST_AFTER_SECONDS.
- task_prerun / task_postrun (in the pool process that runs the task): record and clear the
  training task in flight on that process's own row, named "host:pid" like the leases it
  claims (workers.leases.worker_id): one UPDATE each. Siblings in one pool never overwrite
  each other.
- worker_process_shutdown (a pool process exiting cleanly): its row goes, its count of
  tasks done goes to its worker's.
- worker_shutdown: the thread stops, the node says offline, its process rows go.
- mark_lost_workers(), called by the reaper: an online worker silent for longer than
  LOST_AFTER_SECONDS becomes lost, logged once ("worker X lost (last seen ...)"). A worker
  whose process holds a lease heartbeating within that time is busy, not silent, whatever
  its main process's heartbeat says.

None of this may break a task: a failed write is logged and forgotten. The GPU's name
comes from a short subprocess, so the worker's main process never initialises CUDA
(prefork children forked after that could not use the GPU).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading

from celery import signals

from webapp import dispatch

log = logging.getLogger("nasnet.fleet")

DEVICE_PROBE = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')"
_heartbeats: dict[str, Heartbeat] = {}


def _now():
    from django.utils import timezone

    return timezone.now()


def _workers():
    from webapp.fleet.models import Worker

    return Worker.objects


def _processes():
    from webapp.fleet.models import WorkerProcess

    return WorkerProcess.objects


def _forget_connection() -> None:
    """After a failed write: drop this thread's connection if it is broken."""
    try:
        from django.db import close_old_connections

        close_old_connections()
    except Exception:  # noqa: BLE001 - nothing more to do
        pass


def device_name(queues: list[str]) -> str | None:
    """The device a worker trains on; "" for a worker that trains nothing, None when it
    takes a probe (a subprocess importing torch) to know."""
    if "gpu" not in queues:
        return ""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "CPU"
    return None


def probe_device(timeout: float = 120.0) -> str:
    """torch's name for the first visible CUDA device, or "CPU"; "unknown" if the probe fails."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", DEVICE_PROBE], capture_output=True, text=True, timeout=timeout, check=True
        )
        return out.stdout.strip().splitlines()[-1][:255]
    except Exception:  # noqa: BLE001 - a missing driver, a timeout: say so, do not fail
        log.warning("could not tell this worker's device", exc_info=True)
        return "unknown"


# -- the processes of a worker ---------------------------------------------------------------------
def process_identity(pid: int) -> str:
    """How a process of this machine is named: as workers.leases.worker_id() names the
    owner of a claim, so the page finds the work each process holds by this name."""
    return f"{socket.gethostname()}:{pid}"


def pool_processes(pool) -> list[tuple[int, int | None]]:
    """(pid, index) of each process that runs the worker's tasks: a prefork pool's
    processes, or this process itself for the solo and threads pools."""
    try:
        # Private, but the only place that has each process's index (pool.info gives pids only).
        procs = list(pool._pool._pool)
    except (AttributeError, TypeError):
        return [(os.getpid(), None)]
    return sorted((p.pid, getattr(p, "index", None)) for p in procs if p.pid)


def forget_processes(rows) -> None:
    """Delete process rows (a queryset); what they finished counts on for their workers."""
    from django.db import transaction
    from django.db.models import F

    with transaction.atomic():
        gone = list(rows.select_for_update().values_list("pk", "worker_id", "tasks_done"))
        if not gone:
            return
        _processes().filter(pk__in=[pk for pk, _, _ in gone]).delete()
        done: dict[int, int] = {}
        for _, worker_id, n in gone:
            done[worker_id] = done.get(worker_id, 0) + n
        for worker_id, n in done.items():
            if n:
                _workers().filter(pk=worker_id).update(tasks_done=F("tasks_done") + n)


def sync_processes(hostname: str, procs: list[tuple[int, int | None]]) -> None:
    """Make the node's process rows exactly `procs`: new ones added, those of processes
    that exited (or of an earlier run of this node) forgotten."""
    worker = _workers().filter(hostname=hostname).first()
    if worker is None:
        return
    keep = [process_identity(pid) for pid, _ in procs]
    # A pid reused on this machine: that row was another node's process.
    forget_processes(_processes().filter(identity__in=keep).exclude(worker=worker))
    forget_processes(_processes().filter(worker=worker).exclude(identity__in=keep))
    for (pid, index), identity in zip(procs, keep, strict=True):
        _processes().update_or_create(identity=identity, defaults={"worker": worker, "pid": pid, "index": index})


# -- registration and heartbeats (the worker's main process) -------------------------------------
def register(hostname: str, queues: list[str], pid: int, device: str) -> None:
    now = _now()
    _workers().update_or_create(
        hostname=hostname,
        defaults=dict(queues=",".join(queues), pid=pid, device=device, status="online", started_at=now, last_seen=now),
    )
    log.info("worker %s online: queues %s, device %s, pid %s", hostname, ",".join(queues), device or "-", pid)


def beat(hostname: str, queues: list[str], pid: int, device: str) -> None:
    """One heartbeat: one UPDATE while all is well. A row that was marked lost (or deleted)
    is brought back online."""
    now = _now()
    if _workers().filter(hostname=hostname, status="online").update(last_seen=now):
        return
    if _workers().filter(hostname=hostname).update(last_seen=now, status="online"):
        log.warning("worker %s is back online", hostname)
    else:
        register(hostname, queues, pid, device)


class Heartbeat(threading.Thread):
    def __init__(
        self,
        hostname: str,
        queues: list[str],
        device: str | None,
        interval: float,
        pool=None,
        synced: list[tuple[int, int | None]] | None = None,
    ):
        super().__init__(name=f"fleet-heartbeat-{hostname}", daemon=True)
        self.hostname, self.queues, self.device, self.interval = hostname, queues, device, interval
        self.pid = os.getpid()
        self.pool, self.synced = pool, synced  # the pool processes as last recorded
        self.stopping = threading.Event()
        self.failing = False  # a database outage is logged when it starts and when it ends

    def run(self) -> None:
        from django.db import connection

        try:
            if self.device is None:
                threading.Thread(target=self._probe, name=f"fleet-probe-{self.hostname}", daemon=True).start()
            while not self.stopping.wait(self.interval):
                self._write(self._beat)
        finally:
            connection.close()  # this thread's own connection

    def _beat(self) -> None:
        beat(self.hostname, self.queues, self.pid, self.device or "")
        procs = pool_processes(self.pool)
        # No started process: a prefork pool replacing all of them at once (max tasks per
        # child) has none with a pid for a moment. Syncing that would blank the workers page
        # until the next beat; the next beat sees the new processes.
        if procs and procs != self.synced:
            sync_processes(self.hostname, procs)
            self.synced = procs

    def _probe(self) -> None:
        from django.db import connection

        try:
            self.device = probe_device()
            self._write(lambda: _workers().filter(hostname=self.hostname).update(device=self.device))
        finally:
            connection.close()

    def _write(self, fn) -> None:
        try:
            from django.db import close_old_connections

            close_old_connections()
            fn()
        except Exception:  # noqa: BLE001 - the next beat tries again
            if not self.failing:
                log.warning("worker %s: heartbeat not written (retrying quietly)", self.hostname, exc_info=True)
            self.failing = True
            _forget_connection()
        else:
            if self.failing:
                log.info("worker %s: heartbeats written again", self.hostname)
            self.failing = False

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


def _consumed_queues(consumer) -> list[str]:
    try:
        return sorted(consumer.app.amqp.queues.consume_from)
    except Exception:  # noqa: BLE001 - an odd consumer: register it without its queues
        return []


@signals.worker_ready.connect
def on_worker_ready(sender=None, **kwargs) -> None:
    from django.db import connection

    from webapp.fleet.models import HEARTBEAT_SECONDS

    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    queues = _consumed_queues(sender)
    device = device_name(queues)
    pool = getattr(sender, "pool", None)
    procs = synced = pool_processes(pool)
    try:
        register(hostname, queues, os.getpid(), device or "")
        sync_processes(hostname, procs)
    except Exception:  # noqa: BLE001 - the heartbeat registers it later
        log.warning("worker %s: could not register", hostname, exc_info=True)
        synced = None
        _forget_connection()
    finally:
        if not connection.in_atomic_block:
            connection.close()  # prefork children forked later must not inherit it
    old = _heartbeats.pop(hostname, None)
    if old is not None:
        old.stop()
    thread = _heartbeats[hostname] = Heartbeat(hostname, queues, device, HEARTBEAT_SECONDS, pool=pool, synced=synced)
    thread.start()


@signals.worker_shutdown.connect
def on_worker_shutdown(sender=None, **kwargs) -> None:
    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    thread = _heartbeats.pop(hostname, None)
    if thread is not None:
        thread.stop()
    try:
        _workers().filter(hostname=hostname).update(status="offline", last_seen=_now())
        forget_processes(_processes().filter(worker__hostname=hostname))
        log.info("worker %s offline (shut down)", hostname)
    except Exception:  # noqa: BLE001 - it will show as lost instead
        log.warning("worker %s: could not mark offline", hostname, exc_info=True)
        _forget_connection()


@signals.worker_process_shutdown.connect
def on_worker_process_shutdown(sender=None, pid=None, **kwargs) -> None:
    """A prefork pool process exits cleanly (--max-tasks-per-child, pool shrinking, shutdown):
    in that process, its row goes now rather than at its worker's next heartbeat."""
    if not pid:
        return
    try:
        forget_processes(_processes().filter(identity=process_identity(pid)))
    except Exception:  # noqa: BLE001 - the worker's heartbeat forgets it later
        log.warning("worker %s: could not forget pool process %s", sender, pid, exc_info=True)
        _forget_connection()


# -- the task in flight (the process that runs it) ------------------------------------------------
def _task_hostname(task) -> str | None:
    request = getattr(task, "request", None)
    return getattr(request, "hostname", None) if request is not None else None


def _object_id(args) -> int | None:
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


def _pool_index() -> int | None:
    try:
        from billiard.process import current_process

        return getattr(current_process(), "index", None)
    except Exception:  # noqa: BLE001 - only shown on the page
        return None


# Only the training tasks are recorded: they run for minutes and are what the page is for.
# An advance or a reap takes milliseconds; two more UPDATEs around each cost the synthetic
# 20,000-child bench about 10% of its wall time and would show for no one to see.
TRACKED_TASKS = (dispatch.TASK_TRAIN_CHILD, dispatch.TASK_TRAIN_JOB, dispatch.TASK_TRAIN_SELECTION)


@signals.task_prerun.connect
def on_task_prerun(sender=None, task=None, args=None, **kwargs) -> None:
    task = task or sender
    hostname = _task_hostname(task)
    if not hostname or getattr(task, "name", None) not in TRACKED_TASKS:  # eager, or a short task
        return
    pid = os.getpid()
    identity = process_identity(pid)
    fields = dict(
        task_name=(task.name or "").rsplit(".", 1)[-1][:100], task_object_id=_object_id(args), task_started_at=_now()
    )
    try:
        if _processes().filter(identity=identity, worker__hostname=hostname).update(**fields):
            return
        # Not recorded yet (its worker's heartbeat has not seen it, or could not write).
        worker = _workers().filter(hostname=hostname).first()
        if worker is None:
            return
        forget_processes(_processes().filter(identity=identity))
        _processes().update_or_create(
            identity=identity, defaults={"worker": worker, "pid": pid, "index": _pool_index(), **fields}
        )
    except Exception:  # noqa: BLE001 - never break the task
        log.warning("worker %s: could not record task %s", hostname, getattr(task, "name", "?"), exc_info=True)
        _forget_connection()


@signals.task_postrun.connect
def on_task_postrun(sender=None, task=None, **kwargs) -> None:
    from django.db.models import F

    task = task or sender
    hostname = _task_hostname(task)
    if not hostname or getattr(task, "name", None) not in TRACKED_TASKS:
        return
    try:
        _processes().filter(identity=process_identity(os.getpid())).update(
            task_name="", task_object_id=None, task_started_at=None, tasks_done=F("tasks_done") + 1
        )
    except Exception:  # noqa: BLE001 - never break the task
        log.warning("worker %s: could not clear its task", hostname, exc_info=True)
        _forget_connection()


# -- the reaper's part ----------------------------------------------------------------------------
TASK_LABELS = {
    "train_child": "child run",
    "run_training_job": "training job",
    "train_selection_run": "selection run",
    "advance_search": "advance search",
}


def describe_task(task_name: str, object_id: int | None) -> str:
    """ "child run 12", "training job 3", "advance search 7", "reap"."""
    name = TASK_LABELS.get(task_name, task_name)
    return f"{name} {object_id}" if object_id is not None else name


def mark_lost_workers(now=None) -> list[str]:
    """Online workers silent for longer than LOST_AFTER_SECONDS -> lost, each logged once.
    Silent: neither its own heartbeat nor a lease heartbeat of one of its processes within
    that time. Their child runs need nothing here: the leases expire and the reaper
    requeues them."""
    from webapp.fleet.models import lease_beats, lost_cutoff

    now = now or _now()
    cutoff = lost_cutoff(now)
    lost = []
    try:
        quiet = list(_workers().filter(status="online", last_seen__lt=cutoff).prefetch_related("processes"))
        beats = lease_beats(p.identity for w in quiet for p in w.processes.all())
        for worker in quiet:
            heard = worker.last_heard(beats)
            if heard >= cutoff:
                continue  # busy: one of its processes keeps the lease of what it trains
            # Conditional: of two reapers, or a heartbeat arriving meanwhile, one wins.
            if not _workers().filter(pk=worker.pk, status="online", last_seen__lt=cutoff).update(status="lost"):
                continue
            lost.append(worker.hostname)
            doing = ", ".join(
                describe_task(p.task_name, p.task_object_id) for p in worker.processes.all() if p.task_name
            )
            log.warning(
                "worker %s lost (last seen %s, %.0f s ago)%s",
                worker.hostname,
                heard.isoformat(timespec="seconds"),
                (now - heard).total_seconds(),
                f"; it was running {doing}" if doing else "",
            )
    except Exception:  # noqa: BLE001 - the reaper's real work must go on
        log.warning("could not check for lost workers", exc_info=True)
    return lost
