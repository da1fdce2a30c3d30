"""The search loop across processes, end to end: real PostgreSQL, real Redis, real
`celery worker` subprocesses (a controller-queue worker and a gpu-queue worker).

Tests are transactional (`transaction=True`) so the workers see committed rows. The
workers get the test database through DATABASE_URL and a broker of their own (a Redis
database picked by the test database's name), which is flushed before every test. The reaper runs as the beat would:
the tests call it directly where a worker or a message was lost.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zlib

import pytest
import torch

from tests.celery_worker import WorkerSet, flush_redis, use_broker, worker_env

LEASE_SECONDS = 4
TEAM_SHARE = 3  # NAS_MAX_ACTIVE_RUNS_PER_TEAM of the workers: each team's share of the gpu queue
SYNTHETIC = {"name": "synthetic", "noise": 0.0, "duration_s": 0.0, "failure_rate": 0.0}

pytestmark = pytest.mark.django_db(transaction=True)


def redis_url(database_name: str) -> str:
    """A Redis database of this test run's own (10..15, by test database name), so two
    test runs on two test databases never consume each other's tasks."""
    default = f"redis://127.0.0.1:6379/{10 + zlib.crc32(database_name.encode()) % 6}"
    return os.environ.get("NAS_TEST_REDIS_URL", default)


class Stack:
    """The running workers; a test that kills one starts a replacement."""

    def __init__(self, workers: WorkerSet):
        self.workers = workers
        controller = workers.start("controller", wait=False)
        gpu = workers.start("gpu", wait=False)
        self.controller, self.gpu = controller.wait_ready(), gpu.wait_ready()

    def restart(self, which: str) -> None:
        setattr(self, which, self.workers.start(which))


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker):
    from django.db import connection

    name = connection.settings_dict["NAME"]
    url = redis_url(name)
    use_broker(url)
    flush_redis(url)
    artifacts = tempfile.mkdtemp(prefix="nas-artifacts-")  # bundles and job checkpoints
    env = worker_env(
        name,
        url,
        NAS_LEASE_SECONDS=LEASE_SECONDS,
        NAS_ARTIFACTS_ROOT=artifacts,
        NAS_MAX_ACTIVE_RUNS_PER_TEAM=TEAM_SHARE,
    )
    with WorkerSet(env) as workers:
        stack = Stack(workers)
        stack.redis_url = url
        yield stack
    shutil.rmtree(artifacts, ignore_errors=True)


@pytest.fixture
def owner(stack, settings):
    from django.contrib.auth.models import User

    from webapp import dispatch
    from webapp.accounts.models import ROLE_OWNER, Membership, Team

    settings.NAS_LEASE_SECONDS = LEASE_SECONDS
    flush_redis(stack.redis_url)
    dispatch.ensure_queues()
    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    return user, team


def submit(owner, **spec):
    from webapp.searches.services import submit_search

    user, team = owner
    base = {"dataset": "digits", "objective": dict(SYNTHETIC), "strategy": "random", "seed": 0}
    return submit_search(user=user, team=team, name="s", spec_data={**base, **spec})


def wait_for(stack, search, done, timeout=60.0, reap_every=None):
    """Poll until `done(search)` holds; run the reaper every `reap_every` seconds if set."""
    from workers import reaper

    deadline, last_reap = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        search.refresh_from_db()
        if done(search):
            return search
        if reap_every and time.monotonic() - last_reap >= reap_every:
            reaper.reap()
            last_reap = time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"timed out: {search.to_dict()}\n{stack.workers.logs()}")


def finished(search):
    return search.is_done


def runs_of(search, *statuses):
    from webapp.searches.models import ChildRun

    runs = ChildRun.objects.filter(architecture__search=search)
    return runs.filter(status__in=statuses) if statuses else runs


