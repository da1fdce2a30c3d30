"""User text is escaped on every page: a search named like a script stays text."""

from __future__ import annotations

from tests.test_front_helpers import make_architecture, make_search

EVIL = "<script>alert(1)</script>"


def test_a_hostile_search_name_is_escaped_everywhere(client, personas):
    personas.alpha.name = f"team {EVIL}"
    personas.alpha.save()
    search = make_search(personas.alpha, personas.owner, name=EVIL)
    arch = make_architecture(search, 0, reward=0.5)
    search.error = EVIL
    search.save()
    client.force_login(personas.owner)
    for url in ("/", f"/searches/{search.id}", f"/architectures/{arch.id}", "/searches/new"):
        body = client.get(url).content.decode()
        assert EVIL not in body, url
    body = client.get(f"/searches/{search.id}").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_a_hostile_name_in_a_refused_submission_is_escaped(client, personas):
    from webapp.front.presets import preset_initial

    client.force_login(personas.owner)
    data = {**preset_initial("smoke"), "team": personas.alpha.pk, "name": EVIL, "dataset": EVIL}
    response = client.post("/searches/new", data)
    assert response.status_code == 400
    assert EVIL not in response.content.decode()


def test_long_names_wrap_instead_of_breaking_the_layout(client, personas):
    search = make_search(personas.alpha, personas.owner, name="x" * 200)
    client.force_login(personas.owner)
    assert 'class="name"' in client.get("/").content.decode()
    assert "<h1>" + "x" * 200 in client.get(f"/searches/{search.id}").content.decode()
    css = client.get("/static/front/style.css")
    assert css.status_code in (200, 404)  # served by runserver in DEBUG; the rule is in the file


def test_the_name_of_the_search_a_reward_was_reused_from_is_escaped(client, personas):
    """The team reward cache names another search of the team beside a reused child: on the
    page (HTML) and in chart.json (which the live table writes with textContent)."""
    from tests.test_front_helpers import make_child
    from webapp.searches import models as m

    origin = make_child(make_search(personas.alpha, personas.owner, name=EVIL), 0, m.RUN_SUCCEEDED, reward=0.5)
    search = make_search(personas.alpha, personas.owner, name="plain")
    reused = make_child(search, 0, m.RUN_REUSED, value=0.5, reward=0.5, reused_from=origin)
    client.force_login(personas.owner)
    for url in (f"/searches/{search.id}", f"/architectures/{reused.id}"):
        body = client.get(url).content.decode()
        assert EVIL not in body, url
        assert f'href="/searches/{origin.search_id}">&lt;script&gt;alert(1)&lt;/script&gt;</a>' in body, url
    response = client.get(f"/searches/{search.id}/chart.json")
    assert "<script" not in response.content.decode() and "\\u003cscript\\u003e" in response.content.decode()
    assert response.json()["children"][0]["reused_from"]["search_name"] == EVIL
