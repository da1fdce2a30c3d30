"""Selections (the paper's top-K stage) and noise floors: what is chosen, how it is trained
and ranked, who may ask, and what is refused. The runs are trained here in-process through
the worker's own code (tests/test_orchestration.py kills real workers mid-selection)."""

from __future__ import annotations

import json

import pytest

from nas_engine.cells import NASNET_A
from nas_engine.selection import Candidate, SelectionError, default_top_k, selection_recipe, top_k
from nas_engine.trainer import Recipe
from tests.test_front_helpers import SPEC, make_architecture, make_search
from webapp.live.models import SearchEvent
from webapp.searches import models as m
from webapp.searches.services import ServiceError, cancel_selection, create_selection, start_follow_ups
from workers import selection_runs

SYNTHETIC_SPEC = {**SPEC, "objective": {"name": "synthetic", "noise": 0.05, "duration_s": 0.0, "failure_rate": 0.0}}


# -- choosing (nas_engine.selection) ----------------------------------------------------------------
def test_the_default_k_scales_the_papers_250_of_20000():
    assert default_top_k(20_000) == 250
    assert default_top_k(2_000) == 25
    assert default_top_k(20) == 3  # never fewer than 3
    assert default_top_k(10**6) == 250


def test_top_k_counts_a_duplicate_genotype_once_and_breaks_ties_by_sample():
    cands = [
        Candidate(1, "a", 0.9, 0),
        Candidate(2, "b", 0.95, 1),
        Candidate(3, "a", 0.99, 2),  # the same cell sampled again: its first sample stands
        Candidate(4, "c", 0.9, 3),
    ]
    assert [c.architecture for c in top_k(cands, 3)] == [2, 1, 4]
    with pytest.raises(SelectionError, match="more than the 3 distinct") as err:
        top_k(cands, 4)
    assert err.value.field == "top_k"


def test_the_selection_recipe_trains_the_child_twice_as_long_unless_told():
    child = Recipe(epochs=3, lr=0.05)
    assert selection_recipe(child).epochs == 6 and selection_recipe(child).lr == 0.05
    assert selection_recipe(child, {"epochs": 20, "cutout": 4}).to_dict()["cutout"] == 4


# -- the service -----------------------------------------------------------------------------------
@pytest.fixture
def search(personas):
    s = make_search(personas.alpha, personas.owner, status=m.FINISHED, children=6)
    s.spec = SYNTHETIC_SPEC
    s.save()
    for i, reward in enumerate([0.5, 0.9, 0.7, 0.95, None, 0.6]):
        make_architecture(s, i, reward=reward, run_status=m.RUN_SUCCEEDED if reward else m.RUN_FAILED)
    return s


@pytest.mark.django_db(transaction=True)
def test_a_selection_trains_the_top_k_with_each_seed_once(personas, search):
    selection = create_selection(user=personas.member, search=search, top_k=3, seeds=2)
    runs = list(selection.runs.order_by("architecture__sample_index", "seed"))
    assert [(r.architecture.sample_index, r.seed) for r in runs] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert selection.recipe["epochs"] == 2 * SPEC["child"]["epochs"] and selection.status == m.RUN_QUEUED
    assert SearchEvent.objects.filter(search=search, type="selection.progress").count() == 1
    for run in runs:
        selection_runs.run_selection_run(run.id)
    selection.refresh_from_db()
    assert selection.status == m.RUN_SUCCEEDED and selection.finished_at
    ranking = selection.ranking()
    assert {r["sample_index"] for r in ranking} == {1, 2, 3}
    assert all(r["n"] == 2 and r["std"] is not None for r in ranking)
    means = [r["mean"] for r in ranking]
    assert means == sorted(means, reverse=True)
    assert selection.winner_id == ranking[0]["architecture"]
    assert selection.noise_std == pytest.approx(selection.pooled_std(ranking))
    # The synthetic objective's other draws differ from the search's reward (draw 0).
    assert {r.reward for r in selection.runs.all()} != {a.reward for a in search.architectures.all()}
    payload = SearchEvent.objects.filter(search=search, type="selection.progress").latest("seq").payload
    assert payload["selection"]["status"] == m.RUN_SUCCEEDED and payload["selection"]["winner"] == selection.winner_id
    # A run trained again (a message delivered twice) writes nothing: one result per seed.
    selection_runs.run_selection_run(runs[0].id)
    assert selection.runs.filter(architecture=runs[0].architecture, seed=0).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_noise_floor_sets_the_searchs_noise_floor(personas, search):
    selection = create_selection(user=None, search=search, kind=m.SELECTION_NOISE_FLOOR, top_k=2, seeds=2)
    assert {r.seed for r in selection.runs.all()} == {1, 2}  # never the search's own seed 0
    assert selection.recipe == Recipe.from_dict(SPEC["child"]).to_dict()  # the child's recipe, unchanged
    for run in selection.runs.all():
        selection_runs.run_selection_run(run.id)
    selection.refresh_from_db()
    search.refresh_from_db()
    assert selection.status == m.RUN_SUCCEEDED and selection.winner_id is None
    assert all(r["n"] == 3 for r in selection.ranking())  # two seeds and the search's own reward
    assert search.noise_floor == pytest.approx(selection.noise_std) and search.noise_floor > 0
    assert search.to_dict()["noise_floor"] == search.noise_floor


