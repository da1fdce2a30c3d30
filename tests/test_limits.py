"""Limits that protect the shared workers (issue #12): one place (nas_engine/limits.py),
applied to searches and training jobs alike, refused before anything is stored or built.

Each case below is a request that the service used to accept (201) and that then ran for
minutes, allocated terabytes or failed at run time."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from nas_engine.cells import NASNET_A
from nas_engine.counting import describe
from nas_engine.data import DatasetShape
from nas_engine.limits import LimitError, Limits, check_training, forward_mult_adds
from nas_engine.space import SearchSpace
from nas_engine.spec import validate_spec
from nas_engine.strategies import make_strategy
from nas_engine.trainer import Recipe
from webapp.searches import models as m

GENOTYPE = NASNET_A.to_dict()


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def post(client, url, data):
    return client.post(url, json.dumps(data), content_type="application/json")


# -- the engine: counting and extrapolation ---------------------------------------------------------
@pytest.mark.parametrize("macro, size, skip", [("cifar", 32, False), ("imagenet", 64, False), ("imagenet", 64, True)])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [4, 6])
def test_counts_past_n3_are_extrapolated_exactly(macro, size, skip, seed, n):
    """Cells past a stack's second have the same shapes, so the counts grow linearly in N
    from there: the extrapolation matches a network really built and traced."""
    from nas_engine.counting import _built
    from nas_engine.network import MacroConfig

    genotype = make_strategy("random", SearchSpace(), seed=seed).ask(1)[0].genotype
    macro_config = MacroConfig(
        kind=macro, repeats=n, filters=8, stem_multiplier=1.0, image_size=size, skip_reduction_input=skip
    )
    assert describe(genotype, macro_config) == _built(genotype, macro_config)


def test_a_recipe_over_a_limit_names_the_field_the_limit_and_its_setting():
    with pytest.raises(LimitError) as err:
        Limits(max_filters=64).check_recipe(Recipe(filters=65), "child")
    assert err.value.field == "child.filters"
    assert "at most 64" in err.value.reason and "NAS_MAX_FILTERS" in err.value.reason


def test_the_cost_is_mult_adds_times_images_times_epochs(tmp_path):
    recipe = Recipe(repeats=1, filters=8, epochs=3)
    dataset = {"name": "digits", "subset_per_class": 50}
    per_pass = forward_mult_adds(NASNET_A, recipe, DatasetShape(10, 1, 8, 1797))
    cost = per_pass * 500 * 3  # 50 per class x 10 classes, 3 epochs
    kwargs = {"prefix": "child", "cost_limit": "max_child_cost"}
    check_training(NASNET_A, recipe, dataset, tmp_path, Limits(max_child_cost=cost), **kwargs)
    with pytest.raises(LimitError, match="500 training images x 3 epochs") as err:
        check_training(NASNET_A, recipe, dataset, tmp_path, Limits(max_child_cost=cost - 1), **kwargs)
    assert err.value.field == "child" and "NAS_MAX_CHILD_COST" in err.value.reason


def test_a_stored_spec_is_never_refused_by_todays_limits(tmp_path):
    """A limit lowered after submission must not break a search that is running."""
    spec = {"dataset": "digits", "child": {"repeats": 30, "filters": 2000, "epochs": 5000}}
    with pytest.raises(Exception, match="child.repeats"):
        validate_spec(spec, data_root=tmp_path, limits=Limits())
    assert validate_spec(spec, data_root=tmp_path, limits=None).child.repeats == 30


# -- searches through the API -----------------------------------------------------------------------
BAD_SEARCHES = [
    ("child.repeats", {"child": {"repeats": 60}}, "NAS_MAX_REPEATS"),
    ("child.filters", {"child": {"filters": 1_000_000}}, "NAS_MAX_FILTERS"),
    ("child.epochs", {"child": {"epochs": 1_000_000}}, "NAS_MAX_EPOCHS"),
    ("child.batch_size", {"child": {"batch_size": 100_000}}, "NAS_MAX_BATCH_SIZE"),
    ("strategy.settings.hidden_size", {"strategy": {"name": "ppo", "settings": {"hidden_size": 4096}}}, "HIDDEN"),
    ("dataset.image_size", {"dataset": {"name": "digits", "image_size": 4096}}, "NAS_MAX_IMAGE_SIZE"),
    ("dataset.subset_per_class", {"dataset": {"name": "digits", "subset_per_class": 10**12}}, "between"),
    ("dataset.val_size", {"dataset": {"name": "digits", "val_size": 10**12}}, "between"),
    ("child.seed", {"child": {"seed": 2**64}}, "2**32"),
    ("dataset.image_size", {"child": {"macro": "imagenet"}}, ">= 32"),  # digits are 8 px
    # Each bound alone is met; together they are a year of GPU time per child.
    ("child", {"dataset": "cifar10", "child": {"repeats": 12, "filters": 1024, "epochs": 1000}}, "NAS_MAX_CHILD_COST"),
]


@pytest.mark.parametrize(
    "field, change, said", BAD_SEARCHES, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_SEARCHES)]
)
def test_a_search_over_a_limit_is_refused_naming_the_field(client, personas, field, change, said):
    client.force_login(personas.owner)
    spec = {"dataset": "digits", "objective": "accuracy", "strategy": "random", "budget": {"children": 2}, **change}
    r = post(client, "/api/searches", {"team": personas.alpha.id, "name": "big", "spec": spec})
    assert r.status_code == 400 and r.json()["field"] == f"spec.{field}", r.content
    assert said in r.json()["error"]
    assert not m.Search.objects.exists()


def test_the_limits_are_the_deployments_settings(client, personas, settings):
    settings.NAS_MAX_REPEATS = 3
    client.force_login(personas.owner)
    spec = {"dataset": "digits", "objective": "synthetic", "strategy": "random", "budget": {"children": 2}}
    r = post(
        client, "/api/searches", {"team": personas.alpha.id, "name": "n4", "spec": {**spec, "child": {"repeats": 4}}}
    )
    assert r.status_code == 400 and "at most 3 (NAS_MAX_REPEATS)" in r.json()["error"]
    r = post(
        client, "/api/searches", {"team": personas.alpha.id, "name": "n3", "spec": {**spec, "child": {"repeats": 3}}}
    )
    assert r.status_code == 201, r.content


def test_the_papers_search_child_is_within_the_default_limits(client, personas):
    client.force_login(personas.owner)
    spec = {
        "dataset": "cifar10",
        "objective": "accuracy",
        "strategy": "ppo",
        "child": {"repeats": 2, "filters": 32, "epochs": 20},
        "budget": {"children": 2},
    }
    r = post(client, "/api/searches", {"team": personas.alpha.id, "name": "paper", "spec": spec})
    assert r.status_code == 201, r.content


# -- training jobs --------------------------------------------------------------------------------
def job_body(p, **kw):
    return {"team": p.alpha.id, "name": "j", "genotype": GENOTYPE, "dataset": "digits", **kw}


@pytest.mark.parametrize(
    "field, recipe",
    [
        ("recipe.epochs", {"epochs": 1_000_000}),
        ("recipe.filters", {"filters": 1_000_000}),
        ("recipe.repeats", {"repeats": 13}),
        ("recipe.cutout", {"cutout": 10**9}),
        ("recipe.seed", {"seed": -1}),
    ],
)
def test_a_training_job_over_a_limit_is_refused(client, personas, field, recipe):
    client.force_login(personas.owner)
    r = post(client, "/api/training-jobs", job_body(personas, recipe=recipe))
    assert r.status_code == 400 and r.json()["field"] == field, r.content
    assert not m.TrainingJob.objects.exists()


def test_a_training_jobs_cost_counts_its_own_cell(client, personas, settings):
    recipe = Recipe(repeats=2, filters=8, epochs=4)
    per_pass = forward_mult_adds(NASNET_A, recipe, DatasetShape(10, 1, 8, 1797))
    settings.NAS_MAX_JOB_COST = per_pass * 1797 * 4  # the whole of digits, 4 epochs: just fits
    client.force_login(personas.owner)
    r = post(client, "/api/training-jobs", job_body(personas, recipe={"repeats": 2, "filters": 8, "epochs": 4}))
    assert r.status_code == 201, r.content
    r = post(client, "/api/training-jobs", job_body(personas, recipe={"repeats": 2, "filters": 8, "epochs": 5}))
    assert r.status_code == 400 and r.json()["field"] == "recipe" and "NAS_MAX_JOB_COST" in r.json()["error"]


def test_training_jobs_have_a_team_quota_and_cancelling_one_frees_a_place(client, personas, settings):
    settings.NAS_MAX_ACTIVE_JOBS_PER_TEAM = 2
    client.force_login(personas.member)
    body = job_body(personas, recipe={"repeats": 1, "filters": 8, "epochs": 1})
    assert [post(client, "/api/training-jobs", body).status_code for _ in range(2)] == [201, 201]
    r = post(client, "/api/training-jobs", body)
    assert r.status_code == 429 and r.json()["field"] == "team" and "NAS_MAX_ACTIVE_JOBS_PER_TEAM" in r.json()["error"]
    # Another team is not held back by alpha's jobs.
    client.force_login(personas.outsider)
    other = post(client, "/api/training-jobs", {**body, "team": personas.beta.id})
    assert other.status_code == 201, other.content
    client.force_login(personas.member)
    first = m.TrainingJob.objects.filter(team=personas.alpha).order_by("id").first()
    r = post(client, f"/api/training-jobs/{first.id}/cancel", {})
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and "member" in r.json()["error"]
    assert post(client, "/api/training-jobs", body).status_code == 201
    # A finished job cannot be cancelled again.
    r = post(client, f"/api/training-jobs/{first.id}/cancel", {})
    assert r.status_code == 409 and r.json()["field"] == "status"


def test_only_the_team_cancels_its_jobs(client, personas):
    job = m.TrainingJob.objects.create(
        team=personas.alpha, owner=personas.owner, name="j", genotype=GENOTYPE, dataset={"name": "digits"}, recipe={}
    )
    client.force_login(personas.outsider)
    assert post(client, f"/api/training-jobs/{job.id}/cancel", {}).status_code == 404
    assert client.post(f"/training-jobs/{job.id}/cancel").status_code == 404
    job.refresh_from_db()
    assert job.status == m.RUN_QUEUED
    client.force_login(personas.member)
    page = client.get(f"/training-jobs/{job.id}").content.decode()
    assert 'id="job-cancel"' in page
    response = client.post(f"/training-jobs/{job.id}/cancel")
    assert response.status_code == 302
    job.refresh_from_db()
    assert (
        job.status == m.RUN_CANCELLED
        and 'id="job-cancel"' not in client.get(f"/training-jobs/{job.id}").content.decode()
    )


def test_a_budget_fit_is_held_to_the_limits_on_the_worker(db, settings, tmp_path, personas):
    """The submission checks the recipe it is given; the width a budget picks is checked
    once the worker has fitted it (here F over a lowered NAS_MAX_FILTERS)."""
    from webapp.searches.services import create_training_job
    from workers import training_jobs

    settings.NAS_ARTIFACTS_ROOT = tmp_path
    job = create_training_job(
        user=personas.owner,
        team=personas.alpha,
        name="wide",
        genotype=GENOTYPE,
        dataset={"name": "digits"},
        recipe={"repeats": 1, "epochs": 1},
        budget={"max_params": "2M"},
    )
    settings.NAS_MAX_FILTERS = 16
    training_jobs.run_training_job(job.id)
    job.refresh_from_db()
    assert job.status == m.RUN_FAILED and "recipe.filters" in job.error and "NAS_MAX_FILTERS" in job.error


def test_limits_unbounded_checks_nothing():
    huge = replace(Recipe(), repeats=100, filters=10**5, epochs=10**6)
    Limits.unbounded().check_recipe(huge, "child")


def test_staff_cancel_training_jobs_from_the_admin(client, personas):
    jobs = [
        m.TrainingJob.objects.create(
            team=personas.alpha, owner=personas.owner, name=f"j{i}", genotype=GENOTYPE, dataset={}, recipe={}, status=s
        )
        for i, s in enumerate([m.RUN_QUEUED, m.RUN_RUNNING, m.RUN_SUCCEEDED])
    ]
    client.force_login(personas.staff)
    data = {"action": "cancel_training_jobs", "_selected_action": [j.id for j in jobs]}
    response = client.post("/admin/searches/trainingjob/", data, follow=True)
    assert response.status_code == 200
    statuses = [m.TrainingJob.objects.get(pk=j.id).status for j in jobs]
    assert statuses == [m.RUN_CANCELLED, m.RUN_CANCELLED, m.RUN_SUCCEEDED]
    body = response.content.decode()
    assert "Cancelled 2" in body and "cannot cancel a succeeded training job" in body


def test_a_genotype_with_thousands_of_blocks_is_refused(client, personas):
    block = {"inputs": [0, 1], "ops": ["identity", "identity"], "combine": "add"}
    huge = {"normal": {"blocks": [block] * 10_000}, "reduce": {"blocks": [block]}}
    client.force_login(personas.owner)
    r = post(client, "/api/training-jobs", job_body(personas, genotype=huge))
    assert r.status_code == 400 and r.json()["field"] == "genotype.normal.blocks" and "at most 10" in r.json()["error"]
    assert not m.TrainingJob.objects.exists()


def test_validating_a_spec_never_builds_its_strategy(tmp_path, monkeypatch):
    """A web request validates specs: building PPO (its LSTM, its optimizer, torch's first
    import of its compiler) cost the first page of each web process 3.5 s of CPU."""
    from nas_engine.strategies import STRATEGIES

    def refuse(self, *args, **kwargs):
        raise AssertionError("a strategy was built while validating a spec")

    for cls in STRATEGIES.values():
        monkeypatch.setattr(cls, "__init__", refuse)
    spec = validate_spec({"strategy": {"name": "ppo", "settings": {"hidden_size": 64}}}, data_root=tmp_path)
    assert spec.strategy_settings["hidden_size"] == 64 and spec.strategy_settings["clip"] == 0.2
    bad = {"strategy": {"name": "evolution", "settings": {"population_size": 4, "tournament_size": 5}}}
    with pytest.raises(Exception) as err:
        validate_spec(bad, data_root=tmp_path)
    assert err.value.field == "strategy.settings.tournament_size"
    with pytest.raises(Exception) as err:
        validate_spec({"strategy": "simulated_annealing"}, data_root=tmp_path)
    assert err.value.field == "strategy.name"
