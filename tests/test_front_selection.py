"""Selections on the web pages (issue #11): a selection's page where the ranking forms, the
search page's "Select top K" form, its list of selections and its noise floor, and mean ± std
over seeds on the leaderboard and the architecture page. Rows are written directly, the way
the workers would leave them (tests/test_selections.py trains real ones)."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from nas_engine.selection import default_top_k
from nas_engine.trainer import Recipe
from tests.test_front_helpers import SPEC, make_architecture, make_search
from webapp.live import events as live
from webapp.searches import models as m

EVIL = "<script>alert(1)</script>"
# A validation split of its own: services.create_selection ranks by validation accuracy.
SELECTABLE_SPEC = {**SPEC, "dataset": {**SPEC["dataset"], "val_size": 0.2}}


def live_data(body: str, element_id: str) -> dict:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', body)
    assert match, f"no #{element_id} on the page"
    return json.loads(match.group(1))


def make_selection(search, owner, kind=m.SELECTION_TOP_K, status=m.RUN_RUNNING, runs=(), **fields) -> m.Selection:
    """runs: (architecture, seed, reward or None, status)."""
    recipe = Recipe.from_dict({**SPEC["child"], "epochs": 2 * SPEC["child"]["epochs"]}).to_dict()
    archs = {a.id for a, *_ in runs}
    selection = m.Selection.objects.create(
        search=search, owner=owner, kind=kind, top_k=len(archs), seeds=2, recipe=recipe, status=status, **fields
    )
    for arch, seed, reward, run_status in runs:
        m.SelectionRun.objects.create(
            selection=selection, architecture=arch, seed=seed, reward=reward, status=run_status, attempt=1
        )
    return selection


@pytest.fixture
def search(personas):
    search = make_search(personas.alpha, personas.owner, name="alpha digits", status=m.FINISHED)
    search.spec = SELECTABLE_SPEC
    search.save()
    for i, reward in enumerate([0.71, 0.93, 0.85, None]):
        make_architecture(search, i, reward=reward, run_status=m.RUN_SUCCEEDED if reward else m.RUN_FAILED)
    return search


def arch(search, index) -> m.Architecture:
    return search.architectures.get(sample_index=index)


@pytest.fixture
def selection(personas, search):
    """Top-K of two: #1 has both seeds (0.94, 0.92), #2 one of two (0.90, then still running)."""
    a1, a2 = arch(search, 1), arch(search, 2)
    runs = [
        (a1, 0, 0.94, m.RUN_SUCCEEDED),
        (a1, 1, 0.92, m.RUN_SUCCEEDED),
        (a2, 0, 0.90, m.RUN_SUCCEEDED),
        (a2, 1, None, m.RUN_RUNNING),
    ]
    return make_selection(search, personas.owner, runs=runs)


# -- the selection's page ------------------------------------------------------------------------
def test_the_selection_page_sends_an_anonymous_visitor_to_login(client, selection):
    response = client.get(f"/selections/{selection.id}")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("who", ["owner", "member", "staff"])
def test_members_and_staff_see_the_ranking(client, personas, search, selection, who):
    client.force_login(getattr(personas, who))
    response = client.get(f"/selections/{selection.id}")
    assert response.status_code == 200
    body = response.content.decode()
    assert f"Top-K selection #{selection.id}" in body and "alpha digits" in body
    assert f'href="/searches/{search.id}"' in body
    assert 'id="selection-owner">owner<' in body  # who started it
    assert 'id="sel-k-seeds">2 × 2<' in body and 'id="sel-runs">3 / 4<' in body
    assert 'id="sel-failed">0 · 1<' in body
    rows = re.findall(r'<tr data-architecture="(\d+)"', body)
    assert rows == [str(arch(search, 1).id), str(arch(search, 2).id)]  # best mean first
    assert "0.9300 ± 0.0141" in body  # mean ± sample std of 0.94 and 0.92
    assert 'title="seed 0">0.9400<' in body and 'title="seed 1">0.9200<' in body
    assert 'title="seed 1">–<' in body  # #2's second seed: still running
    assert f'href="/architectures/{arch(search, 1).id}">#1<' in body
    assert "<details><summary><strong>Full recipe JSON" in body and "&quot;epochs&quot;: 2" in body
    assert 'id="sel-epochs">2<' in body and 'id="sel-n-at-f">1@8<' in body
    assert 'id="selection-cancel"' in body  # active: members may cancel
    assert 'id="live-state"' in body and "/static/front/selection_live.js" in body