@pytest.mark.django_db(transaction=True)
def test_a_finished_searchs_spec_starts_its_follow_ups(personas, search):
    search.spec = {**SYNTHETIC_SPEC, "selection": {"top_k": 2, "seeds": 1}, "noise_floor": {"children": 1}}
    search.save()
    started = start_follow_ups(search)
    assert [(s.kind, s.top_k, s.seeds, s.owner) for s in started] == [
        (m.SELECTION_NOISE_FLOOR, 1, 2, None),
        (m.SELECTION_TOP_K, 2, 1, None),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("top_k", {"top_k": 6}),  # 5 children have a reward
        ("top_k", {"top_k": 0}),
        ("top_k", {"top_k": "3"}),
        ("seeds", {"seeds": 0}),
        ("seeds", {"seeds": 11}),  # NAS_MAX_SELECTION_SEEDS
        ("recipe.epochs", {"recipe": {"epochs": 0}}),
        ("recipe.wings", {"recipe": {"wings": 2}}),
        ("recipe", {"recipe": [1]}),
        ("kind", {"kind": "best"}),
    ],
)
def test_bad_options_are_refused_naming_the_field_and_write_nothing(personas, search, field, kwargs):
    with pytest.raises(ServiceError) as err:
        create_selection(user=personas.owner, search=search, **kwargs)
    assert err.value.field == field and err.value.status == 400
    assert not m.Selection.objects.exists() and not m.SelectionRun.objects.exists()


@pytest.mark.django_db
def test_the_runs_limit_and_the_teams_limit_protect_the_gpu_queue(personas, search, settings):
    settings.NAS_MAX_SELECTION_RUNS = 5
    with pytest.raises(ServiceError, match="NAS_MAX_SELECTION_RUNS") as err:
        create_selection(user=personas.owner, search=search, top_k=3, seeds=2)
    assert err.value.field == "top_k"
    settings.NAS_MAX_SELECTION_RUNS, settings.NAS_MAX_ACTIVE_SELECTIONS_PER_TEAM = 1000, 1
    create_selection(user=personas.owner, search=search, top_k=1, seeds=1)
    with pytest.raises(ServiceError) as err:
        create_selection(user=personas.owner, search=search, top_k=1, seeds=1)
    assert (err.value.field, err.value.status) == ("team", 429)


@pytest.mark.django_db
def test_an_outsider_cannot_select_from_another_teams_search(personas, search):
    with pytest.raises(ServiceError) as err:
        create_selection(user=personas.outsider, search=search)
    assert err.value.status == 404 and not m.Selection.objects.exists()


@pytest.mark.django_db
def test_cancel_stops_every_active_run(personas, search):
    selection = create_selection(user=personas.owner, search=search, top_k=2, seeds=1)
    cancel_selection(selection)
    assert set(selection.runs.values_list("status", flat=True)) == {m.RUN_CANCELLED}
    assert m.SelectionRun.claim(selection.runs.first().id, "w:1") is None  # never claimed afterwards
    with pytest.raises(ServiceError) as err:
        cancel_selection(selection)
    assert err.value.status == 409


