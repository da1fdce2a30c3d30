"""Login and logout pages."""

from __future__ import annotations


def test_the_login_page_renders_a_form(client, db):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert 'name="username"' in response.content.decode()


def test_a_user_logs_in_with_a_password_and_lands_on_the_searches(client, personas):
    response = client.post("/accounts/login/", {"username": "owner", "password": "pw-owner-123"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_wrong_password_is_refused(client, personas):
    response = client.post("/accounts/login/", {"username": "owner", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_logout_is_a_post_and_ends_the_session(client, personas):
    client.force_login(personas.owner)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert client.get("/").status_code == 302


def test_a_missing_page_is_our_404_page(client, settings, personas):
    settings.DEBUG = False
    client.force_login(personas.owner)
    response = client.get("/searches/999999")
    assert response.status_code == 404
    assert b"belongs to a team you are not a member of" in response.content