def assert_complete(search, stack=None):
    """Finished; one run and one told result per architecture; counters add up."""
    from webapp.searches import models as m

    assert search.status == m.FINISHED, (search.to_dict(), stack and stack.workers.logs())
    archs = list(m.Architecture.objects.filter(search=search).order_by("sample_index"))
    assert [a.sample_index for a in archs] == list(range(search.children_total))
    assert search.children_sampled == search.children_done == search.children_total
    assert all(a.told for a in archs)
    runs = {r.architecture_id: r for r in runs_of(search)}
    assert len(runs) == len(archs)
    statuses = [runs[a.id].status for a in archs]
    assert statuses.count(m.RUN_FAILED) == search.children_failed
    assert statuses.count(m.RUN_REUSED) == search.children_reused
    assert statuses.count(m.RUN_SUCCEEDED) + search.children_failed + search.children_reused == search.children_total
    for arch in archs:
        run = runs[arch.id]
        if run.status == m.RUN_FAILED:
            assert arch.reward is None and run.error
        else:
            assert arch.reward is not None and arch.reward == run.reward
    rewards = [a.reward for a in archs if a.reward is not None]
    assert search.best_reward == max(rewards)
    assert search.checkpoint_at and search.checkpoint_parts.exists() and search.finished_at and search.started_at


def checkpoint_of(search):
    from workers import strategy_store

    return strategy_store.load(search)


def test_a_small_real_search_completes_through_the_broker(stack, owner):
    spec = {"objective": "accuracy", "strategy": "ppo", "budget": {"children": 3, "parallel": 2}}
    search = submit(owner, child={"repeats": 1, "filters": 4, "epochs": 1}, **spec)
    search = wait_for(stack, search, finished, timeout=120)
    assert_complete(search, stack)
    for run in runs_of(search):
        assert run.reward is not None and 0 <= run.reward <= 1
        assert run.attempt == 1 and run.worker and run.wall_time > 0
        assert [e["epoch"] for e in run.epochs] == [1]
        assert run.architecture.params > 0 and run.architecture.mult_adds > 0
    # live events (webapp.live), written by the controller and the gpu worker: dense seqs
    from webapp.live.models import SearchEvent

    events = list(SearchEvent.objects.filter(search=search).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events].count("architecture.sampled") == 3
    assert [e.type for e in events].count("child.finished") == 3
    assert [e.payload["run"]["epochs"][-1]["epoch"] for e in events if e.type == "child.progress"] == [1, 1, 1]
    statuses = [e for e in events if e.type == "search.status"]
    assert statuses[-1].payload["search"]["status"] == "finished"
    # Trained children: the search measures its noise floor when it finishes (2 children x 2 seeds).
    from webapp.searches import models as m

    floor = m.Selection.objects.get(search=search, kind=m.SELECTION_NOISE_FLOOR)
    assert (floor.top_k, floor.seeds, floor.runs.count()) == (2, 2, 4)
    search = wait_for(stack, search, lambda s: s.noise_floor is not None, timeout=120, reap_every=1.0)
    floor.refresh_from_db()
    assert floor.status == m.RUN_SUCCEEDED and search.noise_floor == floor.noise_std >= 0
    assert SearchEvent.objects.filter(search=search, type="selection.progress").count() >= 5  # created, 4 runs


def test_a_synthetic_search_of_300_children_completes(stack, owner):
    search = submit(owner, strategy="ppo", budget={"children": 300, "parallel": 8})
    search = wait_for(stack, search, finished, timeout=120)
    assert_complete(search, stack)
    assert search.children_done == 300
    strategy = checkpoint_of(search)
    assert strategy.pending() == [] and strategy.state_dict()["next_id"] == 300


def test_pause_stops_dispatching_and_resume_continues(stack, owner):
    from webapp.searches import models as m
    from webapp.searches.services import transition

    search = submit(owner, objective={**SYNTHETIC, "duration_s": 0.2}, budget={"children": 30, "parallel": 2})
    wait_for(stack, search, lambda s: s.children_done >= 3)
    transition(search, "pause")
    search = wait_for(stack, search, lambda s: not runs_of(s, *m.RUN_ACTIVE).exists())
    sampled = search.children_sampled
    time.sleep(1.0)
    search.refresh_from_db()
    assert search.status == m.PAUSED and search.children_sampled == sampled < 30
    transition(search, "resume")
    search = wait_for(stack, search, finished)
    assert_complete(search, stack)


def test_cancel_leaves_no_active_runs(stack, owner):
    from webapp.searches import models as m
    from webapp.searches.services import transition

    search = submit(owner, objective={**SYNTHETIC, "duration_s": 0.3}, budget={"children": 30, "parallel": 2})
    wait_for(stack, search, lambda s: runs_of(s, m.RUN_RUNNING).exists() and s.children_done >= 1)
    transition(search, "cancel")
    search = wait_for(stack, search, finished)
    assert search.status == m.CANCELLED and search.finished_at
    time.sleep(1.0)  # the child in flight ends; its result must not be written
    assert not runs_of(search, *m.RUN_ACTIVE).exists()
    assert runs_of(search, m.RUN_CANCELLED).exists()
    assert search.children_sampled < 30