def test_an_outsider_gets_404_and_cannot_cancel(client, personas, selection):
    client.force_login(personas.outsider)
    assert client.get(f"/selections/{selection.id}").status_code == 404
    assert client.post(f"/selections/{selection.id}/cancel").status_code == 404
    selection.refresh_from_db()
    assert selection.status == m.RUN_RUNNING
    client.force_login(personas.owner)
    assert client.get("/selections/999999").status_code == 404


def test_the_winner_is_highlighted_with_a_link_to_train_it(client, personas, search, selection):
    winner = arch(search, 1)
    selection.runs.filter(status=m.RUN_RUNNING).update(status=m.RUN_SUCCEEDED, reward=0.88)
    selection.status, selection.winner = m.RUN_SUCCEEDED, winner
    selection.save()
    client.force_login(personas.member)
    body = client.get(f"/selections/{selection.id}").content.decode()
    assert f'<tr data-architecture="{winner.id}" class="winner">' in body
    assert f'id="train-winner" href="/architectures/{winner.id}#train"' in body
    assert f'id="sel-winner"><a href="/architectures/{winner.id}">#1</a>' in body
    assert 'id="selection-cancel"' not in body  # ended: nothing to cancel
    # The link lands on the architecture page's training-job form.
    assert 'id="train"' in client.get(f"/architectures/{winner.id}").content.decode()


def test_a_noise_floor_started_by_the_spec_shows_its_spread_and_what_it_means(client, personas, search):
    a0, a2 = arch(search, 0), arch(search, 2)
    runs = [(a0, 1, 0.69, m.RUN_SUCCEEDED), (a0, 2, 0.73, m.RUN_SUCCEEDED), (a2, 1, 0.83, m.RUN_SUCCEEDED)]
    floor = make_selection(search, None, kind=m.SELECTION_NOISE_FLOOR, status=m.RUN_SUCCEEDED, runs=runs)
    floor.noise_std = 0.0200
    floor.save()
    client.force_login(personas.owner)
    body = client.get(f"/selections/{floor.id}").content.decode()
    assert f"Noise floor #{floor.id}" in body and 'id="selection-owner">the search\'s spec<' in body
    assert 'id="sel-noise-std">0.0200<' in body
    assert "may differ by chance" in body and "<strong>0.0200</strong>" in body
    assert 'id="selection-winner"' not in body and 'id="train-winner"' not in body
    assert "0.7100 ± 0.0200" in body  # the search's own reward counted as one seed: 0.71, 0.69, 0.73


def test_the_page_hands_its_script_what_it_needs(client, personas, search, selection):
    live.publish(search.id, *live.selection_progress(selection))
    client.force_login(personas.member)
    body = client.get(f"/selections/{selection.id}").content.decode()
    cfg = live_data(body, "selection-live-data")
    assert cfg == {
        "selection": selection.id,
        "search": search.id,
        "kind": "top_k",
        "after": 1,  # the event above is already in the page
        "ws_path": f"/ws/searches/{search.id}/",
        "architecture_prefix": "/architectures/",
        "active": list(m.RUN_ACTIVE),
        "status": "running",
        "winner": None,
    }
    # What the script redraws from: a selection.progress event's payload, keyed as it reads it.
    payload = live.selection_progress(selection)[1]["selection"]
    assert payload["id"] == cfg["selection"] and payload["kind"] == cfg["kind"]
    assert {"status", "runs_total", "runs_done", "runs_failed", "runs_running", "winner", "noise_std", "error"} <= set(
        payload
    )
    row = payload["ranking"][0]
    assert {"architecture", "sample_index", "search_reward", "seeds", "rewards", "mean", "std", "n"} <= set(row)
    for node in ("selection-status", "sel-runs", "sel-runs-bar", "sel-failed", "selection-error", "ranking-empty"):
        assert f'id="{node}"' in body, node
    assert '<table id="ranking">' in body


