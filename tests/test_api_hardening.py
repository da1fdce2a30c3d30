"""Issue #12: every refusal of the API is the documented JSON `{"field", "error"}` with a 4xx,
never Django's HTML page or a 500: non-finite numbers, oversize bodies, paths that match no
route (malformed or oversize ids), and query parameters given more than once."""

from __future__ import annotations

import json

import pytest

from webapp.searches import models as m

SPEC = {"dataset": "digits", "objective": "synthetic", "strategy": "random", "budget": {"children": 4, "parallel": 2}}
GENOTYPE = {
    "normal": {"blocks": [{"inputs": [0, 1], "ops": ["identity", "max_pool_3x3"], "combine": "add"}]},
    "reduce": {"blocks": [{"inputs": [0, 1], "ops": ["identity", "max_pool_3x3"], "combine": "add"}]},
}


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def search(personas):
    return m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="s", spec=SPEC, children_total=4, status=m.FINISHED
    )


def counts() -> tuple[int, ...]:
    return (
        m.Search.objects.count(),
        m.Architecture.objects.count(),
        m.Selection.objects.count(),
        m.TrainingJob.objects.count(),
    )


def refused(r, status: int, field: str) -> dict:
    """The documented refusal: `status`, JSON, exactly {"field", "error"}, naming `field`."""
    assert r.status_code == status, (r.status_code, r.content[:300])
    assert r["Content-Type"] == "application/json", r["Content-Type"]
    body = r.json()
    assert set(body) == {"field", "error"} and body["field"] == field, body
    return body


# -- 1. non-finite numbers ---------------------------------------------------------------------
# Python's json reads 1e400 as inf; PostgreSQL's JSON column stores neither it nor NaN (a 500).
NON_FINITE_SPECS = [
    ("spec.child.weight_decay", '{"dataset": "digits", "child": {"weight_decay": 1e400}}'),
    ("spec.child.weight_decay", '{"dataset": "digits", "child": {"weight_decay": -1e400}}'),
    ("spec.child.learning_rate", '{"dataset": "digits", "child": {"learning_rate": NaN}}'),
    ("spec.strategy.settings.lr", '{"strategy": {"name": "ppo", "settings": {"lr": Infinity}}}'),
    ("spec.objective.noise[1]", '{"objective": {"name": "synthetic", "noise": [0.1, -Infinity]}}'),
]
NON_FINITE_SEARCHES = [
    *[(field, '{"team": TEAM, "name": "n", "spec": ' + spec + "}") for field, spec in NON_FINITE_SPECS],
    ("name", '{"team": TEAM, "name": NaN, "spec": {"dataset": "digits"}}'),
    ("team", '{"team": 1e400, "name": "n", "spec": {"dataset": "digits"}}'),
]


@pytest.mark.parametrize(("field", "raw"), NON_FINITE_SEARCHES)
def test_a_non_finite_number_in_a_search_is_a_400_naming_its_path(client, personas, field, raw):
    client.force_login(personas.owner)
    r = client.post("/api/searches", raw.replace("TEAM", str(personas.alpha.id)), content_type="application/json")
    assert refused(r, 400, field)["error"] == "must be a finite number"
    assert counts() == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("field", "recipe"),
    [
        ("recipe.weight_decay", '{"weight_decay": 1e400}'),
        ("recipe.lr", '{"lr": NaN}'),
        ("recipe.x[0]", '{"x": [Infinity]}'),
    ],
)
def test_a_non_finite_number_in_a_training_recipe_is_a_400_naming_its_path(client, personas, field, recipe):
    client.force_login(personas.owner)
    body = json.dumps({"team": personas.alpha.id, "name": "j", "genotype": GENOTYPE, "dataset": "digits"})
    raw = body[:-1] + ', "recipe": ' + recipe + "}"
    r = client.post("/api/training-jobs", raw, content_type="application/json")
    assert refused(r, 400, field)["error"] == "must be a finite number"
    assert counts() == (0, 0, 0, 0)


def test_a_non_finite_number_in_a_selection_recipe_is_a_400_naming_its_path(client, personas, search):
    client.force_login(personas.owner)
    raw = '{"top_k": 1, "seeds": 1, "recipe": {"epochs": 2, "weight_decay": 1e999}}'
    r = client.post(f"/api/searches/{search.id}/selections", raw, content_type="application/json")
    refused(r, 400, "recipe.weight_decay")
    assert counts() == (1, 0, 0, 0)


