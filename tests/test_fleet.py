"""The workers fleet (workers/fleet.py, webapp/fleet) and the log lines that say what happened.

Signal handlers are called directly with what Celery passes them (a consumer, the real
task objects with a request pushed), the reaper marks silent workers lost, the staff page
and its JSON show workers, their processes, queue depths and the task in flight. Real
`celery worker` subprocesses register themselves and show the child they train; prefork
ones show each pool process as itself, forget the processes that exited, and stay online
while a pool process trains though their main process is silent. The broker is a Redis
database of this module's own (flushed before each test).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.celery_worker import WorkerSet, flush_redis, use_broker, worker_env

SYNTHETIC = {"name": "synthetic", "noise": 0.0, "duration_s": 0.0, "failure_rate": 0.0}


def fleet_redis_url(database_name: str) -> str:
    """Redis database 1..9 by test database name: apart from the orchestration tests' 10..15."""
    default = f"redis://127.0.0.1:6379/{1 + zlib.crc32(('fleet:' + database_name).encode()) % 9}"
    return os.environ.get("NAS_TEST_FLEET_REDIS_URL", default)


@pytest.fixture(scope="module")
def broker_url(django_db_setup, django_db_blocker):
    from django.db import connection

    from webapp.celery import app

    before = app.conf.broker_url
    url = fleet_redis_url(connection.settings_dict["NAME"])
    use_broker(url)
    yield url
    use_broker(before)


@pytest.fixture(autouse=True)
def broker(broker_url):
    from webapp import dispatch

    flush_redis(broker_url)
    dispatch.ensure_queues()
    return broker_url


@pytest.fixture
def logs(caplog):
    """caplog sees the "nasnet" loggers (settings.LOGGING stops them at "nasnet")."""
    root = logging.getLogger("nasnet")
    propagate, root.propagate = root.propagate, True
    caplog.set_level(logging.INFO, logger="nasnet")
    yield caplog
    root.propagate = propagate


def messages(caplog, logger: str | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records if logger is None or r.name == logger]


def consumer(hostname: str, *queues: str):
    """What worker_ready sends: the worker's consumer (its node name and app)."""
    return SimpleNamespace(
        hostname=hostname,
        app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={q: None for q in queues}))),
    )


