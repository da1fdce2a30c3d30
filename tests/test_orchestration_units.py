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
    from workers import advance

    advance.advance(search.id)
    search.refresh_from_db()
    assert search.status == m.RUNNING and search.children_sampled == 2
    assert m.ChildRun.objects.filter(architecture__search=search, status=m.RUN_QUEUED).count() == 2
    strategy = advance.load_strategy(search)
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


def test_checkpoint_bytes_round_trip(search):
    from workers import advance

    spec = search.parsed_spec
    strategy = spec.make_strategy()
    strategy.ask(3)
    restored = advance.strategy_from_bytes(advance.strategy_to_bytes(strategy), spec)
    assert [p.id for p in restored.pending()] == [0, 1, 2]
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
