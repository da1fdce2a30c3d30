"""A worker's side of the lease protocol (webapp.searches.models.LeasedWork): who this
worker is, heartbeats while it trains, and heartbeats while it does something long that
reports no progress.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from nas_engine.trainer import EpochMetrics, Reporter
from webapp import dispatch
from webapp.searches import models as m

log = logging.getLogger("nasnet.worker")


def worker_id() -> str:
    """The claim's owner: host and pid of the process that trains (read at claim time, so a
    forked pool process names itself, not its parent), which lets local mode tell the
    claims of a dead local worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


def retry_or_fail(row: m.LeasedWork, label: str, error: str, task: str, fail: Callable[[str], object]) -> None:
    """An attempt that raised: the row goes back to the queue and its task is sent again,
    or, once it used its NAS_MAX_ATTEMPTS, `fail(error)` writes its final failure."""
    if row.attempt >= settings.NAS_MAX_ATTEMPTS:
        fail(f"{error} (after {row.attempt} attempts)")
    elif row.requeue():
        log.warning("%s failed on attempt %d (%s), queued for a retry", label, row.attempt, error)
        dispatch.send(task, row.pk)
    else:
        log.warning("%s failed on attempt %d (%s); no longer ours, not retried", label, row.attempt, error)


def beat_interval() -> float:
    return min(5.0, settings.NAS_LEASE_SECONDS / 3)


@contextmanager
def lease_kept(row: m.LeasedWork, label: str) -> Iterator[None]:
    """Heartbeats from a thread while the worker does something long that reports no
    progress: decoding a large image folder the first time can outlast the lease, and the
    reaper would hand the work to another worker meanwhile."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(beat_interval()):
                if not row.heartbeat():
                    return  # no longer ours: the training that follows notices and stops
        except Exception:  # noqa: BLE001 - the lease then runs out and the work is requeued
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


class LeaseReporter(Reporter):
    """Heartbeats, throttled epoch writes and the stop signal for one claimed row.

    A heartbeat that touches nothing means the row was taken away (lease expired and
    reclaimed, or cancelled). With `search_id`, training also stops when that search
    stops. `on_epochs(epochs)`, if given, is called after each epoch write (it publishes
    the live progress event).
    """

    def __init__(
        self,
        row: m.LeasedWork,
        label: str,
        search_id: int | None = None,
        every: float | None = None,
        on_epochs: Callable[[list[dict]], None] | None = None,
    ):
        self.row, self.label, self.search_id, self.on_epochs = row, label, search_id, on_epochs
        self.every = every if every is not None else beat_interval()
        self.epochs: list[dict] = []
        self.resumed_at = 0  # the epoch training resumed after (on_resume); 0: from scratch
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

    def on_resume(self, epoch: int, history: list[EpochMetrics]) -> None:
        """Training continues from a checkpoint: the epochs done before count as written, and
        the row says where this attempt picked up (for rows that record it)."""
        self.epochs = [e.to_dict() for e in history]
        self.resumed_at = epoch
        fields = {"epochs": list(self.epochs)}
        if hasattr(self.row, "resumed_from_epoch"):
            fields["resumed_from_epoch"] = epoch
        if not self.row.heartbeat(**fields):
            self.lost = True
            return
        log.info("%s: resumed from its checkpoint after epoch %d", self.label, epoch)
        if self.on_epochs is not None:
            self.on_epochs(self.epochs)

    def should_stop(self) -> bool:
        return self.lost or self.cancelled

    def _maybe_beat(self, force: bool = False) -> None:
        if self.lost or not (force or time.monotonic() - self.last_beat >= self.every):
            return
        self.last_beat = time.monotonic()
        fields = {}
        wrote_epochs = self.dirty
        if self.dirty:
            fields["epochs"] = list(self.epochs)
            self.dirty = False
        if not self.row.heartbeat(**fields):
            self.lost = True
            log.warning("%s: taken away (lease lost or search cancelled), stopping", self.label)
            return
        if wrote_epochs and self.on_epochs is not None:
            self.on_epochs(self.epochs)
        if self.search_id is not None:
            status = m.Search.objects.filter(pk=self.search_id).values_list("status", flat=True).first()
            self.cancelled = status in m.SEARCH_STOPPING