def test_a_large_finite_number_passes_the_boundary_and_is_stored(client, personas):
    """The check refuses what cannot be stored, not what is merely large: 1e300 is a float."""
    client.force_login(personas.owner)
    spec = {**SPEC, "child": {"weight_decay": 1e300}}
    body = json.dumps({"team": personas.alpha.id, "name": "n", "spec": spec})
    r = client.post("/api/searches", body, content_type="application/json")
    assert r.status_code == 201, r.content
    assert float(m.Search.objects.get().spec["child"]["weight_decay"]) == 1e300  # jsonb drops the exponent


# -- 2. body size ------------------------------------------------------------------------------
def big_body(team_id: int, size: int) -> str:
    return json.dumps({"team": team_id, "name": "n", "spec": {**SPEC, "pad": "x" * size}})


@pytest.mark.parametrize("url", ["/api/searches", "/api/training-jobs", "SELECTIONS"])
def test_a_body_over_the_limit_is_a_json_413_naming_the_limit(client, personas, search, settings, url):
    client.force_login(personas.owner)
    url = url.replace("SELECTIONS", f"/api/searches/{search.id}/selections")
    r = client.post(url, big_body(personas.alpha.id, 10 * 1024 * 1024), content_type="application/json")
    body = refused(r, 413, "body")
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in body["error"]
    assert counts() == (1, 0, 0, 0)


def test_the_limit_is_the_setting(client, personas, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client.force_login(personas.owner)
    r = client.post("/api/searches", big_body(personas.alpha.id, 2000), content_type="application/json")
    assert "1000" in refused(r, 413, "body")["error"]
    small = client.post("/api/searches", big_body(personas.alpha.id, 10), content_type="application/json")
    assert small.status_code != 413, small.content  # under the limit the body is read as usual
    assert not m.Search.objects.filter(name="n", spec__pad="x" * 2000).exists()


# -- 3. paths that match no route --------------------------------------------------------------
NO_ROUTE = [
    "/api/searches/abc",
    "/api/searches/abc/",
    "/api/searches/1.5",
    "/api/searches/-1",
    "/api/searches/%20",
    "/api/searches/1/nope",
    "/api/architectures/x/genotype",
    "/api/training-jobs/0x10",
    "/api/selections/%F0%9F%98%80",
    "/api/nope",
    "/api/",
]


@pytest.mark.parametrize("url", NO_ROUTE)
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_a_path_that_matches_no_route_is_a_json_404(client, personas, url, method):
    client.force_login(personas.owner)
    r = client.get(url) if method == "get" else getattr(client, method)(url, "{}", content_type="application/json")
    refused(r, 404, "path")
    assert counts() == (0, 0, 0, 0)


def test_a_path_that_matches_no_route_is_a_json_404_for_anonymous_too(client, personas):
    refused(client.get("/api/searches/abc"), 404, "path")


@pytest.mark.parametrize("pk", ["0", "9223372036854775808", "99999999999999999999999", "1" + "0" * 40])
@pytest.mark.parametrize(
    "template",
    ["/api/searches/{}", "/api/searches/{}/architectures", "/api/architectures/{}/genotype", "/api/training-jobs/{}"],
)
def test_an_oversize_id_is_a_json_404(client, personas, template, pk):
    client.force_login(personas.owner)
    refused(client.get(template.format(pk)), 404, "id")


@pytest.mark.parametrize(
    "url", ["/api/searches/9223372036854775808/cancel", "/api/selections/99999999999999999999/cancel"]
)
def test_an_action_on_an_oversize_id_is_a_json_404(client, personas, url):
    client.force_login(personas.owner)
    refused(client.post(url, "{}", content_type="application/json"), 404, "id")
    assert counts() == (0, 0, 0, 0)


def test_an_unknown_method_on_a_route_is_still_a_json_405(client, personas, search):
    client.force_login(personas.owner)
    refused(client.delete(f"/api/searches/{search.id}"), 405, "method")
    refused(client.get(f"/api/searches/{search.id}/cancel"), 405, "method")
    assert m.Search.objects.get().status == m.FINISHED


def test_the_site_keeps_its_html_404(client, personas):
    r = client.get("/no-such-page")
    assert r.status_code == 404 and r["Content-Type"].startswith("text/html")


# -- 4. query parameters given more than once --------------------------------------------------
@pytest.mark.parametrize(
    ("url", "query"),
    [
        ("/api/searches", "team=TEAM&team=TEAM"),
        ("/api/searches", "status=running&status=failed"),
        ("/api/searches", "page=1&page=2"),
        ("/api/training-jobs", "team=TEAM&team=TEAM"),
        ("/api/training-jobs", "status=queued&status=queued"),
        ("/api/training-jobs", "page=1&page=1"),
        ("/api/teams", "page=1&page=2"),
        ("ARCHITECTURES", "ordering=reward&ordering=-reward"),
        ("ARCHITECTURES", "page=1&page=1"),
        ("SELECTIONS", "page=1&page=2"),
    ],
)
def test_a_query_parameter_given_twice_is_a_400_naming_it(client, personas, search, url, query):
    client.force_login(personas.owner)
    url = url.replace("ARCHITECTURES", f"/api/searches/{search.id}/architectures")
    url = url.replace("SELECTIONS", f"/api/searches/{search.id}/selections")
    name = query.split("=")[0]
    r = client.get(f"{url}?{query.replace('TEAM', str(personas.alpha.id))}")
    assert refused(r, 400, name)["error"] == "given more than once"


def test_a_query_parameter_given_once_still_filters(client, personas, search):
    client.force_login(personas.owner)
    r = client.get(f"/api/searches?team={personas.alpha.id}&status=finished&page=1")
    assert r.status_code == 200 and [s["id"] for s in r.json()["results"]] == [search.id]


# -- names: never cut silently, never invisible ----------------------------------------------------
BAD_NAMES = [
    ("n" * 201, "at most 200 characters"),  # a training job's was cut to 200 without a word
    ("\u200b\u200b", "visible character"),  # zero-width spaces only: a blank row in every list
    ("\u2060\ufeff", "visible character"),
    ("two\nlines", "control characters"),
    ("   ", "required"),
    (5, "a string"),
]


@pytest.mark.parametrize("kind", ["search", "training job"])
@pytest.mark.parametrize("name, said", BAD_NAMES, ids=[str(i) for i in range(len(BAD_NAMES))])
def test_a_bad_name_is_refused_not_cut(client, personas, kind, name, said):
    client.force_login(personas.owner)
    if kind == "search":
        body, url = {"team": personas.alpha.id, "name": name, "spec": SPEC}, "/api/searches"
    else:
        body = {"team": personas.alpha.id, "name": name, "genotype": GENOTYPE, "dataset": "digits"}
        url = "/api/training-jobs"
    r = client.post(url, json.dumps(body), content_type="application/json")
    assert r.status_code == 400 and r.json()["field"] == "name" and said in r.json()["error"], r.content
    assert counts() == (0, 0, 0, 0)


def test_a_name_of_200_characters_in_any_script_is_kept_whole(client, personas):
    client.force_login(personas.owner)
    name = "Поиск ячеек " + "数" * 188
    body = {"team": personas.alpha.id, "name": name, "genotype": GENOTYPE, "dataset": "digits"}
    r = client.post("/api/training-jobs", json.dumps(body), content_type="application/json")
    assert r.status_code == 201 and r.json()["name"] == name


# -- data set names: stored relative to the data root ----------------------------------------------
@pytest.fixture
def data_root(settings, tmp_path):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "pets" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "pets" / "train" / name / "a.png")
    settings.NAS_DATA_ROOT = tmp_path
    return tmp_path


