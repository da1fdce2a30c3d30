"""The orchestration's pieces in-process, without a broker: the reaper's lease handling,
the claim, checkpoint bytes, and a training job writing its bundle. (Tasks queued on
commit are never sent here: these tests run inside a transaction that is rolled back.)
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from nas_engine.space import SearchSpace
from nas_engine.strategies import make_strategy

SPEC = {"dataset": "digits", "objective": "synthetic", "strategy": "ppo", "budget": {"children": 4, "parallel": 2}}


@pytest.fixture(autouse=True)
def broker(django_db_setup, django_db_blocker):
    """The broker of this test run (see test_orchestration.redis_url), not the default."""
    from django.db import connection

    from tests.celery_worker import use_broker
    from tests.test_orchestration import redis_url

    use_broker(redis_url(connection.settings_dict["NAME"]))


@pytest.fixture
def search(db):
    from django.contrib.auth.models import User

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches.services import submit_search

    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    return submit_search(user=user, team=team, name="s", spec_data=SPEC)


def test_the_first_advance_samples_parallel_children_and_checkpoints(search):
    from webapp.searches import models as m
    from workers import advance, strategy_store

    advance.advance(search.id)
    search.refresh_from_db()
    assert search.status == m.RUNNING and search.children_sampled == 2
    assert m.ChildRun.objects.filter(architecture__search=search, status=m.RUN_QUEUED).count() == 2
    strategy = strategy_store.load(search)
    assert [p.id for p in strategy.pending()] == [0, 1]


def test_a_claimed_run_is_not_claimed_twice_and_its_result_is_told(search):
    from webapp.searches import models as m
    from workers import advance, child_runs

    advance.advance(search.id)
    run = m.ChildRun.objects.filter(architecture__search=search).order_by("id").first()
    claimed = child_runs.claim(run.id)
    assert claimed is not None and claimed.attempt == 1
    assert child_runs.claim(run.id) is None
    assert child_runs.finish(claimed, m.RUN_SUCCEEDED, reward=0.5, wall_time=0.1)
    assert not child_runs.finish(claimed, m.RUN_SUCCEEDED, reward=0.9, wall_time=0.1)  # written once
    advance.advance(search.id)
    search.refresh_from_db()
    arch = run.architecture
    arch.refresh_from_db()
    assert arch.told and arch.reward == 0.5
    assert search.children_done == 1 and search.best_reward == 0.5 and search.children_sampled == 3


def test_the_reaper_requeues_expired_leases_then_fails_them(search, settings):
    from webapp.searches import models as m
    from workers import advance, child_runs, reaper

    settings.NAS_MAX_ATTEMPTS = 2
    advance.advance(search.id)
    run = m.ChildRun.objects.filter(architecture__search=search).order_by("id").first()
    for attempt in (1, 2):
        assert child_runs.claim(run.id).attempt == attempt
        m.ChildRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        report = reaper.reap()
    run.refresh_from_db()
    assert run.status == m.RUN_FAILED and run.error == "lease expired after 2 attempts"
    assert report["failed"] == [run.id]


def test_the_stored_checkpoint_round_trips_and_only_changed_pieces_are_written(search):
    from webapp.searches import models as m
    from workers import strategy_store

    spec = search.parsed_spec  # PPO: its controller and optimizer are most of the bytes
    strategy = spec.make_strategy()
    proposals = strategy.ask(3)
    digests = strategy_store.save(search, strategy)
    search.save()
    restored = strategy_store.load(search)
    assert [p.id for p in restored.pending()] == [0, 1, 2]
    assert [p.genotype for p in restored.ask(2)] == [p.genotype for p in strategy.ask(2)]
    stored = m.Search.objects.annotate(n=m.StrategyCheckpointPart.stored_bytes()).get(pk=search.pk).n
    assert stored > 500_000

    def written_since(moment):
        return dict(
            m.StrategyCheckpointPart.objects.filter(search=search, updated_at__gt=moment).values_list("key", "digest")
        )

    moment = timezone.now()
    strategy.tell(proposals[0].id, 0.5)  # no update yet (a PPO batch is bigger): weights unchanged
    again = strategy_store.save(search, strategy, digests)
    written = written_since(moment)
    assert set(again) == {"envelope", "state.controller"}  # the weights apart (Adam's moments: after a step)
    assert set(written) == {"envelope"}  # the pending proposals and the RNG changed, not the weights
    assert written == {key: digest for key, digest in again.items() if digests.get(key) != digest}
    moment = timezone.now()
    assert strategy_store.save(search, strategy) == again and written_since(moment) == {}  # unchanged: no write
    loaded = strategy_store.load(search)
    assert loaded.state_dict().keys() == strategy.state_dict().keys()
    assert [p.genotype for p in loaded.ask(2)] == [p.genotype for p in strategy.ask(2)]


def test_a_checkpoint_from_before_the_pieces_is_migrated(transactional_db):
    """Migration 0007 splits an old whole-checkpoint column into pieces that load."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from nas_engine.strategies.base import checkpoint_bytes

    executor = MigrationExecutor(connection)
    old = [("searches", "0006_training_job_preset_budget")]
    executor.migrate(old)
    old_apps = executor.loader.project_state(old).apps
    Team, User = old_apps.get_model("accounts", "Team"), old_apps.get_model("auth", "User")
    Search = old_apps.get_model("searches", "Search")
    strategy = make_strategy("ppo", SearchSpace(), {}, seed=0)
    strategy.ask(2)
    spec_row = Search.objects.create(
        team=Team.objects.create(name="t"),
        owner=User.objects.create(username="u"),
        name="old",
        spec={},
        children_total=4,
        checkpoint=checkpoint_bytes(strategy),
        checkpoint_at=timezone.now(),
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    from workers import strategy_store

    payload = strategy_store.payload(spec_row.id)
    restored = make_strategy("ppo", SearchSpace(), {}, seed=0)
    from nas_engine.strategies import restore_into

    restore_into(restored, payload)
    assert [p.genotype for p in restored.ask(2)] == [p.genotype for p in strategy.ask(2)]


def test_a_training_job_writes_its_bundle(db, settings, tmp_path):
    from django.contrib.auth.models import User

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches import models as m
    from webapp.searches.services import create_training_job
    from workers import training_jobs

    settings.NAS_ARTIFACTS_ROOT = tmp_path
    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    genotype = make_strategy("random", SearchSpace(), seed=0).ask(1)[0].genotype.to_dict()
    job = create_training_job(
        user=user,
        team=team,
        name="final",
        genotype=genotype,
        dataset={"name": "digits"},
        recipe={"repeats": 1, "filters": 4, "epochs": 1},
    )
    training_jobs.run_training_job(job.id)
    job.refresh_from_db()
    assert job.status == m.RUN_SUCCEEDED, job.error
    assert job.bundle_path == f"jobs/{job.id}" and job.reward is not None and job.params > 0
    bundle = tmp_path / job.bundle_path
    assert {p.name for p in bundle.iterdir()} >= {"genotype.json", "recipe.json", "metrics.json", "weights.pt"}
    assert json.loads((bundle / "genotype.json").read_text()) == genotype
    # Digits carry a fixed test split: scored once after the last epoch, beside val accuracy.
    assert job.test_acc is not None and 0 <= job.test_acc <= 1 and "359 of 1,797" in job.test_source
    assert job.to_dict()["val_acc"] == job.reward and job.resumed_from_epoch == 0
    assert not (tmp_path / "checkpoints" / f"job-{job.id}.pt").exists()  # removed once the job ended


def test_a_training_job_with_a_preset_and_a_budget_trains_the_fitted_network(db, settings, tmp_path):
    """The worker fits N and F to the budget on the loaded data, records the fit on the row,
    trains that network (within the budget) and writes it into the bundle's recipe."""
    from django.contrib.auth.models import User

    from nas_engine.cells import NASNET_A
    from nas_engine.trainer import Recipe
    from nas_engine.transfer import fit_to_budget
    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches import models as m
    from webapp.searches.services import create_training_job
    from workers import training_jobs

    settings.NAS_ARTIFACTS_ROOT = tmp_path
    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    job = create_training_job(
        user=user,
        team=team,
        name="mobile-ish",
        genotype=NASNET_A.to_dict(),
        dataset={"name": "digits", "image_size": 16},
        recipe={"epochs": 1},
        preset="cifar_final_cpu",  # N = 2 fixed by the preset; the budget picks F
        budget={"max_params": "40k"},
    )
    assert job.budget == {"max_params": 40000, "max_mult_adds": None, "repeats": 2}
    training_jobs.run_training_job(job.id)
    job.refresh_from_db()
    assert job.status == m.RUN_SUCCEEDED, job.error
    # The widest F at N = 2 within 40,000 parameters on 16 px, 1-channel, 10-class digits:
    expected = fit_to_budget(
        NASNET_A, kind="cifar", image_size=16, num_classes=10, in_channels=1, repeats=2, stem_multiplier=3.0,
        max_params=40000,
    )  # fmt: skip
    fitted = job.budget["fitted"]
    assert (fitted["repeats"], fitted["filters"]) == (expected[0], expected[1]) == (2, job.recipe["filters"])
    assert fitted["n_at_p"] == f"2@{24 * expected[1]}" and fitted["params"] == expected[2].params <= 40000
    assert job.params is not None and job.params >= fitted["params"]  # trained with its aux head on top
    bundle_recipe = Recipe.from_dict(json.loads((tmp_path / job.bundle_path / "recipe.json").read_text()))
    assert (bundle_recipe.repeats, bundle_recipe.filters, bundle_recipe.aux_weight) == (2, expected[1], 0.4)
    # A requeued job keeps the recorded fit (its checkpoint matches) instead of fitting again.
    again = training_jobs._fit_to_budget(job, NASNET_A, bundle_recipe, None)
    assert again == bundle_recipe


@pytest.mark.django_db(transaction=True)
def test_the_lease_is_kept_while_a_slow_data_set_loads(settings):
    """lease_kept heartbeats from its own thread (its own connection: committed rows only)."""
    import time

    from django.contrib.auth.models import User

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches import models as m
    from webapp.searches.services import submit_search
    from workers import advance, child_runs, leases, reaper

    settings.NAS_LEASE_SECONDS = 1.5  # a heartbeat every 0.5 s
    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    search = submit_search(user=user, team=team, name="s", spec_data=SPEC)
    advance.advance(search.id)
    run = child_runs.claim(m.ChildRun.objects.filter(architecture__search=search).order_by("id").first().id)
    first_expiry = run.lease_expires_at
    with leases.lease_kept(run, "test"):
        time.sleep(2.0)  # longer than the lease: without heartbeats the reaper could take it
    run.refresh_from_db()
    assert run.lease_expires_at > first_expiry + timedelta(seconds=1)
    assert run.lease_expires_at > timezone.now()  # still ours
    assert reaper.reap()["requeued"] == []


@pytest.mark.django_db(transaction=True)
def test_a_running_training_job_stops_when_cancelled_and_drops_its_checkpoint(settings, tmp_path):
    """A real training in a worker thread; the cancel comes from the service, as from the
    API, the page or the admin. The worker notices at its next heartbeat (the row is no
    longer its), stops mid-training and removes the checkpoint nobody will resume."""
    import threading
    import time

    from django.contrib.auth.models import User
    from django.db import connection

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches import models as m
    from webapp.searches.services import cancel_training_job, create_training_job
    from workers import training_jobs
    from workers.resources import checkpoint_path

    settings.NAS_ARTIFACTS_ROOT = tmp_path
    settings.NAS_LEASE_SECONDS = 1.5  # a heartbeat every 0.5 s
    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    genotype = make_strategy("random", SearchSpace(), seed=0).ask(1)[0].genotype.to_dict()
    recipe = {"repeats": 1, "filters": 4, "epochs": 200}
    job = create_training_job(user=user, team=team, name="long", genotype=genotype, dataset="digits", recipe=recipe)

    def work():
        try:
            training_jobs.run_training_job(job.id)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not m.TrainingJob.objects.get(pk=job.id).epochs:
        time.sleep(0.2)
    assert checkpoint_path("job", job.id).exists()  # written after the first epoch
    cancel_training_job(job, by=user)
    worker.join(timeout=120)
    assert not worker.is_alive()
    job.refresh_from_db()
    assert job.status == m.RUN_CANCELLED and job.error == "cancelled by owner"
    assert 0 < len(job.epochs) < 200 and not job.bundle_path
    assert not checkpoint_path("job", job.id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_synthetic_child_longer_than_the_lease_keeps_it_and_succeeds(settings):
    """Issue #12: a synthetic child slept without heartbeats, so with duration_s past the
    lease the reaper took it away each time and it failed after NAS_MAX_ATTEMPTS."""
    import threading
    import time

    from django.contrib.auth.models import User
    from django.db import connection

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches import models as m
    from webapp.searches.services import submit_search
    from workers import advance, child_runs, reaper

    settings.NAS_LEASE_SECONDS = 1.0  # the child sleeps 2.5 leases
    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    spec = {**SPEC, "objective": {"name": "synthetic", "duration_s": 2.5}, "budget": {"children": 1, "parallel": 1}}
    search = submit_search(user=user, team=team, name="slow", spec_data=spec)
    advance.advance(search.id)
    run = m.ChildRun.objects.get(architecture__search=search)

    def work():
        try:
            child_runs.run_child(run.id)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    requeued = []
    while worker.is_alive():
        requeued += reaper.reap()["requeued"]  # what the reaper would do meanwhile
        time.sleep(0.2)
    worker.join()
    run.refresh_from_db()
    assert requeued == [] and run.status == m.RUN_SUCCEEDED and run.attempt == 1, run.error


def _finished_events(search, run):
    from webapp.live.models import SearchEvent

    return [
        e for e in SearchEvent.objects.filter(search=search, type="child.finished") if e.payload["run"]["id"] == run.id
    ]


def test_a_result_whose_worker_died_before_publishing_still_reaches_live_clients(search):
    """kill -9 between the reward's UPDATE and its event: the advance that tells the result
    stores and sends the missing child.finished (before, live clients never got it)."""
    from webapp.searches import models as m
    from workers import advance, child_runs

    advance.advance(search.id)
    run = child_runs.claim(m.ChildRun.objects.filter(architecture__search=search).order_by("id").first().id)
    assert run.finish(m.RUN_SUCCEEDED, reward=0.7, wall_time=0.1)  # the worker dies here
    assert _finished_events(search, run) == []
    advance.advance(search.id)
    (event,) = _finished_events(search, run)
    assert event.payload["run"]["reward"] == 0.7 and event.payload["run"]["status"] == m.RUN_SUCCEEDED
    run.refresh_from_db()
    assert run.announced
    child_runs.announce_finished(run, search.id, event.payload["sample_index"])  # a late worker: no second one
    advance.advance(search.id)
    assert len(_finished_events(search, run)) == 1


def test_a_result_is_announced_once_by_its_worker_and_not_again_by_the_advance(search):
    from webapp.searches import models as m
    from workers import advance, child_runs

    advance.advance(search.id)
    run = child_runs.claim(m.ChildRun.objects.filter(architecture__search=search).order_by("id").first().id)
    assert child_runs.finish(run, m.RUN_SUCCEEDED, reward=0.6, wall_time=0.1)
    assert len(_finished_events(search, run)) == 1
    advance.advance(search.id)
    (event,) = _finished_events(search, run)
    assert event.payload["run"]["reward"] == 0.6 and event.payload["run"]["epochs"] == []