def test_the_page_escapes_user_text(client, personas, search, selection):
    search.name = EVIL
    search.save()
    personas.alpha.name = f"team {EVIL}"
    personas.alpha.save()
    selection.error = EVIL
    selection.save()
    client.force_login(personas.owner)
    body = client.get(f"/selections/{selection.id}").content.decode()
    assert EVIL not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_a_member_cancels_an_active_selection(client, personas, selection):
    client.force_login(personas.member)
    response = client.post(f"/selections/{selection.id}/cancel", follow=True)
    selection.refresh_from_db()
    assert selection.status == m.RUN_CANCELLED
    assert not selection.runs.filter(status__in=m.RUN_ACTIVE).exists()
    assert f"Selection #{selection.id} cancelled." in response.content.decode()
    again = client.post(f"/selections/{selection.id}/cancel", follow=True)
    assert "Could not cancel: cannot cancel a cancelled selection." in again.content.decode()
    assert client.get(f"/selections/{selection.id}/cancel").status_code == 405


def test_cancel_needs_the_csrf_token(personas, selection):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    assert client.post(f"/selections/{selection.id}/cancel").status_code == 403
    selection.refresh_from_db()
    assert selection.status == m.RUN_RUNNING


# -- the search page: the form, the list, the noise floor ----------------------------------------
def test_the_search_page_offers_a_top_k_form_with_the_defaults(client, personas, search):
    client.force_login(personas.member)
    body = client.get(f"/searches/{search.id}").content.decode()
    assert f'action="/searches/{search.id}/select"' in body
    assert re.search(rf'name="top_k" value="{default_top_k(search.children_total)}"', body)
    assert re.search(r'name="seeds" value="2"', body)
    assert re.search(rf'name="epochs" value="{2 * SPEC["child"]["epochs"]}"', body)
    assert "No selection yet." in body
    assert 'id="stat-noise-floor">–<' in body


def test_the_form_creates_a_selection_and_redirects_to_its_page(client, personas, search):
    client.force_login(personas.member)
    response = client.post(f"/searches/{search.id}/select", {"top_k": 2, "seeds": 3, "epochs": 5})
    selection = m.Selection.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/selections/{selection.id}"
    assert (selection.kind, selection.owner, selection.top_k, selection.seeds) == ("top_k", personas.member, 2, 3)
    assert selection.recipe["epochs"] == 5
    assert sorted(selection.runs.values_list("architecture__sample_index", flat=True)) == [1, 1, 1, 2, 2, 2]
    assert client.get(response["Location"]).status_code == 200


@pytest.mark.parametrize(
    "data, field, reason",
    [
        ({"top_k": 0, "seeds": 2, "epochs": 2}, "top_k", "must be between 1 and"),
        ({"top_k": 9, "seeds": 2, "epochs": 2}, "top_k", "more than the 3 distinct architectures"),
        ({"top_k": "three", "seeds": 2, "epochs": 2}, "top_k", "Enter a whole number."),
        ({"top_k": 2, "seeds": 0, "epochs": 2}, "seeds", "must be between 1 and"),
        ({"top_k": 2, "seeds": 2, "epochs": -1}, "epochs", ""),
    ],
)
def test_a_bad_field_is_shown_on_that_field_and_writes_nothing(client, personas, search, data, field, reason):
    client.force_login(personas.member)
    response = client.post(f"/searches/{search.id}/select", data)
    assert response.status_code == 400
    body = response.content.decode()
    errors = re.search(rf'<ul class="errorlist" id="{field}-errors">(.*?)</ul>', body, re.S)
    assert errors and reason in errors.group(1)
    assert not m.Selection.objects.exists() and not m.SelectionRun.objects.exists()
    assert "alpha digits" in body  # the search page again, with the form as typed


def test_a_search_without_rewards_is_a_form_error_not_a_500(client, personas):
    search = make_search(personas.alpha, personas.owner, name="empty", status=m.FINISHED)
    search.spec = SELECTABLE_SPEC
    search.save()
    client.force_login(personas.owner)
    response = client.post(f"/searches/{search.id}/select", {"top_k": 3, "seeds": 2, "epochs": 2})
    assert response.status_code == 400
    assert "no child of this search has a reward yet" in response.content.decode()
    assert not m.Selection.objects.exists()