@pytest.fixture
def no_heartbeat_thread(monkeypatch):
    """Handlers start a heartbeat thread; in a rolled-back test it must not write."""
    monkeypatch.setattr("webapp.fleet.models.HEARTBEAT_SECONDS", 3600.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def run_task(task, hostname: str, *args):
    """Fire task_prerun/task_postrun as a worker does, around nothing."""
    from workers import fleet

    task.push_request(hostname=hostname, id="t-1", args=list(args))
    try:
        fleet.on_task_prerun(sender=task, task_id="t-1", task=task, args=list(args), kwargs={})
        yield
        fleet.on_task_postrun(sender=task, task_id="t-1", task=task, args=list(args), kwargs={}, retval=None)
    finally:
        task.pop_request()


@pytest.fixture
def search(personas):
    from webapp.searches.services import submit_search

    budget = {"children": 2, "parallel": 2}
    spec = {"dataset": "digits", "objective": dict(SYNTHETIC), "strategy": "random", "budget": budget}
    return submit_search(user=personas.owner, team=personas.alpha, name="fleet <search>", spec_data=spec)


def first_run(search):
    from webapp.searches import models as m
    from workers import advance

    advance.advance(search.id)
    return m.ChildRun.objects.filter(architecture__search=search).order_by("id").first()


# -- signal handlers ------------------------------------------------------------------------------
def test_a_worker_registers_shows_its_task_and_goes_offline(db, search, no_heartbeat_thread, logs):
    from webapp.fleet.models import Worker, WorkerProcess
    from workers import fleet, leases, tasks

    fleet.on_worker_ready(sender=consumer("cpu@box", "gpu"))  # no prefork pool: tasks run in this process
    w = Worker.objects.get(hostname="cpu@box")
    assert (w.queues, w.device, w.status, w.pid) == ("gpu", "CPU", "online", os.getpid())
    assert f"worker cpu@box online: queues gpu, device CPU, pid {os.getpid()}" in messages(logs, "nasnet.fleet")
    (proc,) = w.processes.all()
    # Named as the leases this process claims name their owner.
    assert (proc.identity, proc.pid, proc.index, proc.task_name) == (leases.worker_id(), os.getpid(), None, "")

    run = first_run(search)
    steps = run_task(tasks.train_child, "cpu@box", run.id)
    next(steps)
    proc.refresh_from_db()
    assert (proc.task_name, proc.task_object_id) == ("train_child", run.id) and proc.task_started_at is not None
    next(steps, None)
    proc.refresh_from_db()
    assert (proc.task_name, proc.task_object_id, proc.task_started_at, proc.tasks_done) == ("", None, None, 1)

    fleet.on_worker_shutdown(sender=SimpleNamespace(hostname="cpu@box"))
    w.refresh_from_db()
    assert w.status == "offline"
    assert not WorkerProcess.objects.exists() and w.tasks_done == 1  # its processes' count stays with it
    assert "worker cpu@box offline (shut down)" in messages(logs)
    assert "cpu@box" not in fleet._heartbeats


def test_a_controller_worker_trains_on_nothing_and_a_gpu_worker_is_probed(monkeypatch):
    from workers import fleet

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert fleet.device_name(["controller"]) == ""
    assert fleet.device_name(["gpu"]) is None  # the heartbeat thread runs the probe
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert fleet.device_name(["gpu"]) == "CPU"
    monkeypatch.setattr(fleet, "DEVICE_PROBE", "print('NVIDIA Test GPU')")
    assert fleet.probe_device() == "NVIDIA Test GPU"
    monkeypatch.setattr(fleet, "DEVICE_PROBE", "raise SystemExit(3)")
    assert fleet.probe_device() == "unknown"


def test_heartbeats_keep_a_worker_online_and_bring_a_lost_one_back(db, logs):
    from webapp.fleet.models import Worker
    from workers import fleet

    old = timezone.now() - timedelta(minutes=5)
    Worker.objects.create(hostname="gpu0@box", queues="gpu", device="GPU", last_seen=old, status="lost")
    fleet.beat("gpu0@box", ["gpu"], 1, "GPU")
    w = Worker.objects.get(hostname="gpu0@box")
    assert w.status == "online" and w.last_seen > old
    assert "worker gpu0@box is back online" in messages(logs)
    fleet.beat("gpu0@box", ["gpu"], 1, "GPU")  # the usual case: one UPDATE, no log line
    assert messages(logs).count("worker gpu0@box is back online") == 1
    # A row deleted meanwhile (staff cleaned up in admin) is registered again.
    fleet.beat("gpu1@box", ["gpu"], 2, "GPU")
    assert Worker.objects.get(hostname="gpu1@box").pid == 2


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_goes_on_while_the_device_is_probed(monkeypatch):
    """Probing a GPU (a subprocess importing torch and initialising CUDA, with a 120 s
    timeout) can take longer than LOST_AFTER_SECONDS: beats must not wait for it."""
    from webapp.fleet.models import Worker
    from workers import fleet

    monkeypatch.setattr(fleet, "DEVICE_PROBE", "import time; time.sleep(4); print('NVIDIA Slow GPU')")
    old = timezone.now() - timedelta(hours=1)
    Worker.objects.create(hostname="gpu9@box", queues="gpu", last_seen=old)
    heartbeat = fleet.Heartbeat("gpu9@box", ["gpu"], None, interval=0.2)
    heartbeat.start()
    try:
        deadline = time.monotonic() + 3.0  # the probe is still running
        while not Worker.objects.filter(hostname="gpu9@box", last_seen__gt=old).exists():
            assert time.monotonic() < deadline, "no heartbeat while the device was probed"
            time.sleep(0.05)
        assert Worker.objects.get(hostname="gpu9@box").device == ""
        deadline = time.monotonic() + 30.0
        while Worker.objects.get(hostname="gpu9@box").device != "NVIDIA Slow GPU":
            assert time.monotonic() < deadline, "the probe's answer was not written"
            time.sleep(0.1)
    finally:
        heartbeat.stop()


def test_a_failing_fleet_write_never_breaks_the_task(db, monkeypatch, logs):
    from django.db import DatabaseError

    from workers import fleet, tasks

    def broken():
        raise DatabaseError("connection lost")

    monkeypatch.setattr(fleet, "_workers", broken)
    monkeypatch.setattr(fleet, "_processes", broken)
    steps = run_task(tasks.train_child, "gpu0@box", 7)
    next(steps)
    next(steps, None)
    fleet.on_worker_shutdown(sender=SimpleNamespace(hostname="gpu0@box"))
    assert fleet.mark_lost_workers() == []
    assert "worker gpu0@box: could not record task workers.tasks.train_child" in messages(logs)
    assert "worker gpu0@box: could not clear its task" in messages(logs)


def test_tasks_run_outside_a_worker_touch_no_row(db):
    from webapp.fleet.models import Worker, WorkerProcess
    from workers import fleet, tasks

    Worker.objects.create(hostname="gpu0@box")
    fleet.on_task_prerun(sender=tasks.reap, task_id="x", task=tasks.reap, args=[], kwargs={})
    fleet.on_task_prerun(sender=tasks.train_child, task_id="y", task=tasks.train_child, args=[1], kwargs={})
    assert not WorkerProcess.objects.exists()


def process(worker, pid: int, **fields):
    """A process row of `worker`, named as a lease of that process would name its owner."""
    from webapp.fleet.models import WorkerProcess

    return WorkerProcess.objects.create(worker=worker, identity=f"{worker.hostname}:{pid}", pid=pid, **fields)


# -- the reaper: lost workers -----------------------------------------------------------------------
@pytest.fixture
def only_our_workers(db):
    """No Worker rows but the test's own: a real worker of an earlier test may write its
    goodbye (or a last heartbeat) after that test's tables were emptied."""
    from webapp.fleet.models import Worker

    Worker.objects.all().delete()


def test_the_reaper_marks_a_silent_worker_lost_and_says_so_once(db, only_our_workers, logs):
    from webapp.fleet.models import LOST_AFTER_SECONDS, Worker
    from workers import reaper

    silent = timezone.now() - timedelta(seconds=LOST_AFTER_SECONDS + 5)
    gpu0 = Worker.objects.create(hostname="gpu0@box", last_seen=silent)
    process(gpu0, 11, index=0, task_name="train_child", task_object_id=9)
    process(gpu0, 12, index=1)
    Worker.objects.create(hostname="gpu1@box", queues="gpu")  # just seen
    Worker.objects.create(hostname="gpu2@box", queues="gpu", last_seen=silent, status="offline")  # stopped cleanly
    assert Worker.objects.get(hostname="gpu0@box").shown_status() == "lost"  # before the reaper stores it

    assert reaper.reap()["workers_lost"] == ["gpu0@box"]
    assert reaper.reap()["workers_lost"] == []
    statuses = dict(Worker.objects.values_list("hostname", "status"))
    assert statuses == {"gpu0@box": "lost", "gpu1@box": "online", "gpu2@box": "offline"}
    lost = [line for line in messages(logs, "nasnet.fleet") if " lost " in line]
    assert len(lost) == 1, lost
    assert lost[0].startswith("worker gpu0@box lost (last seen ")
    assert lost[0].endswith("s ago); it was running child run 9")


def test_a_quiet_worker_whose_process_keeps_a_lease_is_busy_not_lost(db, search, only_our_workers, logs):
    """Its own heartbeat is old, but one of its processes heartbeats the lease of what it
    trains (any kind of leased work): busy. Once that lease falls silent too: lost."""
    from webapp.fleet.models import LOST_AFTER_SECONDS, Worker
    from webapp.searches import models as m
    from workers import fleet

    now = timezone.now()
    quiet = now - timedelta(seconds=LOST_AFTER_SECONDS + 60)
    run = first_run(search)
    arch = run.architecture
    selection = m.Selection.objects.create(
        search=search, owner=search.owner, top_k=1, seeds=1, recipe={"epochs": 1}, status=m.RUN_RUNNING
    )
    gpu0 = Worker.objects.create(hostname="gpu0@box", queues="gpu", last_seen=quiet)
    busy = process(gpu0, 7, index=0, task_name="train_selection_run")
    process(gpu0, 8, index=1)
    pick = m.SelectionRun.objects.create(
        selection=selection, architecture=arch, seed=0, status=m.RUN_RUNNING, attempt=1, worker=busy.identity
    )
    busy.task_object_id = pick.id
    busy.save()
    # Another node's process with a fresh lease says nothing about gpu0.
    other = process(Worker.objects.create(hostname="gpu1@box", queues="gpu"), 9)
    m.ChildRun.objects.filter(pk=run.pk).update(status=m.RUN_RUNNING, worker=other.identity, heartbeat_at=now)

    m.SelectionRun.objects.filter(pk=pick.pk).update(heartbeat_at=now - timedelta(seconds=2))
    assert Worker.objects.get(pk=gpu0.pk).shown_status() == "online"
    assert fleet.mark_lost_workers() == []

    m.SelectionRun.objects.filter(pk=pick.pk).update(heartbeat_at=quiet)
    assert Worker.objects.get(pk=gpu0.pk).shown_status() == "lost"
    assert fleet.mark_lost_workers() == ["gpu0@box"]
    (line,) = [line for line in messages(logs, "nasnet.fleet") if " lost " in line]
    assert line.endswith(f"; it was running selection run {pick.id}"), line


# -- the staff page ---------------------------------------------------------------------------------
def test_only_staff_see_the_workers_page(client, personas):
    for name in ("fleet:workers", "fleet:workers_json"):
        url = reverse(name)
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
        client.force_login(personas.member)
        assert client.get(url).status_code == 404
        client.force_login(personas.staff)
        assert client.get(url).status_code == 200
        client.logout()
    client.force_login(personas.member)
    assert reverse("fleet:workers") not in client.get(reverse("front:index")).content.decode()
    client.force_login(personas.staff)
    assert reverse("fleet:workers") in client.get(reverse("front:index")).content.decode()


def test_the_page_shows_workers_their_tasks_and_queue_depths(client, personas, search, only_our_workers):
    from webapp import dispatch
    from webapp.fleet.models import Worker

    run = first_run(search)
    arch = run.architecture
    now = timezone.now()
    gpu0 = Worker.objects.create(hostname="gpu0@box", queues="gpu", device="NVIDIA H100 80GB HBM3", tasks_done=40)
    started = now - timedelta(seconds=12)
    process(gpu0, 7, index=0, task_name="train_child", task_object_id=run.id, task_started_at=started, tasks_done=1)
    controller = Worker.objects.create(hostname="controller@box", queues="controller")
    process(controller, 8, task_name="advance_search")
    Worker.objects.create(hostname="gpu1@box", queues="gpu", device="CPU", last_seen=now - timedelta(minutes=2))
    Worker.objects.create(hostname="old@box", status="offline", last_seen=now - timedelta(days=3))
    for _ in range(3):  # waiting in the broker, no worker consumes them
        dispatch.send(dispatch.TASK_TRAIN_CHILD, 0)

    client.force_login(personas.staff)
    data = client.get(reverse("fleet:workers_json")).json()
    assert data["queues"] == {"controller": 0, "gpu": 3}
    assert data["child_runs"] == {"queued": 2, "running": 0}
    assert data["training_jobs"] == {"queued": 0, "running": 0}
    assert data["online"] == 2
    rows = {w["hostname"]: w for w in data["workers"]}
    assert list(rows) == ["controller@box", "gpu0@box", "gpu1@box"]  # online first; old offline rows hidden
    gpu0 = rows["gpu0@box"]
    assert (gpu0["status"], gpu0["device"], gpu0["queues"], gpu0["tasks_done"]) == (
        "online",
        "NVIDIA H100 80GB HBM3",
        ["gpu"],
        41,
    )
    assert gpu0["busy"] and [p["label"] for p in gpu0["processes"]] == ["#0 (pid 7)"]
    task = gpu0["processes"][0]["task"]
    assert task["label"] == f"child run {run.id} (attempt 0)" and task["since_s"] >= 12
    assert task["architecture"] == {
        "id": arch.id,
        "sample_index": arch.sample_index,
        "url": reverse("front:architecture", args=[arch.id]),
    }
    assert task["search"] == {"id": search.id, "name": search.name, "url": reverse("front:search", args=[search.id])}
    assert rows["gpu1@box"]["status"] == "lost" and rows["gpu1@box"]["processes"] == []
    assert not rows["gpu1@box"]["busy"]
    assert rows["controller@box"]["processes"][0]["task"]["label"] == "advance search"

    page = client.get(reverse("fleet:workers")).content.decode()
    for text in ("gpu0@box", "NVIDIA H100 80GB HBM3", f"child run {run.id}", ">41<", "idle", "fleet/workers.js"):
        assert text in page, text
    assert f'href="{reverse("front:architecture", args=[arch.id])}"' in page
    assert f'href="{reverse("front:search", args=[search.id])}"' in page
    assert "fleet &lt;search&gt;" in page and "fleet <search>" not in page
    assert 'data-stat="queues.gpu">3<' in page
    assert "old@box" not in page


def test_a_training_job_and_an_advance_link_to_their_pages(client, personas, search):
    from webapp.fleet.models import Worker
    from webapp.searches import models as m
    from webapp.searches.services import create_training_job

    arch = first_run(search).architecture
    job = create_training_job(
        user=personas.owner,
        team=personas.alpha,
        name="transfer",
        genotype=arch.genotype,
        dataset={"name": "digits"},
        recipe={"epochs": 1},
        architecture=arch,
    )
    selection = m.Selection.objects.create(
        search=search, owner=personas.owner, top_k=1, seeds=1, recipe={"epochs": 1}, status=m.RUN_RUNNING
    )
    pick = m.SelectionRun.objects.create(selection=selection, architecture=arch, seed=3, status=m.RUN_RUNNING)
    process(Worker.objects.create(hostname="gpu0@box"), 7, task_name="run_training_job", task_object_id=job.id)
    process(Worker.objects.create(hostname="controller@box"), 8, task_name="advance_search", task_object_id=search.id)
    process(Worker.objects.create(hostname="gpu1@box"), 9, task_name="train_selection_run", task_object_id=pick.id)
    client.force_login(personas.staff)
    data = client.get(reverse("fleet:workers_json")).json()
    rows = {w["hostname"]: w["processes"][0]["task"] for w in data["workers"]}
    assert rows["gpu0@box"]["label"] == f"training job {job.id}: transfer"
    assert rows["gpu0@box"]["url"] == reverse("front:training_job", args=[job.id])
    assert rows["gpu0@box"]["search"]["id"] == search.id
    assert rows["controller@box"]["url"] == reverse("front:search", args=[search.id])
    assert rows["gpu1@box"]["label"] == f"selection run {pick.id} (seed 3)"
    assert rows["gpu1@box"]["url"] == reverse("front:selection", args=[selection.id])
    assert rows["gpu1@box"]["architecture"]["id"] == arch.id and rows["gpu1@box"]["search"]["id"] == search.id


# -- log lines ----------------------------------------------------------------------------------------
def test_submitting_and_steering_a_search_is_logged(personas, logs):
    from webapp.searches.services import submit_search, transition

    spec = {"dataset": "digits", "objective": "synthetic", "strategy": "evolution", "budget": {"children": 30}}
    search = submit_search(user=personas.owner, team=personas.alpha, name="logged", spec_data=spec)
    transition(search, "pause")
    transition(search, "cancel")
    lines = messages(logs, "nasnet.service")
    assert (
        f"search {search.id} submitted by owner for team alpha: 'logged', evolution on digits (synthetic), "
        "30 children, 1 in parallel" in lines
    ), lines
    assert f"search {search.id}: pause (queued -> paused)" in lines
    assert f"search {search.id}: cancel (paused -> cancelling)" in lines


def test_child_results_and_failures_are_logged_with_the_reason(search, settings, logs):
    from webapp.searches import models as m
    from workers import child_runs

    settings.NAS_MAX_ATTEMPTS = 2
    run = first_run(search)
    claimed = child_runs.claim(run.id)
    child_runs.retry_or_fail(claimed, "RuntimeError: CUDA out of memory")
    claimed = child_runs.claim(run.id)
    child_runs.retry_or_fail(claimed, "RuntimeError: CUDA out of memory")
    assert m.ChildRun.objects.get(pk=run.id).status == m.RUN_FAILED
    other = m.ChildRun.objects.filter(architecture__search=search).exclude(pk=run.id).get()
    child_runs.finish(child_runs.claim(other.id), m.RUN_SUCCEEDED, reward=0.875, wall_time=12.34)

    lines = messages(logs, "nasnet.worker")
    assert f"child run {run.id} failed on attempt 1 (RuntimeError: CUDA out of memory), queued for a retry" in lines, (
        lines
    )
    assert (
        f"child run {run.id} of search {search.id} failed: RuntimeError: CUDA out of memory (after 2 attempts)" in lines
    ), lines
    assert f"child run {other.id} of search {search.id} finished: reward 0.8750 after 12.3 s" in lines


def test_an_expired_lease_is_logged_when_requeued(search, logs):
    from webapp.searches import models as m
    from workers import child_runs, reaper

    run = first_run(search)
    claimed = child_runs.claim(run.id)
    m.ChildRun.objects.filter(pk=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert reaper.reap()["requeued"] == [run.id]
    assert f"child run {run.id}: lease expired (worker {claimed.worker}, attempt 1), requeued" in messages(logs)


# -- a real worker ------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_registers_and_shows_the_child_it_trains(broker, client):
    """A gpu-queue `celery worker` subprocess: online with its device, then the child run
    it trains (a synthetic child that takes 4 s) on the page, heartbeats, then offline
    when stopped."""
    from django.contrib.auth.models import User
    from django.db import connection

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.fleet.models import HEARTBEAT_SECONDS, Worker, WorkerProcess
    from webapp.searches import models as m
    from webapp.searches.services import submit_search
    from workers import advance

    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123", is_staff=True)
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    env = worker_env(connection.settings_dict["NAME"], broker)

    def until(what, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out\n{workers.logs()}")

    with WorkerSet(env) as workers:
        gpu = workers.start("gpu")
        row = until(lambda: Worker.objects.filter(hostname__startswith="gpu1@").first())
        assert (row.queues, row.device, row.status, row.pid) == ("gpu", "CPU", "online", gpu.proc.pid)

        spec = {
            "dataset": "digits",
            "objective": {**SYNTHETIC, "duration_s": 4.0},
            "strategy": "random",
            "budget": {"children": 1, "parallel": 1},
        }
        search = submit_search(user=user, team=team, name="watched", spec_data=spec)
        advance.advance(search.id)  # no controller worker: the test advances it
        run = m.ChildRun.objects.get(architecture__search=search)
        # The solo pool: the worker's own process runs the task.
        busy = until(lambda: WorkerProcess.objects.filter(worker=row, task_name="train_child").first())
        assert busy.task_object_id == run.id and busy.pid == gpu.proc.pid
        assert m.ChildRun.objects.get(pk=run.id).worker == busy.identity

        client.force_login(user)
        # Only this worker's entry: a worker of an earlier test may still be saying goodbye.
        (shown,) = [
            w for w in client.get(reverse("fleet:workers_json")).json()["workers"] if w["hostname"] == row.hostname
        ]
        (task,) = [p["task"] for p in shown["processes"]]
        assert task["label"].startswith(f"child run {run.id} (attempt 1)")
        assert task["search"]["url"] == reverse("front:search", args=[search.id])

        until(lambda: WorkerProcess.objects.filter(pk=busy.pk, task_name="", tasks_done__gte=1).exists())
        assert m.ChildRun.objects.get(pk=run.id).status == m.RUN_SUCCEEDED
        # As if its heartbeats had stopped reaching the database for a while: the next one
        # (every HEARTBEAT_SECONDS, from its own thread) brings it back.
        Worker.objects.filter(pk=row.pk).update(status="lost", last_seen=timezone.now() - timedelta(hours=1))
        recent = timezone.now() - timedelta(seconds=HEARTBEAT_SECONDS + 5)
        until(lambda: Worker.objects.filter(pk=row.pk, status="online", last_seen__gt=recent).exists(), timeout=30)
        gpu.stop()
        assert Worker.objects.get(pk=row.pk).status == "offline"
        assert not WorkerProcess.objects.filter(worker=row).exists()
        output = gpu.output()
        assert "worker gpu1@" in output and "online: queues gpu, device CPU" in output
        assert f"child run {run.id} of search {search.id} finished: reward" in output
        assert " is back online" in output
        assert "could not" not in output and "not written" not in output, output


def test_admin_lists_workers_read_only(client, personas):
    from webapp.fleet.models import Worker

    worker = Worker.objects.create(hostname="gpu0@box", queues="gpu", device="NVIDIA H100 80GB HBM3")
    client.force_login(personas.staff)
    listing = client.get(reverse("admin:fleet_worker_changelist"))
    assert listing.status_code == 200 and "gpu0@box" in listing.content.decode()
    assert client.get(reverse("admin:fleet_worker_add")).status_code == 403
    page = client.get(reverse("admin:fleet_worker_change", args=[worker.pk]))
    assert page.status_code == 200 and 'name="hostname"' not in page.content.decode()


def test_a_database_outage_is_logged_once_by_the_heartbeat(db, logs):
    from django.db import OperationalError

    from workers import fleet

    def down():
        raise OperationalError("server closed the connection unexpectedly")

    heartbeat = fleet.Heartbeat("gpu0@box", ["gpu"], "CPU", interval=3600)  # never started: beats by hand
    for _ in range(3):
        heartbeat._write(down)
    heartbeat._write(lambda: None)
    lines = messages(logs, "nasnet.fleet")
    assert lines == [
        "worker gpu0@box: heartbeat not written (retrying quietly)",
        "worker gpu0@box: heartbeats written again",
    ]


# -- pool processes and busy workers (real prefork workers) -------------------------------------------
def pool_pids(parent: int) -> set[int]:
    """The live child processes of `parent` (a prefork worker's pool), from /proc."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == parent:
            pids.add(int(entry))
    return pids


def shown_processes(row: dict) -> dict[str, dict]:
    """The pool processes the page shows for one worker, by identity (host:pid, as leases name their owner)."""
    return {p["identity"]: p for p in row["processes"]}


@pytest.fixture
def real_world(broker, client):
    """A staff owner of team alpha, logged in, and the env for worker subprocesses."""
    from django.contrib.auth.models import User
    from django.db import connection

    from webapp.accounts.models import ROLE_OWNER, Membership, Team

    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123", is_staff=True)
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    client.force_login(user)
    env = worker_env(connection.settings_dict["NAME"], broker)
    return SimpleNamespace(team=team, user=user, env=env, client=client)


def until(what, timeout=60.0, logs=lambda: ""):
    """What `what()` returns once it is true; AssertionError with `logs()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out\n{logs()}")


def watched_search(world, name: str, children: int, duration_s: float):
    from webapp.searches.services import submit_search
    from workers import advance

    spec = {
        "dataset": "digits",
        "objective": {**SYNTHETIC, "duration_s": duration_s},
        "strategy": "random",
        "budget": {"children": children, "parallel": children},
    }
    search = submit_search(user=world.user, team=world.team, name=name, spec_data=spec)
    advance.advance(search.id)  # no controller worker: the test advances it
    return search


def shown_worker(client, hostname: str) -> dict:
    (row,) = [w for w in client.get(reverse("fleet:workers_json")).json()["workers"] if w["hostname"] == hostname]
    return row


@pytest.mark.django_db(transaction=True)
def test_a_busy_worker_is_not_lost_while_its_pool_process_trains(real_world):
    """The worker's main process falls silent (SIGSTOP: as a stalled main process, a hung
    heartbeat connection or a slow device probe would) while its pool process trains a
    child and keeps that child's lease: the worker is busy, not lost. Once it holds no
    work and is still silent, it is lost."""
    import signal

    from webapp.fleet.models import Worker
    from webapp.searches import models as m
    from workers import reaper

    world = real_world
    with WorkerSet(world.env) as workers:
        gpu = workers.start("gpu", "--pool=prefork", "--concurrency=1")
        node = until(lambda: Worker.objects.filter(hostname__startswith="gpu1@").first(), logs=workers.logs)
        search = watched_search(world, "busy", children=1, duration_s=12.0)
        run = m.ChildRun.objects.get(architecture__search=search)
        run = until(lambda: m.ChildRun.objects.filter(pk=run.pk, status=m.RUN_RUNNING).first(), logs=workers.logs)
        assert int(run.worker.rsplit(":", 1)[1]) in pool_pids(gpu.proc.pid)

        os.kill(gpu.proc.pid, signal.SIGSTOP)
        try:
            silent_since = timezone.now() - timedelta(hours=1)
            Worker.objects.filter(pk=node.pk).update(last_seen=silent_since)  # as if silent for an hour
            # The pool process still trains: its lease heartbeats go on.
            beat = timezone.now()
            until(lambda: m.ChildRun.objects.filter(pk=run.pk, heartbeat_at__gt=beat).exists(), timeout=15)
            assert node.hostname not in reaper.reap()["workers_lost"]
            row = shown_worker(world.client, node.hostname)
            assert row["status"] == "online", row
            (proc,) = shown_processes(row).values()
            assert proc["identity"] == run.worker and proc["task"]["label"] == f"child run {run.id} (attempt 1)"
            assert Worker.objects.get(pk=node.pk).status == "online"

            # The child finished: the worker holds nothing and its main process is still silent.
            until(lambda: m.ChildRun.objects.filter(pk=run.pk, status=m.RUN_SUCCEEDED).exists(), timeout=30)
            Worker.objects.filter(pk=node.pk).update(last_seen=silent_since)
            assert node.hostname in reaper.reap()["workers_lost"]
            assert shown_worker(world.client, node.hostname)["status"] == "lost"
        finally:
            os.kill(gpu.proc.pid, signal.SIGCONT)
        # Heard from again: back online.
        until(lambda: Worker.objects.filter(pk=node.pk, status="online").exists(), timeout=30, logs=workers.logs)


@pytest.mark.django_db(transaction=True)
def test_each_pool_process_reports_as_itself_and_exited_ones_expire(real_world):
    """A prefork worker with two pool processes training two children at once: each shows
    under the worker by its own identity (the one its leases carry) with its own child.
    With --max-tasks-per-child=1 both are replaced after their child; the page then shows
    the new processes only, and after a restart (killed, started again under the same
    name) only the new worker's."""
    from tests.celery_worker import Worker as CeleryWorker
    from webapp.fleet.models import Worker
    from webapp.searches import models as m

    world = real_world
    with WorkerSet(world.env) as workers:
        gpu = workers.start("gpu", "--pool=prefork", "--concurrency=2", "--max-tasks-per-child=1")
        node = until(lambda: Worker.objects.filter(hostname__startswith="gpu1@").first(), logs=workers.logs)
        search = watched_search(world, "two at once", children=2, duration_s=10.0)
        runs = m.ChildRun.objects.filter(architecture__search=search)
        until(lambda: runs.filter(status=m.RUN_RUNNING).count() == 2, logs=workers.logs)
        first = {run.worker: run.id for run in runs}
        assert len(first) == 2  # two processes, each holding its own run

        def shown_tasks():
            return {
                identity: p["task"]["id"] if p["task"] else None
                for identity, p in shown_processes(shown_worker(world.client, node.hostname)).items()
            }

        until(lambda: shown_tasks() == first, timeout=15, logs=lambda: f"shown {shown_tasks()}, running {first}")

        until(lambda: runs.filter(status=m.RUN_SUCCEEDED).count() == 2, timeout=30, logs=workers.logs)

        def current_identities():
            import socket

            return {f"{socket.gethostname()}:{pid}" for pid in pool_pids(gpu.proc.pid)}

        # Both processes exited after their one task and were replaced.
        until(
            lambda: len(current_identities()) == 2 and not current_identities() & set(first),
            timeout=30,
            logs=lambda: f"pool {current_identities()}, first {set(first)}\n{workers.logs()}",
        )
        until(
            lambda: set(shown_tasks()) == current_identities(),
            timeout=30,
            logs=lambda: f"shown {shown_tasks()}, pool {current_identities()}\n{workers.logs()}",
        )
        assert set(shown_tasks().values()) == {None}
        assert shown_worker(world.client, node.hostname)["tasks_done"] == 2

        gpu.kill()  # its pool processes die with it
        again = CeleryWorker("gpu", world.env, gpu.name, ["--pool=prefork", "--concurrency=2"])
        workers.workers.append(again)
        again.wait_ready()
        until(lambda: len(pool_pids(again.proc.pid)) == 2, timeout=30)

        def restarted_identities():
            import socket

            return {f"{socket.gethostname()}:{pid}" for pid in pool_pids(again.proc.pid)}

        until(
            lambda: set(shown_tasks()) == restarted_identities(),
            timeout=30,
            logs=lambda: f"shown {shown_tasks()}, pool {restarted_identities()}\n{workers.logs()}",
        )
        again.stop()
        assert shown_worker(world.client, node.hostname)["status"] == "offline"
        assert shown_tasks() == {}
