"""The boards: the leaderboard, the comparison of architectures, a training job's page,
and the live parts of an architecture's page (its curves and its jobs)."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from nas_engine.cells import NASNET_A
from tests.test_front_helpers import EPOCHS, SPEC, make_architecture, make_search
from webapp.live.models import SearchEvent
from webapp.searches import models as m


def ids_on(response) -> list[int]:
    return [a.id for a in response.context["page"].object_list]


def live_data(response, element_id: str) -> dict:
    """The JSON a page hands its script (json_script), read back from the HTML."""
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', response.content.decode())
    assert match, f"no #{element_id} on the page"
    return json.loads(match.group(1))


@pytest.fixture
def boards(personas):
    """alpha: one search of three scored architectures and one still training;
    beta: one search of one scored architecture."""
    search = make_search(personas.alpha, personas.owner, name="alpha digits")
    archs = [make_architecture(search, i, reward=r) for i, r in enumerate([0.5, 0.9, 0.7])]
    for arch, mult_adds in zip(archs, [2000, 3000, 1000], strict=True):
        arch.mult_adds = mult_adds
        arch.save(update_fields=["mult_adds"])
    pending = make_architecture(search, 3, reward=None, run_status=m.RUN_RUNNING)
    other = make_architecture(make_search(personas.beta, personas.outsider, name="beta secret"), 0, reward=0.99)

    class B:
        pass

    b = B()
    b.search, b.archs, b.pending, b.other = search, archs, pending, other
    return b


def make_job(arch, owner, **fields) -> m.TrainingJob:
    values = {
        "team": arch.search.team if arch else fields.pop("team"),
        "owner": owner,
        "architecture": arch,
        "name": "big one",
        "genotype": arch.genotype if arch else {},
        "dataset": {"name": "digits", "subset_per_class": 50, "val_size": None},
        "recipe": {"repeats": 4, "filters": 24, "epochs": 50, "macro": "cifar", "batch_size": 128, "lr": 0.025},
        **fields,
    }
    return m.TrainingJob.objects.create(**values)


# -- access ------------------------------------------------------------------------------------
def test_every_board_sends_an_anonymous_visitor_to_login(client, boards, personas):
    a, b = boards.archs[:2]
    job = make_job(a, personas.owner)
    for url in ("/leaderboard", f"/compare?ids={a.id},{b.id}", f"/training-jobs/{job.id}"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_nav_links_to_the_leaderboard(client, personas):
    client.force_login(personas.member)
    assert 'href="/leaderboard"' in client.get("/").content.decode()


# -- leaderboard -------------------------------------------------------------------------------
def test_the_leaderboard_lists_scored_architectures_best_first(client, personas, boards):
    client.force_login(personas.member)
    response = client.get("/leaderboard")
    assert response.status_code == 200
    assert ids_on(response) == [boards.archs[1].id, boards.archs[2].id, boards.archs[0].id]
    body = response.content.decode()
    assert "alpha digits" in body and "0.9000" in body and "digits" in body
    assert f'href="/architectures/{boards.archs[1].id}"' in body
    assert f'name="ids" value="{boards.archs[1].id}"' in body and 'action="/compare"' in body


def test_an_outsider_sees_nothing_of_another_teams_architectures(client, personas, boards):
    client.force_login(personas.outsider)
    response = client.get("/leaderboard")
    assert ids_on(response) == [boards.other.id]
    body = response.content.decode()
    assert "alpha digits" not in body and ">alpha<" not in body
    # naming alpha's team or search as a filter does not show them either
    assert client.get(f"/leaderboard?team={personas.alpha.id}").status_code == 400
    assert client.get(f"/leaderboard?search={boards.search.id}").status_code == 400


def test_a_member_does_not_see_the_other_teams_architectures_and_staff_sees_all(client, personas, boards):
    client.force_login(personas.member)
    assert boards.other.id not in ids_on(client.get("/leaderboard"))
    client.force_login(personas.staff)
    assert ids_on(client.get("/leaderboard"))[0] == boards.other.id
    assert len(ids_on(client.get("/leaderboard"))) == 4


@pytest.mark.parametrize(
    "sort, order",
    [("reward", [1, 2, 0]), ("params", [0, 1, 2]), ("mult_adds", [2, 0, 1])],
)
def test_the_leaderboard_sorts_by_reward_params_or_mult_adds(client, personas, boards, sort, order):
    client.force_login(personas.owner)
    response = client.get(f"/leaderboard?sort={sort}")
    assert response.status_code == 200
    assert ids_on(response) == [boards.archs[i].id for i in order]


def test_an_unknown_sort_is_a_400_naming_the_field(client, personas, boards):
    client.force_login(personas.owner)
    response = client.get("/leaderboard?sort=genotype")
    assert response.status_code == 400 and "sort" in response.context["form"].errors
    assert 'id="sort-errors"' in response.content.decode()


def test_the_leaderboard_filters_by_team_search_and_data_set(client, personas, boards):
    second = make_search(personas.alpha, personas.owner, name="alpha cifar")
    second.spec = {**SPEC, "dataset": {**SPEC["dataset"], "name": "cifar10"}}
    second.save()
    cifar = make_architecture(second, 0, reward=0.6)
    client.force_login(personas.staff)
    assert set(ids_on(client.get(f"/leaderboard?team={personas.beta.id}"))) == {boards.other.id}
    assert len(ids_on(client.get(f"/leaderboard?team={personas.alpha.id}"))) == 4
    assert ids_on(client.get(f"/leaderboard?search={second.id}")) == [cifar.id]
    assert ids_on(client.get("/leaderboard?dataset=cifar10")) == [cifar.id]
    assert cifar.id not in ids_on(client.get("/leaderboard?dataset=digits"))
    response = client.get(f"/leaderboard?team={personas.beta.id}&search={second.id}")
    assert ids_on(response) == [] and "matches these filters" in response.content.decode()
    assert client.get("/leaderboard?dataset=imagenet").status_code == 400  # not a data set of any search
    assert client.get("/leaderboard?team=abc").status_code == 400


def test_the_leaderboard_pages_and_its_links_keep_the_filters(client, personas, boards):
    search = make_search(personas.alpha, personas.owner, name="many")
    m.Architecture.objects.bulk_create(
        m.Architecture(search=search, sample_index=i, genotype={}, canonical_hash=f"{i:064d}", reward=i / 100)
        for i in range(60)
    )
    client.force_login(personas.member)
    first = client.get(f"/leaderboard?search={search.id}")
    assert len(ids_on(first)) == 50 and first.context["page"].paginator.num_pages == 2
    assert f'href="?search={search.id}&amp;page=2"' in first.content.decode()
    second = client.get(f"/leaderboard?search={search.id}&page=2")
    rewards = [a.reward for a in second.context["page"].object_list]
    assert rewards == [i / 100 for i in range(9, -1, -1)]
    assert "page 2 of 2" in second.content.decode()


def test_a_leaderboard_page_costs_the_same_queries_whatever_its_length(client, personas, boards):
    client.force_login(personas.member)
    with CaptureQueriesContext(connection) as few:
        client.get("/leaderboard")
    search = make_search(personas.alpha, personas.owner, name="many")
    m.Architecture.objects.bulk_create(
        m.Architecture(search=search, sample_index=i, genotype={}, canonical_hash=f"{i:064d}", reward=0.1)
        for i in range(80)
    )
    with CaptureQueriesContext(connection) as many:
        client.get("/leaderboard")
    assert len(many) == len(few)


def test_the_leaderboard_stays_cheap_with_20000_architectures_in_a_search(client, personas, boards):
    search = make_search(personas.alpha, personas.owner, name="paper scale", children=20000)
    genotype = NASNET_A.to_dict()
    m.Architecture.objects.bulk_create(
        (
            m.Architecture(
                search=search,
                sample_index=i,
                genotype=genotype,
                canonical_hash=f"{i:064d}",
                reward=(i * 7919 % 20000) / 20000,
                params=1000 + i,
            )
            for i in range(20000)
        ),
        batch_size=2000,
    )
    client.force_login(personas.member)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/leaderboard?search={search.id}&sort=params&page=400")
    assert response.status_code == 200 and response.context["page"].number == 400
    assert [a.params for a in response.context["page"].object_list][:2] == [1000 + 19950, 1000 + 19951]
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert '"genotype"' not in sql and '"checkpoint"' not in sql  # big fields stay in the database
    assert "LIMIT 50 OFFSET 19950" in sql  # the database pages, not Python
    assert len(queries) <= 12


def test_the_leaderboard_escapes_user_text(client, personas):
    search = make_search(personas.alpha, personas.owner, name="<script>alert(1)</script>")
    make_architecture(search, 0, reward=0.5)
    client.force_login(personas.owner)
    body = client.get("/leaderboard").content.decode()
    assert "<script>alert(1)</script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body


# -- compare -----------------------------------------------------------------------------------
def test_compare_shows_the_architectures_side_by_side(client, personas, boards):
    a, b, c = boards.archs
    client.force_login(personas.member)
    response = client.get(f"/compare?ids={b.id},{a.id},{boards.pending.id}")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count("<svg") == 3 and body.count('class="card compare-col"') == 3
    assert body.index(f'data-architecture="{b.id}"') < body.index(f'data-architecture="{a.id}"')  # the order given
    assert "0.9000" in body and "0.5000" in body and "123,457" in body and "3,000" in body
    assert "alpha digits" in body and f'href="/searches/{boards.search.id}"' in body
    assert 'id="compare-chart"' in body and "/static/vendor/plotly/plotly.min.js" in body and "cdn" not in body
    series = live_data(response, "compare-data")
    assert [s["architecture"] for s in series] == [b.id, a.id, boards.pending.id]
    assert [p["val_acc"] for p in series[0]["points"]] == [0.55, 0.83]
    assert series[2]["points"] == []  # still training: no epoch yet


def test_compare_takes_the_leaderboards_checkboxes(client, personas, boards):
    a, b, _ = boards.archs
    client.force_login(personas.owner)
    response = client.get(f"/compare?ids={a.id}&ids={b.id}")
    assert response.status_code == 200 and len(response.context["columns"]) == 2


@pytest.mark.parametrize(
    "query",
    ["", "?ids=", "?ids={a}", "?ids={a},x", "?ids={a},-3", "?ids={a},{a}", "?ids=1,2,3,4,5,6,7", "?ids={a};{b}"],
)
def test_compare_refuses_bad_ids_with_a_400_naming_the_field(client, personas, boards, query):
    a, b, _ = boards.archs
    client.force_login(personas.owner)
    response = client.get("/compare" + query.format(a=a.id, b=b.id))
    assert response.status_code == 400
    body = response.content.decode()
    assert "<strong>ids</strong>:" in body and 'id="compare-error"' in body


def test_compare_is_a_404_when_any_id_is_not_the_users(client, personas, boards):
    a, b, _ = boards.archs
    client.force_login(personas.member)
    assert client.get(f"/compare?ids={a.id},{boards.other.id}").status_code == 404
    assert client.get(f"/compare?ids={a.id},{b.id},999999").status_code == 404
    client.force_login(personas.outsider)
    assert client.get(f"/compare?ids={a.id},{b.id}").status_code == 404
    client.force_login(personas.staff)
    assert client.get(f"/compare?ids={a.id},{boards.other.id}").status_code == 200


def test_compare_escapes_user_text(client, personas):
    search = make_search(personas.alpha, personas.owner, name="<img src=x onerror=alert(1)>")
    a, b = make_architecture(search, 0, reward=0.5), make_architecture(search, 1, reward=0.6)
    client.force_login(personas.owner)
    body = client.get(f"/compare?ids={a.id},{b.id}").content.decode()
    assert "<img src=x" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body


# -- training job page -------------------------------------------------------------------------
@pytest.fixture
def job(personas, boards):
    arch = boards.archs[1]
    for seq in (1, 2, 3):
        SearchEvent.objects.create(search=arch.search, seq=seq, type="child.progress", payload={})
    return make_job(
        arch,
        personas.owner,
        status=m.RUN_SUCCEEDED,
        epochs=[{**e, "epochs": 50} for e in EPOCHS],
        reward=0.9412,
        params=3_300_000,
        mult_adds=541_000_000,
        wall_time=1234.5,
        bundle_path="jobs/1",
    )


@pytest.mark.parametrize("who", ["owner", "member", "staff"])
def test_the_job_page_shows_its_recipe_numbers_curves_and_bundle(client, personas, boards, job, who):
    client.force_login(getattr(personas, who))
    response = client.get(f"/training-jobs/{job.id}")
    assert response.status_code == 200
    body = response.content.decode()
    assert "big one" in body and 'class="badge succeeded"' in body
    assert f'href="/architectures/{boards.archs[1].id}"' in body and "alpha digits" in body
    assert "4@24" in body and ">50<" in body and "digits" in body and "subset_per_class 50" in body
    assert "0.9412" in body and "3,300,000" in body and "541,000,000" in body and "1234.5 s" in body
    assert f'href="/api/training-jobs/{job.id}/bundle"' in body and 'id="job-bundle"' in body
    assert re.search(r'id="job-bundle"[^>]*download>', body)  # shown, not hidden
    assert "2 / 50" in body and "val acc" in body and "0.8300" in body
    assert 'id="epoch-chart"' in body and "/static/front/job_live.js" in body
    live = live_data(response, "job-live-data")
    assert live["job"] == job.id and live["search"] == boards.search.id and live["after"] == 3
    assert live["api"] == f"/api/training-jobs/{job.id}"
    assert [(p["epoch"], p["val_acc"], p["train_loss"]) for p in live["points"]] == [(1, 0.55, 1.9), (2, 0.83, 1.1)]


def test_an_outsider_gets_a_404_for_a_job(client, personas, job):
    client.force_login(personas.outsider)
    assert client.get(f"/training-jobs/{job.id}").status_code == 404
    assert client.get("/training-jobs/999999").status_code == 404


def test_a_job_without_an_architecture_is_polled_and_has_no_bundle_yet(client, personas):
    job = make_job(None, personas.member, team=personas.alpha, name="from a file", status=m.RUN_RUNNING)
    client.force_login(personas.owner)
    response = client.get(f"/training-jobs/{job.id}")
    assert response.status_code == 200
    body = response.content.decode()
    assert "a genotype given directly" in body and 'class="badge running"' in body
    assert re.search(r'id="job-bundle"[^>]*hidden', body)
    assert "No epoch finished yet" in body and "– / 50" in body
    live = live_data(response, "job-live-data")
    assert live["search"] is None and live["status"] == "running" and "running" in live["active"]
    assert live["points"] == []


def test_a_failed_job_shows_its_error_escaped_and_no_bundle(client, personas, boards):
    job = make_job(
        boards.archs[0],
        personas.owner,
        name="<b>bold</b>",
        status=m.RUN_FAILED,
        error="CUDA out of memory <oops>",
        bundle_path="jobs/2",
    )
    client.force_login(personas.member)
    body = client.get(f"/training-jobs/{job.id}").content.decode()
    assert "CUDA out of memory &lt;oops&gt;" in body and "&lt;b&gt;bold&lt;/b&gt;" in body and "<b>bold" not in body
    assert re.search(r'id="job-bundle"[^>]*hidden', body)
    assert 'id="job-error-box" hidden' not in body


# -- the architecture page's live parts ----------------------------------------------------------
def test_the_architecture_page_has_the_chart_and_its_epoch_data(client, personas, boards):
    arch = boards.archs[1]
    for seq in (1, 2):
        SearchEvent.objects.create(search=arch.search, seq=seq, type="child.progress", payload={})
    client.force_login(personas.member)
    response = client.get(f"/architectures/{arch.id}")
    body = response.content.decode()
    assert 'id="epoch-chart"' in body and "/static/vendor/plotly/plotly.min.js" in body
    assert "/static/front/architecture_live.js" in body
    live = live_data(response, "arch-live-data")
    assert live["architecture"] == arch.id and live["search"] == boards.search.id and live["after"] == 2
    assert [(p["epoch"], p["val_acc"], p["train_loss"]) for p in live["points"]] == [(1, 0.55, 1.9), (2, 0.83, 1.1)]
    assert live["columns"][:3] == ["epoch", "train_loss", "train_acc"] and live["jobs"] == []


def test_an_architecture_still_training_has_an_empty_chart_and_waits_for_events(client, personas, boards):
    client.force_login(personas.owner)
    response = client.get(f"/architectures/{boards.pending.id}")
    live = live_data(response, "arch-live-data")
    assert live["points"] == [] and live["after"] == 0
    assert 'id="epoch-table" hidden' in response.content.decode()


def test_the_architecture_page_links_its_jobs_with_their_progress(client, personas, boards):
    arch = boards.archs[1]
    done = make_job(arch, personas.owner, name="done", status=m.RUN_SUCCEEDED, reward=0.95, epochs=EPOCHS)
    queued = make_job(arch, personas.member, name="<i>queued</i>")
    client.force_login(personas.member)
    response = client.get(f"/architectures/{arch.id}")
    body = response.content.decode()
    assert f'href="/training-jobs/{done.id}"' in body and f'href="/training-jobs/{queued.id}"' in body
    assert f'data-job="{done.id}"' in body and "2 / 2" in body and "– / 50" in body and "0.9500" in body
    assert "&lt;i&gt;queued&lt;/i&gt;" in body
    assert live_data(response, "arch-live-data")["jobs"] == [queued.id, done.id]
