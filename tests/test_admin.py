"""Django admin: staff only, every model listed and searchable, actions through services."""

from __future__ import annotations

import pytest

from tests.test_front_helpers import make_architecture, make_search
from webapp.accounts.models import ApiToken
from webapp.searches import models as m

CHANGELISTS = [
    "/admin/accounts/team/",
    "/admin/accounts/membership/",
    "/admin/accounts/apitoken/",
    "/admin/searches/search/",
    "/admin/searches/architecture/",
    "/admin/searches/childrun/",
    "/admin/searches/trainingjob/",
    "/admin/searches/selection/",
    "/admin/searches/selectionrun/",
]


@pytest.fixture
def search(personas):
    search = make_search(personas.alpha, personas.owner, name="alpha digits")
    make_architecture(search, 0, reward=0.91)
    make_architecture(search, 1, run_status=m.RUN_FAILED)
    return search


@pytest.fixture
def selection(personas, search):
    """A top-K selection of the search's first architecture: one seed done, one running."""
    arch = search.architectures.get(sample_index=0)
    selection = m.Selection.objects.create(
        search=search, owner=personas.owner, top_k=1, seeds=2, recipe={"epochs": 2}, status=m.RUN_RUNNING
    )
    m.SelectionRun.objects.create(selection=selection, architecture=arch, seed=0, status=m.RUN_SUCCEEDED, reward=0.93)
    m.SelectionRun.objects.create(selection=selection, architecture=arch, seed=1, status=m.RUN_RUNNING, attempt=1)
    return selection


def test_a_non_staff_member_is_sent_to_the_admin_login(client, personas):
    client.force_login(personas.owner)
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert client.get("/admin/searches/search/").status_code == 302


def test_an_anonymous_visitor_is_sent_to_the_admin_login(client, db):
    assert client.get("/admin/searches/search/").status_code == 302


@pytest.mark.parametrize("url", CHANGELISTS)
def test_staff_can_list_search_and_filter_every_model(client, personas, search, selection, url):
    m.TrainingJob.objects.create(
        team=personas.alpha, owner=personas.owner, name="job", genotype={}, dataset={}, recipe={}
    )
    ApiToken.issue(personas.owner, "laptop")
    client.force_login(personas.staff)
    assert client.get(url).status_code == 200
    assert client.get(url, {"q": "alpha"}).status_code == 200


@pytest.mark.parametrize(
    "url, params",
    [
        ("/admin/searches/search/", {"status__exact": "running"}),
        ("/admin/searches/childrun/", {"status__exact": "failed"}),
        ("/admin/searches/selection/", {"kind__exact": "top_k", "status__exact": "running"}),
        ("/admin/searches/selectionrun/", {"status__exact": "running"}),
    ],
)
def test_filters_narrow_the_lists(client, personas, search, selection, url, params):
    client.force_login(personas.staff)
    response = client.get(url, params)
    assert response.status_code == 200 and response.context["cl"].result_count == 1


def test_the_search_page_shows_counters_checkpoint_size_and_links_to_architectures(client, personas, search):
    from webapp.searches.models import StrategyCheckpointPart

    StrategyCheckpointPart.objects.create(search=search, key="envelope", digest="a", data=b"x" * 1000)
    StrategyCheckpointPart.objects.create(search=search, key="state.rng", digest="b", data=b"x" * 2000)
    client.force_login(personas.staff)
    body = client.get(f"/admin/searches/search/{search.id}/change/").content.decode()
    assert "2.9 KiB" in body
    assert f"?search__id__exact={search.id}" in body and "all 2 architectures" in body
    assert 'name="checkpoint"' not in body and 'name="status"' not in body  # read-only
    assert "#0 (0.9100)" in body
    listed = client.get("/admin/searches/architecture/", {"search__id__exact": search.id})
    assert listed.status_code == 200 and listed.context["cl"].result_count == 2


