"""Each worker keeps its own row in webapp.fleet's Worker table (the staff workers page).

- worker_ready: register (upsert by Celery node name: queues, pid, device) and start a
  heartbeat thread that writes `last_seen` every HEARTBEAT_SECONDS (one UPDATE). The
  thread lives in the worker's main process, so a worker busy training (prefork child,
  or the solo pool's main thread in native code) still shows as online.
- task_prerun / task_postrun (in whichever process runs the task): record and clear
  the task in flight, by its short name and first argument (child run, training job or
  search id): one UPDATE each. A worker with several processes (a controller started
  with --concurrency above 1) shows the task started last.
- worker_shutdown: the thread stops, the row says offline.
- mark_lost_workers(), called by the reaper: an online row silent for longer than
  LOST_AFTER_SECONDS becomes lost, logged once ("worker X lost (last seen ...)").

None of this may break a task: a failed write is logged and forgotten. The GPU's name
comes from a short subprocess, so the worker's main process never initialises CUDA
(prefork children forked after that could not use the GPU).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta

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


# -- registration and heartbeats (the worker's main process) -------------------------------------
def register(hostname: str, queues: list[str], pid: int, device: str) -> None:
    now = _now()
    _workers().update_or_create(
        hostname=hostname,
        defaults=dict(
            queues=",".join(queues),
            pid=pid,
            device=device,
            status="online",
            started_at=now,
            last_seen=now,
            task_name="",
            task_object_id=None,
            task_started_at=None,
        ),
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
    def __init__(self, hostname: str, queues: list[str], device: str | None, interval: float):
        super().__init__(name=f"fleet-heartbeat-{hostname}", daemon=True)
        self.hostname, self.queues, self.device, self.interval = hostname, queues, device, interval
        self.pid = os.getpid()
        self.stopping = threading.Event()
        self.failing = False  # a database outage is logged when it starts and when it ends

    def run(self) -> None:
        from django.db import connection

        try:
            if self.device is None:
                self.device = probe_device()
                self._write(lambda: _workers().filter(hostname=self.hostname).update(device=self.device))
            while not self.stopping.wait(self.interval):
                self._write(lambda: beat(self.hostname, self.queues, self.pid, self.device or ""))
        finally:
            connection.close()  # this thread's own connection

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
    try:
        register(hostname, queues, os.getpid(), device or "")
    except Exception:  # noqa: BLE001 - the heartbeat registers it later
        log.warning("worker %s: could not register", hostname, exc_info=True)
        _forget_connection()
    finally:
        if not connection.in_atomic_block:
            connection.close()  # prefork children forked later must not inherit it
    old = _heartbeats.pop(hostname, None)
    if old is not None:
        old.stop()
    thread = _heartbeats[hostname] = Heartbeat(hostname, queues, device, HEARTBEAT_SECONDS)
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
        _workers().filter(hostname=hostname).update(
            status="offline", last_seen=_now(), task_name="", task_object_id=None, task_started_at=None
        )
        log.info("worker %s offline (shut down)", hostname)
    except Exception:  # noqa: BLE001 - it will show as lost instead
        log.warning("worker %s: could not mark offline", hostname, exc_info=True)
        _forget_connection()


# -- the task in flight (the process that runs it) ------------------------------------------------
def _task_hostname(task) -> str | None:
    request = getattr(task, "request", None)
    return getattr(request, "hostname", None) if request is not None else None


def _object_id(args) -> int | None:
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


# Only the training tasks are recorded: they run for minutes and are what the page is for.
# An advance or a reap takes milliseconds; two more UPDATEs around each cost the synthetic
# 20,000-child bench about 10% of its wall time and would show for no one to see.
TRACKED_TASKS = (dispatch.TASK_TRAIN_CHILD, dispatch.TASK_TRAIN_JOB)


@signals.task_prerun.connect
def on_task_prerun(sender=None, task=None, args=None, **kwargs) -> None:
    task = task or sender
    hostname = _task_hostname(task)
    if not hostname or getattr(task, "name", None) not in TRACKED_TASKS:  # eager, or a short task
        return
    now = _now()
    try:
        _workers().filter(hostname=hostname).update(
            task_name=(task.name or "").rsplit(".", 1)[-1][:100],
            task_object_id=_object_id(args),
            task_started_at=now,
            last_seen=now,
            status="online",
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
        _workers().filter(hostname=hostname).update(
            task_name="", task_object_id=None, task_started_at=None, last_seen=_now(), tasks_done=F("tasks_done") + 1
        )
    except Exception:  # noqa: BLE001 - never break the task
        log.warning("worker %s: could not clear its task", hostname, exc_info=True)
        _forget_connection()


# -- the reaper's part ----------------------------------------------------------------------------
def describe_task(task_name: str, object_id: int | None) -> str:
    """ "child run 12", "training job 3", "advance search 7", "reap"."""
    label = {"train_child": "child run", "run_training_job": "training job", "advance_search": "advance search"}
    name = label.get(task_name, task_name)
    return f"{name} {object_id}" if object_id is not None else name


def mark_lost_workers(now=None) -> list[str]:
    """Online workers silent for longer than LOST_AFTER_SECONDS -> lost, each logged once.
    Their child runs need nothing here: the leases expire and the reaper requeues them."""
    from webapp.fleet.models import LOST_AFTER_SECONDS

    now = now or _now()
    cutoff = now - timedelta(seconds=LOST_AFTER_SECONDS)
    lost = []
    try:
        for worker in _workers().filter(status="online", last_seen__lt=cutoff):
            # Conditional: of two reapers, or a heartbeat arriving meanwhile, one wins.
            if not _workers().filter(pk=worker.pk, status="online", last_seen__lt=cutoff).update(status="lost"):
                continue
            lost.append(worker.hostname)
            doing = ""
            if worker.task_name:
                doing = f"; it was running {describe_task(worker.task_name, worker.task_object_id)}"
            log.warning(
                "worker %s lost (last seen %s, %.0f s ago)%s",
                worker.hostname,
                worker.last_seen.isoformat(timespec="seconds"),
                (now - worker.last_seen).total_seconds(),
                doing,
            )
    except Exception:  # noqa: BLE001 - the reaper's real work must go on
        log.warning("could not check for lost workers", exc_info=True)
    return lost
