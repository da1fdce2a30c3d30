"""A search's page (/searches/<id>) and its cancel / pause / resume controls."""

from __future__ import annotations

import pytest

from tests.test_front_helpers import make_architecture, make_search
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