@pytest.mark.parametrize("given", ["pets/train", "./pets/train", "pets/../pets/train/", "ABSOLUTE"])
def test_a_data_set_is_stored_relative_to_the_root(client, personas, data_root, given):
    """An absolute path inside the root used to be stored as given, showing every member
    the server's layout; other spellings of one folder were other names."""
    client.force_login(personas.owner)
    name = str(data_root / "pets" / "train") if given == "ABSOLUTE" else given
    spec = {**SPEC, "dataset": name}
    r = client.post(
        "/api/searches", json.dumps({"team": personas.alpha.id, "name": "s", "spec": spec}), "application/json"
    )
    assert r.status_code == 201, r.content
    assert m.Search.objects.get().spec["dataset"]["name"] == "pets/train"
    assert str(data_root) not in r.content.decode()


@pytest.mark.parametrize("given, said", [(".", "data root itself"), ("", "required"), ("pets/..", "data root itself")])
def test_the_data_root_itself_is_not_a_data_set(client, personas, data_root, given, said):
    client.force_login(personas.owner)
    spec = {**SPEC, "dataset": given}
    r = client.post(
        "/api/searches", json.dumps({"team": personas.alpha.id, "name": "s", "spec": spec}), "application/json"
    )
    assert r.status_code == 400 and r.json()["field"] == "spec.dataset.name" and said in r.json()["error"], r.content
    assert counts() == (0, 0, 0, 0)