def test_the_teams_limit_is_a_form_error_naming_the_team(client, personas, search, settings):
    settings.NAS_MAX_ACTIVE_SELECTIONS_PER_TEAM = 1
    make_selection(search, personas.owner, runs=[(arch(search, 1), 0, None, m.RUN_QUEUED)])
    client.force_login(personas.owner)
    response = client.post(f"/searches/{search.id}/select", {"top_k": 2, "seeds": 2, "epochs": 2})
    assert response.status_code == 400
    body = response.content.decode()
    assert re.search(r'<ul class="errorlist"><li>team: the team has 1 selections running', body)
    assert m.Selection.objects.count() == 1 and m.SelectionRun.objects.count() == 1


def test_an_outsider_cannot_start_a_selection(client, personas, search):
    client.force_login(personas.outsider)
    assert client.post(f"/searches/{search.id}/select", {"top_k": 2}).status_code == 404
    assert client.get(f"/searches/{search.id}/select").status_code == 405
    assert not m.Selection.objects.exists()


def test_the_search_page_lists_its_selections_and_shows_the_noise_floor(client, personas, search, selection):
    winner = arch(search, 1)
    done = make_selection(search, None, status=m.RUN_SUCCEEDED, runs=[(winner, 0, 0.95, m.RUN_SUCCEEDED)])
    done.winner = winner
    done.save()
    floor = make_selection(search, None, kind=m.SELECTION_NOISE_FLOOR, runs=[(arch(search, 0), 1, None, "queued")])
    client.force_login(personas.owner)
    body = client.get(f"/searches/{search.id}").content.decode()
    listed = re.findall(r'<tr data-selection="(\d+)">', body)
    assert listed == [str(floor.id), str(done.id), str(selection.id)]  # newest first
    assert f'href="/selections/{selection.id}"' in body and "2 × 2" in body
    row = re.search(rf'<tr data-selection="{done.id}">(.*?)</tr>', body, re.S).group(1)
    assert f'href="/architectures/{winner.id}">#1<' in row and "succeeded" in row
    assert 'id="stat-noise-floor">measuring…<' in body  # a noise floor under way
    search.noise_floor = 0.0123
    search.save()
    body = client.get(f"/searches/{search.id}").content.decode()
    assert 'id="stat-noise-floor">0.0123<' in body
    assert "Noise floor (std over seeds)" in body


def test_the_search_status_carries_the_noise_floor_the_chart_draws(client, personas, search):
    search.noise_floor = 0.0123
    search.save()
    client.force_login(personas.member)
    assert client.get(f"/searches/{search.id}/chart.json").json()["status"]["noise_floor"] == 0.0123
    _, payload = live.status(m.Search.objects.select_related("owner").get(pk=search.pk))
    assert payload["search"]["noise_floor"] == 0.0123


# -- mean ± std beside the search reward -------------------------------------------------------------
def test_the_leaderboard_shows_mean_and_std_over_seeds_in_one_query(client, personas, search):
    client.force_login(personas.member)
    with CaptureQueriesContext(connection) as before:
        body = client.get("/leaderboard").content.decode()
    assert "Selection mean ± std" in body
    a1, a2, a0 = arch(search, 1), arch(search, 2), arch(search, 0)
    top = make_selection(
        search,
        personas.owner,
        status=m.RUN_SUCCEEDED,
        runs=[(a1, 0, 0.94, "succeeded"), (a1, 1, 0.92, "succeeded"), (a2, 0, 0.90, "succeeded")],
    )
    runs = [(a0, 1, 0.69, "succeeded"), (a0, 2, 0.73, "succeeded")]
    floor = make_selection(search, None, kind=m.SELECTION_NOISE_FLOOR, status=m.RUN_SUCCEEDED, runs=runs)
    with CaptureQueriesContext(connection) as after:
        response = client.get("/leaderboard")
    assert len(after) == len(before)  # one aggregate query for the page, not one per row
    body = response.content.decode()
    row = {a.id: re.search(rf'value="{a.id}" id="pick-{a.id}"(.*?)</tr>', body, re.S).group(1) for a in (a0, a1, a2)}
    assert "0.9300 ± 0.0141" in row[a1.id] and "(2 seeds)" in row[a1.id] and f"/selections/{top.id}" in row[a1.id]
    assert "0.9000</a>" in row[a2.id] and "(1 seed)" in row[a2.id]  # one seed: no spread yet
    # A noise floor counts the search's reward as a seed, as its page does: 0.71, 0.69, 0.73.
    ranked = {r["architecture"]: r for r in floor.ranking()}
    assert f"{ranked[a0.id]['mean']:.4f} ± {ranked[a0.id]['std']:.4f}" == "0.7100 ± 0.0200"
    assert "0.7100 ± 0.0200" in row[a0.id] and "(3 seeds)" in row[a0.id]
    arch_body = client.get(f"/architectures/{a1.id}").content.decode()
    assert 'id="arch-selection">0.9300 ± 0.0141<' in arch_body and f'<tr data-selection="{top.id}">' in arch_body