def test_a_killed_gpu_worker_loses_nothing(stack, owner):
    from webapp.searches import models as m

    search = submit(owner, objective={**SYNTHETIC, "duration_s": 1.5}, budget={"children": 4, "parallel": 2})
    wait_for(stack, search, lambda s: runs_of(s, m.RUN_RUNNING).exists())
    victim = runs_of(search, m.RUN_RUNNING).get()
    time.sleep(0.3)
    stack.gpu.kill()
    stack.restart("gpu")
    search = wait_for(stack, search, finished, timeout=90, reap_every=1.0)
    assert_complete(search, stack)
    victim.refresh_from_db()
    assert victim.status == m.RUN_SUCCEEDED and victim.attempt == 2


def test_asha_across_two_workers_with_one_killed_decides_as_the_engine_does(stack, owner):
    """Early stopping (#13) across processes: two gpu workers, children interleaved, one
    worker killed mid-search and the broker emptied; every decision is taken once, equals
    the engine's Board on the reported values, and the search stops the same children as
    the CLI's local loop with the same strategy and seed."""
    from nas_engine.early_stopping import Board, decision_epochs, parse_early_stop
    from nas_engine.search import run_search
    from nas_engine.synthetic import SyntheticObjective
    from webapp.searches import models as m

    epochs, asha = 9, {"rule": "asha", "min_epochs": 1, "reduction_factor": 3}
    second = stack.workers.start("gpu")
    try:
        search = submit(
            owner,
            objective={**SYNTHETIC, "duration_s": 0.45},
            child={"epochs": epochs},
            early_stop=asha,
            budget={"children": 30, "parallel": 6},
        )
        wait_for(stack, search, lambda s: s.children_done >= 8, timeout=60, reap_every=1.0)
        stack.gpu.kill()
        stack.restart("gpu")
        flush_redis(stack.redis_url)
        search = wait_for(stack, search, finished, timeout=120, reap_every=1.0)
    finally:
        second.stop()
    assert search.status == m.FINISHED and search.children_done == 30, stack.workers.logs()
    runs = {r.architecture.sample_index: r for r in runs_of(search).select_related("architecture")}
    assert {r.status for r in runs.values()} <= {m.RUN_SUCCEEDED, m.RUN_STOPPED}
    values = {i: [e["val_acc"] for e in r.epochs] for i, r in runs.items()}
    settings = parse_early_stop(asha)
    board = Board.from_rows(settings, epochs, [(i, v, True) for i, v in sorted(values.items())])
    stored = {(d.sample_index, d.epoch): d for d in m.RungDecision.objects.filter(search=search)}
    expected = {(i, t) for i, v in values.items() for t in decision_epochs(settings, epochs) if t <= len(v)}
    assert set(stored) == expected
    for (i, t), row in stored.items():
        decision = board.decision(i, t)
        assert (row.stop, row.threshold, row.peers) == (decision.stop, decision.threshold, decision.peers)
    stopped = sorted(i for i, r in runs.items() if r.status == m.RUN_STOPPED)
    assert stopped and search.children_stopped == len(stopped)
    spec = search.parsed_spec
    objective = SyntheticObjective(spec.space, spec.seed)
    local = run_search(
        spec.make_strategy(),
        lambda genotype, report: objective.train(genotype, epochs, report),
        children=30,
        parallel=6,
        epochs=epochs,
        early_stop=settings,
    )
    assert (local.stopped, local.epochs_trained, local.best_reward) == (
        len(stopped),
        search.epochs_trained,
        search.best_reward,
    )


def test_an_emptied_redis_loses_nothing(stack, owner):
    search = submit(owner, objective={**SYNTHETIC, "duration_s": 0.05}, budget={"children": 60, "parallel": 4})
    wait_for(stack, search, lambda s: s.children_done >= 10)
    flush_redis(stack.redis_url)
    search = wait_for(stack, search, finished, timeout=90, reap_every=1.0)
    assert_complete(search, stack)