def test_the_architecture_page_draws_both_cells(client, personas, search):
    arch = search.architectures.get(sample_index=0)
    client.force_login(personas.staff)
    body = client.get(f"/admin/searches/architecture/{arch.id}/change/").content.decode()
    assert "<svg" in body and 'data-cell="normal"' in body and 'data-cell="reduce"' in body


def test_api_tokens_show_prefix_and_digest_never_the_raw_value(client, personas):
    token, raw = ApiToken.issue(personas.owner, "laptop")
    client.force_login(personas.staff)
    body = client.get(f"/admin/accounts/apitoken/{token.id}/change/").content.decode()
    assert token.digest in body and token.prefix in body and raw not in body
    assert 'name="digest"' not in body
    assert client.get("/admin/accounts/apitoken/add/").status_code == 403


def test_the_cancel_action_cancels_through_the_service(client, personas, search):
    done = make_search(personas.alpha, personas.owner, name="finished one", status=m.FINISHED)
    client.force_login(personas.staff)
    response = client.post(
        "/admin/searches/search/",
        {"action": "cancel_searches", "_selected_action": [search.id, done.id]},
        follow=True,
    )
    search.refresh_from_db(), done.refresh_from_db()
    assert (search.status, done.status) == (m.CANCELLING, m.FINISHED)
    body = response.content.decode()
    assert "Cancelling 1." in body and "cannot cancel a finished search" in body


def test_the_requeue_action_gives_failed_runs_another_try(client, personas, search):
    client.force_login(personas.staff)
    client.post("/admin/searches/search/", {"action": "requeue_failed", "_selected_action": [search.id]})
    run = m.ChildRun.objects.get(architecture__search=search, architecture__sample_index=1)
    assert run.status == m.RUN_QUEUED


def test_the_promote_action_queues_a_training_job_at_scale_on_the_searchs_data_set(client, personas, search):
    arch = search.architectures.get(sample_index=0)
    client.force_login(personas.staff)
    client.post("/admin/searches/architecture/", {"action": "promote_architectures", "_selected_action": [arch.id]})
    job = m.TrainingJob.objects.get()
    assert (job.architecture, job.team, job.owner) == (arch, personas.alpha, personas.staff)
    assert (job.recipe["repeats"], job.recipe["filters"], job.recipe["epochs"]) == (6, 32, 600)
    assert job.recipe["aux_weight"] == 0.4 and job.recipe["cutout"] == 0  # no cutout on 8x8 digits
    assert job.dataset == search.parsed_spec.dataset  # the validated form (test split fields included)


def test_the_selection_page_is_read_only_with_its_ranking_and_runs(client, personas, search, selection):
    arch = search.architectures.get(sample_index=0)
    client.force_login(personas.staff)
    body = client.get(f"/admin/searches/selection/{selection.id}/change/").content.decode()
    assert f'/admin/searches/architecture/{arch.id}/change/">#0</a>: 0.9300 (n=1, failed 0)' in body
    assert f"?selection__id__exact={selection.id}" in body and "all 2 runs" in body
    assert 'name="status"' not in body and 'name="top_k"' not in body  # read-only
    assert client.get("/admin/searches/selection/add/").status_code == 403
    assert client.get("/admin/searches/selectionrun/add/").status_code == 403
    run = selection.runs.get(seed=0)
    body = client.get(f"/admin/searches/selectionrun/{run.id}/change/").content.decode()
    assert 'name="reward"' not in body and "0.93" in body


def test_the_cancel_action_cancels_selections_through_the_service(client, personas, selection):
    client.force_login(personas.staff)
    client.post("/admin/searches/selection/", {"action": "cancel_selections", "_selected_action": [selection.id]})
    selection.refresh_from_db()
    assert selection.status == m.RUN_CANCELLED
    assert selection.runs.get(seed=1).status == m.RUN_CANCELLED and selection.runs.get(seed=0).reward == 0.93