def test_an_architecture_without_selection_runs_shows_none(client, personas, search):
    client.force_login(personas.member)
    body = client.get(f"/architectures/{arch(search, 1).id}").content.decode()
    assert 'id="arch-selection"' not in body and 'id="arch-selections"' not in body


# -- in the browser: the ranking forms live, the chart draws the noise floor ---------------------
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_ranking_and_the_noise_floor_arrive_live_in_the_browser(personas, monkeypatch, settings):
    """daphne on the test database and headless Chromium (as tests/test_e2e_browser.py, without
    workers): events published here reach the open pages, which redraw from them alone."""
    from tests.test_e2e_browser import live_browser

    search = make_search(personas.alpha, personas.owner, name="alpha digits", status=m.FINISHED)
    for i, reward in enumerate([0.71, 0.93, 0.85]):
        make_architecture(search, i, reward=reward)
    a1, a2 = arch(search, 1), arch(search, 2)
    runs = [
        (a1, 0, 0.90, "succeeded"),
        (a1, 1, 0.88, "succeeded"),
        (a2, 0, 0.95, "succeeded"),
        (a2, 1, None, "running"),
    ]
    selection = make_selection(search, personas.owner, runs=runs)
    with live_browser(settings, monkeypatch) as pages:
        page = pages.open(f"/selections/{selection.id}")
        order = "() => [...document.querySelectorAll('#ranking tbody tr')].map(r => Number(r.dataset.architecture))"
        assert page.evaluate(order) == [a2.id, a1.id]  # 0.95 over one seed, then 0.89 over two

        selection.runs.filter(status=m.RUN_RUNNING).update(status=m.RUN_SUCCEEDED, reward=0.81)
        selection.status, selection.winner, selection.error = m.RUN_SUCCEEDED, a1, EVIL
        selection.save()
        live.publish(search.id, *live.selection_progress(selection))
        page.wait_for_function("() => document.querySelector('#selection-status .badge.succeeded')")
        assert page.evaluate(order) == [a1.id, a2.id]  # #2's second seed brought it down to 0.88
        winner = page.locator(f'#ranking tr[data-architecture="{a1.id}"]')
        assert winner.get_attribute("class") == "winner" and "0.8900 ± 0.0141" in winner.text_content()
        assert page.get_attribute("#train-winner", "href") == f"/architectures/{a1.id}#train"
        assert page.text_content("#sel-runs").strip() == "4 / 4"
        assert page.text_content("#selection-error") == EVIL  # text, never markup
        assert page.evaluate("() => document.querySelectorAll('#selection-error *').length") == 0
        assert page.is_hidden("#selection-cancel") and page.is_hidden("#live-state")

        pages.open(f"/searches/{search.id}")
        search.noise_floor = 0.02
        search.save()
        live.publish(search.id, *live.status(m.Search.objects.select_related("owner").get(pk=search.pk)))
        page.wait_for_function("() => document.getElementById('stat-noise-floor').textContent === '0.0200'")
        band = "() => (document.getElementById('reward-chart').data || []).filter(t => t.legendgroup === 'noise')"
        page.wait_for_function(f"() => ({band})().length === 2")
        traces = page.evaluate(band)
        assert [t.get("showlegend", True) for t in traces] == [False, True]
        assert traces[1]["name"] == "noise floor ±σ" and traces[1]["fill"] == "tonexty"
        assert [round(y, 4) for y in traces[1]["y"]][:2] == [0.73, 0.95]  # running best + σ
        assert not pages.errors, pages.errors
