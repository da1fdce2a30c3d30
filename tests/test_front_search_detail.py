"""A search's page (/searches/<id>) and its cancel / pause / resume controls."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.test_front_helpers import ES_SPEC, make_architecture, make_child, make_search
from webapp.searches import models as m


@pytest.fixture
def search(personas):
    search = make_search(personas.alpha, personas.owner, name="alpha digits")
    for i, reward in enumerate([0.71, 0.9321, None]):
        make_architecture(search, i, reward=reward, run_status=m.RUN_SUCCEEDED if reward else m.RUN_RUNNING)
    return search


def test_it_redirects_an_anonymous_visitor_to_login(client, search):
    response = client.get(f"/searches/{search.id}")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("who", ["owner", "member", "staff"])
def test_team_members_and_staff_see_the_search(client, personas, search, who):
    client.force_login(getattr(personas, who))
    response = client.get(f"/searches/{search.id}")
    assert response.status_code == 200
    body = response.content.decode()
    assert "alpha digits" in body and "0.9321" in body and "2 / 8" in body
    assert "<svg" in body  # the best architecture's cells
    assert "&quot;dataset&quot;" in body  # the spec, as pretty JSON
    assert body.count('href="/architectures/') >= 3


def test_an_outsider_gets_404(client, personas, search):
    client.force_login(personas.outsider)
    assert client.get(f"/searches/{search.id}").status_code == 404
    assert client.post(f"/searches/{search.id}/cancel").status_code == 404
    search.refresh_from_db()
    assert search.status == m.RUNNING


def test_a_missing_search_is_404(client, personas):
    client.force_login(personas.owner)
    assert client.get("/searches/999999").status_code == 404


def test_the_architectures_table_is_paginated_newest_first(client, personas):
    search = make_search(personas.alpha, personas.owner)
    for i in range(30):
        make_architecture(search, i)
    client.force_login(personas.owner)
    first = client.get(f"/searches/{search.id}").context["rows"]
    second = client.get(f"/searches/{search.id}", {"page": 2}).context["rows"]
    assert [a.sample_index for a, _ in first][:2] == [29, 28] and len(first) == 25
    assert [a.sample_index for a, _ in second] == [4, 3, 2, 1, 0]


@pytest.mark.parametrize(
    "action, start, end",
    [("pause", m.RUNNING, m.PAUSED), ("resume", m.PAUSED, m.RUNNING), ("cancel", m.RUNNING, m.CANCELLING)],
)
def test_a_member_can_pause_resume_and_cancel(client, personas, action, start, end):
    search = make_search(personas.alpha, personas.owner, status=start)
    search.started_at = search.created_at
    search.save()
    client.force_login(personas.member)
    response = client.post(f"/searches/{search.id}/{action}", follow=True)
    search.refresh_from_db()
    assert search.status == end
    assert f"Search is now {end}" in response.content.decode()


def test_an_impossible_transition_is_a_message_not_a_change(client, personas):
    search = make_search(personas.alpha, personas.owner, status=m.FINISHED)
    client.force_login(personas.owner)
    response = client.post(f"/searches/{search.id}/pause", follow=True)
    assert "Could not pause: cannot pause a finished search." in response.content.decode()
    search.refresh_from_db()
    assert search.status == m.FINISHED


def test_controls_need_a_post_and_a_known_action(client, personas, search):
    client.force_login(personas.owner)
    assert client.get(f"/searches/{search.id}/cancel").status_code == 405
    assert client.post(f"/searches/{search.id}/explode").status_code == 404


def test_controls_need_the_csrf_token(personas, search):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.owner)
    assert client.post(f"/searches/{search.id}/cancel").status_code == 403
    search.refresh_from_db()
    assert search.status == m.RUNNING


# -- early stopping and the team reward cache (issue #13) ------------------------------------------
@pytest.fixture
def es_search(personas):
    """ASHA over 9-epoch children (rungs after epochs 1 and 3): one child trained in full, one
    stopped after epoch 1, one waiting at epoch 3, one reused from another search of the team
    and one from this search; decisions after epoch 1 (3 children, 1 stopped) and 3 (1, 0)."""
    p = personas
    origin_search = make_search(p.alpha, p.owner, name="origin search", status=m.FINISHED)
    origin = make_child(origin_search, 0, m.RUN_SUCCEEDED, done=1, value=0.66, reward=0.66)
    search = make_search(p.alpha, p.owner, name="es search")
    search.spec = ES_SPEC
    search.children_stopped, search.epochs_trained, search.epochs_saved = 1, 13, 8
    search.save()
    done = make_child(search, 0, m.RUN_SUCCEEDED, done=9, value=0.91, reward=0.91)
    make_child(search, 1, m.RUN_STOPPED, done=1, value=0.35)
    make_child(search, 2, m.RUN_WAITING, done=3)
    make_child(search, 3, m.RUN_REUSED, value=0.66, reward=0.66, reused_from=origin)
    make_child(search, 4, m.RUN_REUSED, value=0.91, reward=0.91, reused_from=done)
    for index, epoch, stop in [(0, 1, False), (1, 1, True), (2, 1, False), (0, 3, False)]:
        m.RungDecision.objects.create(
            search=search,
            sample_index=index,
            epoch=epoch,
            statistic=0.5,
            value=0.5,
            threshold=0.4,
            peers=index,
            stop=stop,
        )
    search.origin, search.origin_search = origin, origin_search
    return search


def row_of(body: str, arch_id: int) -> str:
    return re.search(rf'<tr data-architecture="{arch_id}">(.*?)</tr>', body, re.S).group(1)


def arch_of(search, index) -> m.Architecture:
    return search.architectures.get(sample_index=index)


def test_the_page_counts_stopped_children_and_epochs_trained_and_saved(client, personas, es_search):
    client.force_login(personas.member)
    body = client.get(f"/searches/{es_search.id}").content.decode()
    assert re.search(r'Stopped early</div><div class="value" id="stat-stopped">1<', body)
    assert re.search(r'Epochs trained · saved</div><div class="value" id="stat-epochs">13 · 8<', body)


def test_the_page_states_the_rule_and_its_settings(client, personas, es_search):
    client.force_login(personas.member)
    body = client.get(f"/searches/{es_search.id}").content.decode()
    rule = re.search(r'<p id="early-stop-rule">(.*?)</p>', body, re.S).group(1)
    assert rule.startswith("ASHA: after epochs 1, 3 of 9, a child goes on only if")
    assert "top 1/3" in rule and "(min epochs 1, reduction factor 3)" in rule
    assert 'its value at the rung, against a baseline kept per rung (<span class="mono">rung</span>)' in body


def test_the_rung_table_counts_each_decision_epoch_in_one_query(client, personas, es_search):
    client.force_login(personas.member)
    with CaptureQueriesContext(connection) as queries:
        body = client.get(f"/searches/{es_search.id}").content.decode()
    rungs = re.search(r'<table class="compact" id="rungs".*?<tbody>(.*?)</tbody>', body, re.S).group(1)
    cells = re.findall(r'<tr data-epoch="(\d+)"><td class="num">\d+</td><td class="num">(\d+)</td>'
                       r'<td class="num">(\d+)</td><td class="num">(\d+)</td></tr>', rungs)  # fmt: skip
    assert cells == [("1", "3", "2", "1"), ("3", "1", "1", "0")]  # epoch, reached, continued, stopped
    assert sum("searches_rungdecision" in q["sql"] for q in queries.captured_queries) == 1


def test_a_stopped_child_shows_its_rung_value_never_as_its_reward(client, personas, es_search):
    client.force_login(personas.member)
    body = client.get(f"/searches/{es_search.id}").content.decode()
    row = row_of(body, arch_of(es_search, 1).id)
    assert '<span class="badge stopped">stopped</span>' in row
    assert '<div class="child-note muted">stopped after epoch 1 of 9</div>' in row
    reward = re.search(r'<td class="num reward">(.*?)</td>', row, re.S).group(1)
    assert "rung value 0.3500" in reward and 'class="rung-value muted"' in reward
    assert "after epoch 1, where early stopping stopped it: not a final reward" in reward
    assert "1/9" in row  # its epoch progress
    completed = row_of(body, arch_of(es_search, 0).id)
    assert re.search(r'<td class="num reward">\s*0\.9100\s*</td>', completed) and "child-note" not in completed


def test_a_stopped_child_whose_architecture_holds_a_reward_still_shows_no_reward(client, personas, es_search):
    """Should the advance ever copy the rung value onto the architecture, it is still no reward."""
    m.Architecture.objects.filter(pk=arch_of(es_search, 1).pk).update(reward=0.35)
    client.force_login(personas.member)
    row = row_of(client.get(f"/searches/{es_search.id}").content.decode(), arch_of(es_search, 1).id)
    assert re.search(
        r'<td class="num reward">\s*<span class="rung-value muted"[^>]*>rung value 0\.3500</span>\s*</td>', row
    )


def test_a_waiting_child_says_which_decision_it_waits_for(client, personas, es_search):
    client.force_login(personas.member)
    row = row_of(client.get(f"/searches/{es_search.id}").content.decode(), arch_of(es_search, 2).id)
    assert '<span class="badge waiting">waiting</span>' in row
    assert '<div class="child-note muted">waiting for its decision at epoch 3</div>' in row and "3/9" in row


def test_a_reused_child_links_to_where_it_was_measured(client, personas, es_search):
    client.force_login(personas.member)
    body = client.get(f"/searches/{es_search.id}").content.decode()
    other = row_of(body, arch_of(es_search, 3).id)
    assert (
        f'reused from <a href="/architectures/{es_search.origin.id}">#0</a> of '
        f'<a class="wrap" href="/searches/{es_search.origin_search.id}">origin search</a>'
    ) in other
    same = row_of(body, arch_of(es_search, 4).id)
    assert f'reused from <a href="/architectures/{arch_of(es_search, 0).id}">#0</a></div>' in same
    assert "origin search" not in same


def test_a_reused_from_in_another_team_is_not_named(client, personas, es_search):
    beta_search = make_search(personas.beta, personas.outsider, name="beta secret")
    beta_arch = make_architecture(beta_search, 0, reward=0.5)
    m.Architecture.objects.filter(pk=arch_of(es_search, 3).pk).update(reused_from=beta_arch)
    client.force_login(personas.member)
    body = client.get(f"/searches/{es_search.id}").content.decode()
    assert "beta secret" not in body and f"/architectures/{beta_arch.id}" not in body
    assert "beta secret" not in client.get(f"/searches/{es_search.id}/chart.json").content.decode()


def test_a_search_without_early_stopping_shows_no_rule_and_no_stopped_count(client, personas, search):
    client.force_login(personas.member)
    body = client.get(f"/searches/{search.id}").content.decode()
    assert 'id="early-stopping"' not in body and 'id="stat-stopped"' not in body
    assert 'id="stat-epochs">0 · 0<' in body
    config = client.get(f"/searches/{search.id}").context["live"]
    assert config["early_stop"] is False


def test_the_live_config_says_early_stopping_is_on(client, personas, es_search):
    client.force_login(personas.member)
    config = client.get(f"/searches/{es_search.id}").context["live"]
    assert config["early_stop"] is True and config["search_prefix"] == "/searches/" and config["epochs"] == 9