def test_a_restart_continues_from_the_checkpoint(stack, owner):
    from webapp import dispatch
    from webapp.searches import models as m

    settings = {"batch_size": 5}
    search = submit(
        owner,
        strategy={"name": "ppo", "settings": settings},
        objective={**SYNTHETIC, "duration_s": 0.05},
        budget={"children": 60, "parallel": 4},
    )
    wait_for(stack, search, lambda s: s.children_done >= 15)
    stack.controller.stop()
    stack.gpu.stop()
    search.refresh_from_db()
    assert search.status == m.RUNNING and search.children_done < 60
    strategy = checkpoint_of(search)
    told = m.Architecture.objects.filter(search=search, told=True).count()
    assert strategy.state_dict()["next_id"] == search.children_sampled
    assert len(strategy.pending()) == search.children_sampled - told
    fresh = search.parsed_spec.make_strategy()
    trained = strategy.state_dict()["controller"]
    initial = fresh.state_dict()["controller"]
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    sampled = search.children_sampled
    stack.restart("controller")
    stack.restart("gpu")
    dispatch.send(dispatch.TASK_ADVANCE, search.id)
    search = wait_for(stack, search, finished, timeout=90, reap_every=1.0)
    assert_complete(search, stack)
    first_new = m.Architecture.objects.filter(search=search, sample_index=sampled).get()
    assert first_new.created_at > m.Architecture.objects.get(search=search, sample_index=sampled - 1).created_at


def test_a_training_job_killed_mid_training_resumes_from_its_checkpoint(stack, owner, tmp_path):
    """SIGKILL of the gpu worker after an epoch: the reaper queues the job again and the
    next claim continues after the last checkpointed epoch, not from zero."""
    from nas_engine.cells import NASNET_A
    from webapp.searches import models as m
    from webapp.searches.services import create_training_job

    user, team = owner
    recipe = {"repeats": 1, "filters": 8, "epochs": 6, "batch_size": 32, "lr": 0.05}
    job = create_training_job(
        user=user, team=team, name="final", genotype=NASNET_A.to_dict(), dataset={"name": "digits"}, recipe=recipe
    )

    def one_epoch_saved(_):
        job.refresh_from_db()
        return len(job.epochs) >= 2 and job.status == m.RUN_RUNNING

    wait_for(stack, job, one_epoch_saved, timeout=120)
    stack.gpu.kill()
    stack.restart("gpu")

    def ended(_):
        job.refresh_from_db()
        return job.status in (m.RUN_SUCCEEDED, m.RUN_FAILED)

    wait_for(stack, job, ended, timeout=180, reap_every=1.0)
    assert job.status == m.RUN_SUCCEEDED, (job.error, stack.workers.logs())
    assert job.attempt == 2 and job.resumed_from_epoch >= 1, stack.workers.logs()  # not from zero
    assert [e["epoch"] for e in job.epochs] == list(range(1, 7))  # every epoch once
    assert job.test_acc is not None and job.reward is not None


def test_a_selection_survives_a_killed_worker_with_one_result_per_architecture_and_seed(stack, owner):
    """The spec asks for a top-K selection when the search finishes; the gpu worker is
    SIGKILLed while it trains a selection run; the reaper hands the run to the new worker.
    Every (architecture, seed) gets exactly one result and the selection names a winner."""
    from webapp.searches import models as m

    search = submit(
        owner,
        objective={**SYNTHETIC, "noise": 0.05},
        budget={"children": 8, "parallel": 2},
        selection={"top_k": 3, "seeds": 2},
    )
    search = wait_for(stack, search, finished, timeout=90, reap_every=1.0)
    assert_complete(search, stack)
    selection = m.Selection.objects.get(search=search)
    assert (selection.kind, selection.top_k, selection.seeds, selection.owner) == (m.SELECTION_TOP_K, 3, 2, None)
    assert not m.Selection.objects.filter(search=search, kind=m.SELECTION_NOISE_FLOOR).exists()  # synthetic: off
    wait_for(stack, search, lambda s: selection.runs.filter(status=m.RUN_SUCCEEDED).exists(), timeout=60)

    # A second selection whose runs each take 1.5 s: kill the worker in the middle of one.
    user, _ = owner
    m.Search.objects.filter(pk=search.pk).update(spec={**search.spec, "objective": {**SYNTHETIC, "duration_s": 1.5}})
    search.refresh_from_db()
    from webapp.searches.services import create_selection

    slow = create_selection(user=user, search=search, top_k=2, seeds=2)
    wait_for(stack, search, lambda s: slow.runs.filter(status=m.RUN_RUNNING).exists(), timeout=60)
    victim = slow.runs.get(status=m.RUN_RUNNING)
    time.sleep(0.3)
    stack.gpu.kill()
    stack.restart("gpu")

    def settled(_):
        slow.refresh_from_db()
        selection.refresh_from_db()
        return slow.is_done and selection.is_done

    wait_for(stack, search, settled, timeout=120, reap_every=1.0)
    for sel in (selection, slow):
        assert sel.status == m.RUN_SUCCEEDED, (sel.to_dict(), stack.workers.logs())
        runs = list(sel.runs.all())
        assert len(runs) == sel.top_k * sel.seeds
        assert len({(r.architecture_id, r.seed) for r in runs}) == len(runs)  # one row each
        assert all(r.status == m.RUN_SUCCEEDED and r.reward is not None for r in runs)
        assert sel.winner_id == sel.ranking()[0]["architecture"]
    victim.refresh_from_db()
    assert victim.status == m.RUN_SUCCEEDED and victim.attempt == 2


