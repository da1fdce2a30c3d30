"""The searches list (/)."""

from __future__ import annotations

from tests.test_front_helpers import make_architecture, make_search


def test_it_redirects_an_anonymous_visitor_to_login(client, personas):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/")


def test_it_lists_the_searches_of_the_users_teams(client, personas):
    search = make_search(personas.alpha, personas.owner, name="alpha digits")
    make_architecture(search, 0, reward=0.8123)
    make_search(personas.beta, personas.outsider, name="beta secret")
    client.force_login(personas.member)
    response = client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "alpha digits" in body and "beta secret" not in body
    assert "0.8123" in body and "1 / 8" in body
    assert 'href="/searches/new"' in body


def test_an_outsider_sees_none_of_another_teams_searches(client, personas):
    make_search(personas.alpha, personas.owner, name="alpha digits")
    client.force_login(personas.outsider)
    body = client.get("/").content.decode()
    assert "alpha digits" not in body
    assert "No searches yet" in body


def test_staff_see_every_team(client, personas):
    make_search(personas.alpha, personas.owner, name="alpha digits")
    make_search(personas.beta, personas.outsider, name="beta run")
    client.force_login(personas.staff)
    body = client.get("/").content.decode()
    assert "alpha digits" in body and "beta run" in body


def test_the_header_shows_the_user_their_teams_and_an_admin_link_only_for_staff(client, personas):
    client.force_login(personas.member)
    body = client.get("/").content.decode()
    assert "member" in body and "alpha" in body
    assert 'href="/admin/"' not in body
    client.force_login(personas.staff)
    assert 'href="/admin/"' in client.get("/").content.decode()
