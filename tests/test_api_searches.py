"""The searches and architectures API, per persona (owner, member, outsider, staff, anonymous)."""

from __future__ import annotations

import json

import pytest

from webapp.searches import models as m

SPEC = {"dataset": "digits", "objective": "synthetic", "strategy": "random", "budget": {"children": 4, "parallel": 2}}
GENOTYPE = {
    "normal": {"blocks": [{"inputs": [0, 1], "ops": ["identity", "max_pool_3x3"], "combine": "add"}]},
    "reduce": {"blocks": [{"inputs": [0, 1], "ops": ["identity", "max_pool_3x3"], "combine": "add"}]},
}


def post(client, url, data):
    return client.post(url, json.dumps(data), content_type="application/json")


def make_search(p, team=None, name="s", status=m.QUEUED, **kwargs) -> m.Search:
    return m.Search.objects.create(
        team=team or p.alpha, owner=p.owner, name=name, spec=SPEC, children_total=4, status=status, **kwargs
    )


def make_architectures(search, rewards) -> list[m.Architecture]:
    return [
        m.Architecture.objects.create(
            search=search, sample_index=i, genotype=GENOTYPE, canonical_hash=f"{i:064x}", reward=reward
        )
        for i, reward in enumerate(rewards)
    ]


def counts() -> tuple[int, int]:
    return m.Search.objects.count(), m.Architecture.objects.count()


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    """The personas have passwords; hashing them the production way costs seconds per test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alpha_search(personas):
    return make_search(personas, name="alpha search")


# -- submit --------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["owner", "member"])
def test_a_team_member_submits_a_search_and_gets_its_dict(client, personas, who):
    client.force_login(getattr(personas, who))
    r = post(client, "/api/searches", {"team": personas.alpha.id, "name": "first", "spec": SPEC})
    assert r.status_code == 201, r.content
    search = m.Search.objects.get()
    assert r.json() == json.loads(json.dumps(search.to_dict()))
    assert r.json()["status"] == "queued" and r.json()["children_total"] == 4
    assert search.owner == getattr(personas, who) and search.team == personas.alpha


def test_it_accepts_a_trailing_slash(client, personas):
    client.force_login(personas.owner)
    r = post(client, "/api/searches/", {"team": personas.alpha.id, "name": "slash", "spec": SPEC})
    assert r.status_code == 201


def test_an_outsider_cannot_submit_to_another_team(client, personas):
    client.force_login(personas.outsider)
    r = post(client, "/api/searches", {"team": personas.alpha.id, "name": "x", "spec": SPEC})
    assert r.status_code == 404 and r.json()["field"] == "team"
    assert counts() == (0, 0)


def test_anonymous_gets_401_on_submit(client, personas):
    r = post(client, "/api/searches", {"team": personas.alpha.id, "name": "x", "spec": SPEC})
    assert r.status_code == 401 and r.json()["field"] == "authorization"
    assert counts() == (0, 0)


BAD_SPECS = [
    ("spec.dataset.name", {**SPEC, "dataset": "../../etc"}),
    ("spec.dataset.name", {**SPEC, "dataset": "/etc"}),
    ("spec.dataset.name", {**SPEC, "dataset": {"name": ""}}),
    ("spec.dataset.subset_per_class", {**SPEC, "dataset": {"name": "digits", "subset_per_class": 0}}),
    ("spec.dataset.image_size", {**SPEC, "dataset": {"name": "digits", "image_size": "big"}}),
    ("spec.dataset.colour", {**SPEC, "dataset": {"name": "digits", "colour": True}}),
    ("spec.dataset.val_size", {**SPEC, "dataset": {"name": "digits", "val_size": 0}}),  # rewards need it
    ("spec.dataset.val_size", {**SPEC, "dataset": {"name": "digits", "val_size": -3}}),
    ("spec.dataset.test_size", {**SPEC, "dataset": {"name": "digits", "test_size": 1.5}}),
    ("spec.dataset.test_dataset", {**SPEC, "dataset": {"name": "digits", "test_dataset": "../../etc"}}),
    ("spec.dataset.test_dataset", {**SPEC, "dataset": {"name": "digits", "test_dataset": "cifar10"}}),
    ("spec.child.crop_padding", {**SPEC, "child": {"crop_padding": -1}}),
    ("spec.child.flip", {**SPEC, "child": {"flip": "sometimes"}}),
    ("spec.space.ops", {**SPEC, "space": {"ops": ["conv_99x99"]}}),
    ("spec.space.ops", {**SPEC, "space": {"ops": []}}),
    ("spec.space.ops", {**SPEC, "space": {"ops": "identity"}}),
    ("spec.space.num_blocks", {**SPEC, "space": {"num_blocks": 0}}),
    ("spec.space.num_blocks", {**SPEC, "space": {"num_blocks": "5"}}),
    ("spec.space.combines", {**SPEC, "space": {"combines": ["multiply"]}}),
    ("spec.child.epochs", {**SPEC, "child": {"epochs": 0}}),
    ("spec.child.epochs", {**SPEC, "child": {"epochs": 1.5}}),
    ("spec.child.lr", {**SPEC, "child": {"lr": -0.1}}),
    ("spec.child.macro", {**SPEC, "child": {"macro": "mnist"}}),
    ("spec.child.wings", {**SPEC, "child": {"wings": 2}}),
    ("spec.strategy.name", {**SPEC, "strategy": "genetic-magic"}),
    ("spec.strategy.name", {**SPEC, "strategy": {"name": 3}}),
    ("spec.strategy.settings.lr", {**SPEC, "strategy": {"name": "ppo", "settings": {"lr": -1}}}),
    ("spec.strategy.settings.lr", {**SPEC, "strategy": {"name": "ppo", "settings": {"lr": "fast"}}}),
    ("spec.strategy.settings.speed", {**SPEC, "strategy": {"name": "ppo", "settings": {"speed": 1}}}),
    ("spec.strategy.settings", {**SPEC, "strategy": {"name": "ppo", "settings": [1]}}),
    ("spec.budget.children", {**SPEC, "budget": {"children": 10**9}}),
    ("spec.budget.children", {**SPEC, "budget": {"children": 0}}),
    ("spec.budget.children", {**SPEC, "budget": {"children": "4"}}),
    ("spec.budget.parallel", {**SPEC, "budget": {"parallel": 10**6}}),
    ("spec.budget.hours", {**SPEC, "budget": {"hours": 3}}),
    ("spec.budget", {**SPEC, "budget": 4}),
    ("spec.objective.name", {**SPEC, "objective": "loss"}),
    ("spec.objective.noise", {**SPEC, "objective": {"name": "synthetic", "noise": 2}}),
    ("spec.seed", {**SPEC, "seed": -1}),
    ("spec.seed", {**SPEC, "seed": "zero"}),
    ("spec.reuse_duplicates", {**SPEC, "reuse_duplicates": "yes"}),
    ("spec.colour", {**SPEC, "colour": "blue"}),
    ("spec.spec", [SPEC]),
    ("spec.spec", "digits"),
]


@pytest.mark.parametrize(("field", "spec"), BAD_SPECS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_SPECS)])
def test_it_refuses_an_invalid_spec_naming_the_field_and_writes_nothing(client, personas, field, spec):
    client.force_login(personas.member)
    r = post(client, "/api/searches", {"team": personas.alpha.id, "name": "bad", "spec": spec})
    assert r.status_code == 400, r.content
    body = r.json()
    assert set(body) == {"field", "error"} and body["error"]
    assert body["field"] == field.replace("spec.spec", "spec")
    assert counts() == (0, 0)


BAD_BODIES = [
    ("team", {"name": "x", "spec": SPEC}, 400),
    ("team", {"team": "alpha", "name": "x", "spec": SPEC}, 400),
    ("team", {"team": True, "name": "x", "spec": SPEC}, 400),
    ("team", {"team": 10**30, "name": "x", "spec": SPEC}, 400),
    ("team", {"team": 987654321, "name": "x", "spec": SPEC}, 404),
    ("name", {"team": "ALPHA", "spec": SPEC}, 400),
    ("name", {"team": "ALPHA", "name": "  ", "spec": SPEC}, 400),
    ("name", {"team": "ALPHA", "name": "n" * 201, "spec": SPEC}, 400),
    ("name", {"team": "ALPHA", "name": 5, "spec": SPEC}, 400),
    ("spec", {"team": "ALPHA", "name": "x"}, 400),
    ("body", [1, 2], 400),
]


@pytest.mark.parametrize(("field", "body", "status"), BAD_BODIES)
def test_it_refuses_a_bad_body_naming_the_field(client, personas, field, body, status):
    if isinstance(body, dict) and body.get("team") == "ALPHA":
        body = {**body, "team": personas.alpha.id}
    client.force_login(personas.owner)
    r = post(client, "/api/searches", body)
    assert (r.status_code, r.json()["field"]) == (status, field)
    assert counts() == (0, 0)


def test_it_answers_malformed_json_with_400(client, personas):
    client.force_login(personas.owner)
    r = client.post("/api/searches", '{"team": 1, "name": ', content_type="application/json")
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert counts() == (0, 0)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("name", '{"team": TEAM, "name": "a\\u0000b", "spec": {"dataset": "digits"}}'),
        ("spec.dataset", '{"team": TEAM, "name": "n", "spec": {"dataset": "dig\\u0000its"}}'),
        ("spec.child.macro", '{"team": TEAM, "name": "n", "spec": {"child": {"macro": "\\ud800"}}}'),
        ("spec", '{"team": TEAM, "name": "n", "spec": {"\\u0000": 1}}'),
        ("body", '{"team": TEAM, "name": "n", "spec": ' + "[" * 100000 + "]" * 100000 + "}"),
    ],
)
def test_it_refuses_what_postgresql_cannot_store_or_parse_with_a_400(client, personas, field, raw):
    client.force_login(personas.owner)
    r = client.post("/api/searches", raw.replace("TEAM", str(personas.alpha.id)), content_type="application/json")
    assert (r.status_code, r.json()["field"]) == (400, field)
    assert counts() == (0, 0)


def test_it_refuses_a_form_encoded_body_with_415(client, personas):
    client.force_login(personas.owner)
    r = client.post("/api/searches", {"team": personas.alpha.id, "name": "x"})
    assert r.status_code == 415 and r.json()["field"] == "content-type"


def test_it_answers_429_over_the_team_quota(client, personas, settings):
    settings.NAS_MAX_ACTIVE_SEARCHES_PER_TEAM = 2
    make_search(personas, status=m.RUNNING), make_search(personas, status=m.PAUSED)
    client.force_login(personas.owner)
    r = post(client, "/api/searches", {"team": personas.alpha.id, "name": "third", "spec": SPEC})
    assert r.status_code == 429 and r.json()["field"] == "team"
    assert counts() == (2, 0)


# -- list and detail ------------------------------------------------------------------------------
def test_the_list_shows_only_the_users_teams_searches(client, personas, alpha_search):
    beta_search = make_search(personas, team=personas.beta, name="beta search")
    client.force_login(personas.member)
    assert [s["id"] for s in client.get("/api/searches").json()["results"]] == [alpha_search.id]
    client.force_login(personas.outsider)
    assert [s["id"] for s in client.get("/api/searches").json()["results"]] == [beta_search.id]
    client.force_login(personas.staff)
    assert {s["id"] for s in client.get("/api/searches").json()["results"]} == {alpha_search.id, beta_search.id}


def test_the_list_filters_by_team_and_status(client, personas, alpha_search):
    running = make_search(personas, status=m.RUNNING)
    make_search(personas, team=personas.beta, status=m.RUNNING)
    client.force_login(personas.staff)
    r = client.get(f"/api/searches?team={personas.alpha.id}&status=running")
    assert [s["id"] for s in r.json()["results"]] == [running.id]
    assert client.get("/api/searches?status=sleeping").json()["field"] == "status"
    for bad in ("abc", "²", "9" * 5000, "-1", "0"):
        r = client.get("/api/searches", {"team": bad})
        assert (r.status_code, r.json()["field"]) == (400, "team")


def test_the_list_is_paginated(client, personas):
    for i in range(52):
        make_search(personas, name=f"s{i}", status=m.FINISHED)
    client.force_login(personas.owner)
    first = client.get("/api/searches").json()
    assert first["count"] == 52 and len(first["results"]) == 50 and first["next"]
    assert len(client.get("/api/searches?page=2").json()["results"]) == 2
    r = client.get("/api/searches?page=9")
    assert r.status_code == 404 and r.json()["field"] == "page"


@pytest.mark.parametrize("who", ["owner", "member", "staff"])
def test_the_detail_is_the_searches_to_dict(client, personas, alpha_search, who):
    alpha_search.children_done, alpha_search.best_reward = 2, 0.75
    alpha_search.children_stopped, alpha_search.epochs_trained, alpha_search.epochs_saved = 1, 21, 19
    alpha_search.save()
    client.force_login(getattr(personas, who))
    r = client.get(f"/api/searches/{alpha_search.id}")
    assert r.status_code == 200
    assert r.json() == json.loads(json.dumps(alpha_search.to_dict()))
    assert (r.json()["children_done"], r.json()["children_total"], r.json()["best_reward"]) == (2, 4, 0.75)
    assert (r.json()["children_stopped"], r.json()["epochs_trained"], r.json()["epochs_saved"]) == (1, 21, 19)


def test_an_unknown_search_is_404(client, personas):
    client.force_login(personas.staff)
    r = client.get("/api/searches/999999999")
    assert r.status_code == 404 and r.json() == {"field": "id", "error": "not found"}


# -- transitions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "action", "end"),
    [("queued", "cancel", "cancelling"), ("running", "pause", "paused"), ("paused", "cancel", "cancelling")],
)
def test_a_member_changes_the_status(client, personas, start, action, end):
    search = make_search(personas, status=start)
    client.force_login(personas.member)
    r = client.post(f"/api/searches/{search.id}/{action}")
    assert r.status_code == 200 and r.json()["status"] == end
    search.refresh_from_db()
    assert search.status == end


def test_resume_of_a_started_search_runs_it_again(client, personas):
    from django.utils import timezone

    search = make_search(personas, status=m.PAUSED, started_at=timezone.now())
    client.force_login(personas.owner)
    assert client.post(f"/api/searches/{search.id}/resume").json()["status"] == "running"


@pytest.mark.parametrize(("start", "action"), [("finished", "cancel"), ("queued", "resume"), ("cancelled", "pause")])
def test_an_illegal_transition_is_409_and_changes_nothing(client, personas, start, action):
    search = make_search(personas, status=start)
    client.force_login(personas.owner)
    r = client.post(f"/api/searches/{search.id}/{action}")
    assert r.status_code == 409 and r.json()["field"] == "status"
    search.refresh_from_db()
    assert search.status == start


def test_a_get_on_an_action_is_405(client, personas, alpha_search):
    client.force_login(personas.owner)
    r = client.get(f"/api/searches/{alpha_search.id}/cancel")
    assert r.status_code == 405 and r.json()["field"] == "method"


# -- architectures --------------------------------------------------------------------------------
def test_architectures_sort_by_reward_with_nulls_last_across_pages(client, personas, alpha_search):
    rewards = [None if i % 10 == 0 else (i * 37 % 101) / 100 for i in range(60)]
    archs = make_architectures(alpha_search, rewards)
    client.force_login(personas.member)
    url = f"/api/searches/{alpha_search.id}/architectures"
    got = client.get(url + "?ordering=-reward").json()
    got2 = client.get(url + "?ordering=-reward&page=2").json()
    assert got["count"] == 60 and len(got["results"]) == 50 and len(got2["results"]) == 10
    seen = [a["reward"] for a in got["results"] + got2["results"]]
    known = sorted((r for r in rewards if r is not None), reverse=True)
    assert seen == known + [None] * 6
    ascending = [a["reward"] for a in client.get(url + "?ordering=reward").json()["results"]]
    assert ascending == sorted(r for r in rewards if r is not None)[:50]
    indexes = [a["sample_index"] for a in client.get(url + "?ordering=-sample_index").json()["results"]]
    assert indexes == list(range(59, 9, -1))
    first = {**archs[0].to_dict(), "run": None, "epochs_trained": 0}  # no run row here
    assert client.get(url).json()["results"][0] == json.loads(json.dumps(first))
    r = client.get(url + "?ordering=params")
    assert r.status_code == 400 and r.json()["field"] == "ordering"


def test_an_architecture_detail_and_its_genotype_download(client, personas, alpha_search):
    (arch,) = make_architectures(alpha_search, [0.5])
    client.force_login(personas.owner)
    expected = {**arch.to_dict(), "run": None, "epochs_trained": 0}
    assert client.get(f"/api/architectures/{arch.id}").json() == json.loads(json.dumps(expected))
    r = client.get(f"/api/architectures/{arch.id}/genotype")
    assert r.status_code == 200 and r["Content-Type"] == "application/json"
    assert r["Content-Disposition"] == f'attachment; filename="genotype-{arch.canonical_hash[:12]}.json"'
    assert json.loads(r.content) == GENOTYPE


# -- early stopping and the team reward cache (issue #13) ---------------------------------------------
def curve(done: int, total: int = 9) -> list[dict]:
    return [{"epoch": e, "epochs": total, "val_acc": 0.3 + 0.05 * e} for e in range(1, done + 1)]


def test_architectures_show_the_run_status_the_epochs_trained_and_reused_from(client, personas, alpha_search):
    origin_search = make_search(personas, name="origin", status=m.FINISHED)
    (origin,) = make_architectures(origin_search, [0.8])
    done, stopped, waiting, reused = make_architectures(alpha_search, [0.9, None, None, 0.8])
    m.Architecture.objects.filter(pk=reused.pk).update(reused_from=origin)
    for arch, status, epochs, reward in [
        (done, m.RUN_SUCCEEDED, 9, 0.9),
        (stopped, m.RUN_STOPPED, 1, 0.35),  # its value at the rung it reached
        (waiting, m.RUN_WAITING, 3, None),
        (reused, m.RUN_REUSED, 0, 0.8),
    ]:
        m.ChildRun.objects.create(architecture=arch, status=status, attempt=1, reward=reward, epochs=curve(epochs))
    client.force_login(personas.member)
    rows = client.get(f"/api/searches/{alpha_search.id}/architectures").json()["results"]
    got = [(a["sample_index"], a["run"]["status"], a["epochs_trained"], a["reward"], a["run"]["reward"]) for a in rows]
    assert got == [(0, "succeeded", 9, 0.9, 0.9), (1, "stopped", 1, None, 0.35), (2, "waiting", 3, None, None),
                   (3, "reused", 0, 0.8, 0.8)]  # fmt: skip
    assert [a["reused_from"] for a in rows] == [None, None, None, origin.id]
    run = m.ChildRun.objects.get(architecture=stopped)
    assert rows[1]["run"] == json.loads(json.dumps(run.to_dict())) and rows[1]["run"]["epochs"][-1]["epoch"] == 1
    detail = client.get(f"/api/architectures/{stopped.id}").json()
    assert detail == rows[1]
    assert client.get(f"/api/architectures/{reused.id}").json()["reused_from"] == origin.id


def make_decisions(search, n: int) -> list[m.RungDecision]:
    return [
        m.RungDecision.objects.create(
            search=search, sample_index=i // 2, epoch=1 + 2 * (i % 2), statistic=0.4, value=0.1 * (i % 7),
            threshold=None if i < 2 else 0.3, peers=i // 2, stop=i % 3 == 0,
        )
        for i in range(n)
    ]  # fmt: skip


def test_rungs_lists_the_early_stopping_decisions_by_epoch_then_child(client, personas, alpha_search):
    made = make_decisions(alpha_search, 6)
    make_decisions(make_search(personas, name="other"), 2)  # another search's: not listed
    client.force_login(personas.member)
    r = client.get(f"/api/searches/{alpha_search.id}/rungs")
    assert r.status_code == 200 and r.json()["count"] == 6
    results = r.json()["results"]
    assert [(d["epoch"], d["sample_index"]) for d in results] == [(1, 0), (1, 1), (1, 2), (3, 0), (3, 1), (3, 2)]
    assert results[0] == {"sample_index": 0, "epoch": 1, "stop": True, "value": 0.0, "threshold": None, "peers": 0}
    by_key = {(d.epoch, d.sample_index): d for d in made}
    assert results == [json.loads(json.dumps(by_key[(d["epoch"], d["sample_index"])].to_dict())) for d in results]


def test_rungs_are_paginated(client, personas, alpha_search):
    make_decisions(alpha_search, 52)
    client.force_login(personas.owner)
    first = client.get(f"/api/searches/{alpha_search.id}/rungs").json()
    assert first["count"] == 52 and len(first["results"]) == 50 and first["next"]
    assert len(client.get(f"/api/searches/{alpha_search.id}/rungs?page=2").json()["results"]) == 2
    r = client.get(f"/api/searches/{alpha_search.id}/rungs?page=3")
    assert r.status_code == 404 and r.json()["field"] == "page"
    assert client.get("/api/searches/999999999/rungs").json() == {"field": "id", "error": "not found"}


# -- the outsider and the anonymous ------------------------------------------------------------------
def alpha_urls(search, arch) -> list[tuple[str, str]]:
    return [
        ("get", f"/api/searches/{search.id}"),
        ("get", f"/api/searches/{search.id}/architectures"),
        ("get", f"/api/searches/{search.id}/rungs"),
        ("post", f"/api/searches/{search.id}/cancel"),
        ("post", f"/api/searches/{search.id}/pause"),
        ("post", f"/api/searches/{search.id}/resume"),
        ("get", f"/api/architectures/{arch.id}"),
        ("get", f"/api/architectures/{arch.id}/genotype"),
    ]


def test_an_outsider_gets_404_on_every_alpha_object_and_changes_nothing(client, personas, alpha_search):
    (arch,) = make_architectures(alpha_search, [0.9])
    make_decisions(alpha_search, 2)
    client.force_login(personas.outsider)
    for method, url in alpha_urls(alpha_search, arch):
        r = getattr(client, method)(url)
        assert r.status_code == 404, url
        assert "alpha" not in r.content.decode() and "identity" not in r.content.decode()
    alpha_search.refresh_from_db()
    assert alpha_search.status == m.QUEUED
    assert client.get("/api/searches").json()["count"] == 0
    assert client.get(f"/api/searches?team={personas.alpha.id}").json()["results"] == []


def test_anonymous_gets_401_everywhere(client, personas, alpha_search):
    (arch,) = make_architectures(alpha_search, [0.9])
    for method, url in [*alpha_urls(alpha_search, arch), ("get", "/api/searches"), ("get", "/api/teams")]:
        r = getattr(client, method)(url)
        assert r.status_code == 401, url
        assert r.json()["field"] == "authorization"


def test_teams_lists_the_users_teams(client, personas):
    client.force_login(personas.member)
    assert client.get("/api/teams").json()["results"] == [{"id": personas.alpha.id, "name": "alpha"}]
    client.force_login(personas.outsider)
    assert client.get("/api/teams").json()["results"] == [{"id": personas.beta.id, "name": "beta"}]
    client.force_login(personas.staff)
    assert [t["name"] for t in client.get("/api/teams").json()["results"]] == ["alpha", "beta"]