# -- the API ---------------------------------------------------------------------------------------
def post(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


@pytest.mark.django_db
def test_the_api_creates_lists_shows_and_cancels_a_selection(client, personas, search):
    client.force_login(personas.member)
    r = post(client, f"/api/searches/{search.id}/selections", {"top_k": 2, "seeds": 2, "recipe": {"epochs": 4}})
    assert r.status_code == 201, r.json()
    body = r.json()
    assert (body["top_k"], body["seeds"], body["recipe"]["epochs"], body["runs_total"]) == (2, 2, 4, 4)
    assert [row["sample_index"] for row in body["ranking"]] == [3, 1]  # before any result: search order
    listed = client.get(f"/api/searches/{search.id}/selections").json()
    assert [s["id"] for s in listed["results"]] == [body["id"]]
    assert client.get(f"/api/selections/{body['id']}").json()["status"] == m.RUN_QUEUED
    assert post(client, f"/api/selections/{body['id']}/cancel", {}).json()["status"] == m.RUN_CANCELLED


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [({"top_k": 99}, "top_k"), ({"colour": 1}, "colour"), ({"seeds": True}, "seeds"), ({"recipe": "x"}, "recipe")],
)
def test_the_api_answers_a_bad_selection_with_the_field(client, personas, search, body, field):
    client.force_login(personas.owner)
    r = post(client, f"/api/searches/{search.id}/selections", body)
    assert r.status_code == 400 and r.json()["field"] == field


@pytest.mark.django_db
def test_outsiders_and_anonymous_get_nothing(client, personas, search):
    selection = create_selection(user=personas.owner, search=search, top_k=1, seeds=1)
    assert client.get(f"/api/selections/{selection.id}").status_code == 401
    client.force_login(personas.outsider)
    assert client.get(f"/api/selections/{selection.id}").status_code == 404
    assert post(client, f"/api/selections/{selection.id}/cancel", {}).status_code == 404
    assert post(client, f"/api/searches/{search.id}/selections", {}).status_code == 404
    client.force_login(personas.staff)
    assert client.get(f"/api/selections/{selection.id}").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_real_training_selection_ranks_by_validation_accuracy(personas, tmp_path, settings):
    """Digits, real children: the runs train on the search's validation split; no run reads
    the test split (the data set's test images never reach the trainer's decisions)."""
    settings.NAS_CACHE_DIR, settings.NAS_ARTIFACTS_ROOT = tmp_path / "cache", tmp_path / "artifacts"
    search = make_search(personas.alpha, personas.owner, status=m.FINISHED, children=2)
    search.spec = {**SPEC, "dataset": {"name": "digits", "subset_per_class": 20}}
    search.save()
    make_architecture(search, 0, reward=0.4, genotype=NASNET_A)
    make_architecture(search, 1, reward=0.3)
    selection = create_selection(user=personas.owner, search=search, top_k=2, seeds=1, recipe={"epochs": 1})
    for run in selection.runs.all():
        selection_runs.run_selection_run(run.id)
    selection.refresh_from_db()
    assert selection.status == m.RUN_SUCCEEDED
    for run in selection.runs.all():
        assert run.status == m.RUN_SUCCEEDED and 0 <= run.reward <= 1
        assert [e["epoch"] for e in run.epochs] == [1] and run.epochs[0]["val_acc"] == run.reward
    # Each run checkpointed its epochs (a requeued run resumes) and removed the file when it ended.
    assert (tmp_path / "artifacts" / "checkpoints").is_dir()
    assert not list((tmp_path / "artifacts" / "checkpoints").iterdir())


@pytest.mark.django_db
def test_a_search_without_rewards_is_refused_plainly(personas):
    search = make_search(personas.alpha, personas.owner, status=m.RUNNING, children=4)
    make_architecture(search, 0, reward=None, run_status=m.RUN_RUNNING)
    for kind in (m.SELECTION_TOP_K, m.SELECTION_NOISE_FLOOR):
        with pytest.raises(ServiceError, match="no child of this search has a reward yet") as err:
            create_selection(user=personas.owner, search=search, kind=kind)
        assert err.value.field == "search"


@pytest.mark.django_db
def test_an_accuracy_search_with_the_default_validation_split_may_be_selected(personas):
    search = make_search(personas.alpha, personas.owner, status=m.FINISHED, children=4)  # SPEC: val_size null
    for i in range(4):
        make_architecture(search, i, reward=0.5 + i / 10)
    assert [s.kind for s in start_follow_ups(search)] == [m.SELECTION_NOISE_FLOOR]  # the default noise floor
    assert create_selection(user=personas.owner, search=search, top_k=2, seeds=1).runs.count() == 2