def test_an_emptied_redis_loses_no_training_job(stack, owner):
    """The job's message is lost before any worker took it: once a lease has passed with the
    job still queued and the gpu queue empty, the reaper dispatches it again."""
    from nas_engine.cells import NASNET_A
    from webapp.searches import models as m
    from webapp.searches.services import create_training_job

    stack.gpu.stop()
    user, team = owner
    recipe = {"repeats": 1, "filters": 4, "epochs": 1}
    dataset = {"name": "digits", "subset_per_class": 20}
    job = create_training_job(
        user=user, team=team, name="lost", genotype=NASNET_A.to_dict(), dataset=dataset, recipe=recipe
    )
    flush_redis(stack.redis_url)  # the message is gone
    stack.restart("gpu")

    def ended(_):
        job.refresh_from_db()
        return job.status in (m.RUN_SUCCEEDED, m.RUN_FAILED)

    wait_for(stack, job, ended, timeout=120, reap_every=1.0)
    assert job.status == m.RUN_SUCCEEDED and job.attempt == 1, (job.error, stack.workers.logs())


def test_one_teams_backlog_does_not_hold_another_teams_search_queued(stack, owner):
    """Issue #12, fair sharing: alpha fills the gpu queue with 3 searches x 10 parallel
    children of 0.5 s (15 s of work in front of anything sent after it, on one worker);
    beta's small search still starts within seconds, because each team may have at most
    TEAM_SHARE runs queued or running, over all its searches."""
    from django.contrib.auth.models import User

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches import models as m
    from webapp.searches.services import submit_search

    slow = {**SYNTHETIC, "duration_s": 0.5}
    alpha = [submit(owner, objective=slow, budget={"children": 20, "parallel": 10}) for _ in range(3)]
    time.sleep(1.0)  # alpha's advances have dispatched what they may
    beta_team = Team.objects.create(name="beta")
    beta_user = User.objects.create_user("bea", password="pw-bea-123")
    Membership.objects.create(user=beta_user, team=beta_team, role=ROLE_OWNER)
    spec = {"dataset": "digits", "objective": slow, "strategy": "random", "budget": {"children": 2, "parallel": 2}}
    submitted = time.monotonic()
    beta = submit_search(user=beta_user, team=beta_team, name="small", spec_data=spec)
    alpha_active_seen = []
    while time.monotonic() - submitted < 60:
        alpha_active_seen.append(runs_of_team(owner[1], *m.RUN_ACTIVE).count())
        if runs_of(beta).filter(started_at__isnull=False).exists():
            break
        time.sleep(0.1)
    waited = time.monotonic() - submitted
    assert waited < 8, f"beta's first child started after {waited:.1f} s\n{stack.workers.logs()}"
    assert max(alpha_active_seen) <= TEAM_SHARE
    wait_for(stack, beta, finished, timeout=60)
    for search in alpha:  # the held-back searches of alpha are not starved either
        assert_complete(wait_for(stack, search, finished, timeout=120), stack)


def runs_of_team(team, *statuses):
    from webapp.searches.models import ChildRun

    return ChildRun.objects.filter(architecture__search__team=team, status__in=statuses)
