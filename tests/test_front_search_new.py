"""The submission form (/searches/new)."""

from __future__ import annotations

import json
import re

import pytest

from webapp.front.presets import PRESETS, preset_initial
from webapp.searches.models import Search

URL = "/searches/new"


def form_data(team, **overrides) -> dict:
    data = {**preset_initial("smoke"), "team": team.pk, "name": "my search", "spec_json": ""}
    data.update(overrides)
    return data


def test_it_redirects_an_anonymous_visitor_to_login(client, personas):
    assert client.get(URL).status_code == 302
    assert client.post(URL, {}).status_code == 302
    assert not Search.objects.exists()


def test_the_team_choice_offers_only_the_users_teams(client, personas):
    client.force_login(personas.member)
    form = client.get(URL).context["form"]
    assert list(form.fields["team"].queryset) == [personas.alpha]


def test_it_starts_from_the_smoke_preset(client, personas):
    client.force_login(personas.owner)
    form = client.get(URL).context["form"]
    assert form.initial["dataset"] == "digits" and form.initial["preset"] == "smoke"


@pytest.mark.parametrize("key", list(PRESETS))
def test_a_preset_fills_the_form(client, personas, key):
    client.force_login(personas.owner)
    response = client.get(URL, {"preset": key})
    assert response.status_code == 200
    assert response.context["form"].initial == {**preset_initial(key), "team": personas.alpha.pk}


def test_the_paper_preset_is_the_papers_search_capped_by_the_limits(client, personas, settings):
    settings.NAS_MAX_PARALLEL_PER_SEARCH = 64
    client.force_login(personas.owner)
    initial = client.get(URL, {"preset": "paper"}).context["form"].initial
    assert (initial["dataset"], initial["child_repeats"], initial["child_epochs"]) == ("cifar10", 2, 20)
    assert (initial["strategy"], initial["children"], initial["parallel"]) == ("ppo", 20000, 64)


def test_applying_a_preset_keeps_the_team_and_name_and_writes_nothing(client, personas):
    client.force_login(personas.owner)
    data = form_data(personas.alpha, name="kept name", preset="synthetic", apply_preset="1")
    response = client.post(URL, data)
    assert response.status_code == 200
    initial = response.context["form"].initial
    assert initial["objective"] == "synthetic" and initial["name"] == "kept name"
    assert not Search.objects.exists()


def test_a_member_submits_a_search_and_lands_on_its_page(client, personas):
    client.force_login(personas.member)
    response = client.post(URL, form_data(personas.alpha, child_epochs=2, children=5))
    search = Search.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/searches/{search.id}"
    assert (search.team, search.owner, search.name) == (personas.alpha, personas.member, "my search")
    assert search.spec["child"]["epochs"] == 2 and search.spec["budget"]["children"] == 5
    assert search.spec["strategy"]["settings"]["batch_size"] == 4  # from the preset, not a field


def test_a_search_without_early_stopping_reuses_team_rewards_by_default(client, personas):
    client.force_login(personas.member)
    form = client.get(URL).context["form"]
    assert (form.initial["early_stop_rule"], form.initial["reuse_team_rewards"]) == ("none", True)
    client.post(URL, form_data(personas.alpha))
    search = Search.objects.get()
    assert search.spec["early_stop"] == {
        "rule": "none",
        "min_epochs": 1,
        "reduction_factor": 3,
        "min_peers": 3,
        "stopped_reward": "rung",
    }
    assert search.spec["reuse_team_rewards"] is True


def test_the_form_shows_the_early_stopping_fieldset_and_the_reuse_checkbox_checked(client, personas):
    client.force_login(personas.member)
    body = client.get(URL).content.decode()
    assert "<legend>Early stopping</legend>" in body
    assert '<option value="asha">ASHA (asynchronous successive halving)</option>' in body
    assert '<option value="median">median stopping rule</option>' in body
    assert re.search(r'<input type="checkbox" name="reuse_team_rewards"[^>]*checked', body)
    assert "Reuse rewards the team already measured" in body
    assert '<option value="drop">drop: nothing (learn from completed children only)</option>' in body


def test_early_stopping_settings_flow_into_the_spec(client, personas):
    client.force_login(personas.member)
    data = form_data(
        personas.alpha,
        early_stop_rule="asha",
        early_stop_min_epochs=1,
        early_stop_reduction_factor=2,
        early_stop_min_peers="",  # blank: the engine's default
        early_stop_stopped_reward="normalised",
    )
    del data["reuse_team_rewards"]  # an unticked checkbox is not posted
    response = client.post(URL, data)
    assert response.status_code == 302, response.context["form"].errors
    search = Search.objects.get()
    assert search.spec["early_stop"] == {
        "rule": "asha",
        "min_epochs": 1,
        "reduction_factor": 2,
        "min_peers": 3,
        "stopped_reward": "normalised",
    }
    assert search.spec["reuse_team_rewards"] is False


def test_without_a_rule_the_early_stopping_numbers_are_ignored(client, personas):
    client.force_login(personas.member)
    response = client.post(URL, form_data(personas.alpha, early_stop_rule="none", early_stop_reduction_factor=1))
    assert response.status_code == 302
    assert Search.objects.get().spec["early_stop"]["reduction_factor"] == 3


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"early_stop_reduction_factor": 1}, "early_stop_reduction_factor", "must be an integer >= 2, got 1"),
        ({"early_stop_min_peers": 0}, "early_stop_min_peers", "must be an integer >= 1, got 0"),
        ({"early_stop_min_epochs": 0}, "early_stop_min_epochs", "must be an integer >= 1, got 0"),
        # the smoke preset's children train 3 epochs: a rule from epoch 3 on could stop none
        ({"early_stop_min_epochs": 3}, "early_stop_min_epochs", "must be below the children's 3 epochs, got 3"),
        ({"early_stop_rule": "hyperband"}, "early_stop_rule", "Select a valid choice."),
    ],
)
def test_a_bad_early_stopping_value_is_reported_on_its_field(client, personas, overrides, field, reason):
    client.force_login(personas.owner)
    response = client.post(URL, form_data(personas.alpha, **{"early_stop_rule": "median", **overrides}))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field] and errors[field][0].startswith(reason), errors
    assert f'id="{field}-errors"' in response.content.decode()
    assert not Search.objects.exists()


def test_the_spec_json_takes_early_stopping_and_the_team_cache(client, personas):
    client.force_login(personas.owner)
    spec = {"objective": "synthetic", "child": {"epochs": 9}, "early_stop": "asha", "reuse_team_rewards": False}
    assert client.post(URL, form_data(personas.alpha, spec_json=json.dumps(spec))).status_code == 302
    search = Search.objects.get()
    assert search.spec["early_stop"]["rule"] == "asha" and search.spec["reuse_team_rewards"] is False
    spec["early_stop"] = {"rule": "asha", "reduction_factor": 1}
    response = client.post(URL, form_data(personas.alpha, name="bad", spec_json=json.dumps(spec)))
    assert response.context["form"].errors["spec_json"] == [
        "spec.early_stop.reduction_factor: must be an integer >= 2, got 1"
    ]


def test_the_spec_json_overrides_the_fields(client, personas):
    client.force_login(personas.owner)
    spec = {"dataset": "digits", "objective": "synthetic", "strategy": "random", "budget": {"children": 3}}
    client.post(URL, form_data(personas.alpha, spec_json=json.dumps(spec)))
    search = Search.objects.get()
    assert search.spec["strategy"]["name"] == "random" and search.children_total == 3


def test_an_outsider_cannot_submit_to_another_team(client, personas):
    client.force_login(personas.outsider)
    response = client.post(URL, form_data(personas.alpha))
    assert response.status_code == 400
    assert "team" in response.context["form"].errors
    assert not Search.objects.exists()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"child_epochs": 0}, "child_epochs"),
        ({"child_repeats": -1}, "child_repeats"),
        ({"child_filters": 0}, "child_filters"),
        ({"seed": -5}, "seed"),
        ({"strategy": "nope"}, "strategy"),
        ({"name": ""}, "name"),
        ({"dataset": "../../etc"}, "dataset"),
        ({"dataset": "no-such-folder"}, "dataset"),
        ({"children": 10**9}, "children"),
        ({"parallel": 10**6}, "parallel"),
        ({"spec_json": "{not json"}, "spec_json"),
        ({"spec_json": json.dumps({"child": {"epochs": 0}})}, "spec_json"),
        ({"spec_json": json.dumps([1])}, "spec_json"),
        ({"spec_json": json.dumps({"budget": {"children": -1}})}, "spec_json"),
        # issue #12: what PostgreSQL's JSON column cannot store, and nesting json.loads cannot read
        ({"spec_json": '{"child": {"weight_decay": 1e400}}'}, "spec_json"),
        ({"spec_json": '{"strategy": {"name": "ppo", "settings": {"lr": NaN}}}'}, "spec_json"),
        ({"spec_json": '{"objective": {"name": "synthetic", "noise": [-Infinity]}}'}, "spec_json"),
        ({"spec_json": "[" * 50000 + "]" * 50000}, "spec_json"),
        ({"spec_json": '{"child": ' * 50000 + "1" + "}" * 50000}, "spec_json"),
    ],
)
def test_a_bad_value_is_reported_on_its_field_and_nothing_is_written(client, personas, overrides, field):
    client.force_login(personas.owner)
    response = client.post(URL, form_data(personas.alpha, **overrides))
    assert response.status_code == 400
    assert field in response.context["form"].errors, response.context["form"].errors
    assert f'id="{field}-errors"' in response.content.decode()
    assert not Search.objects.exists()


def test_an_error_in_the_spec_json_names_the_path_of_the_bad_field(client, personas):
    client.force_login(personas.owner)
    response = client.post(URL, form_data(personas.alpha, spec_json=json.dumps({"child": {"epochs": "many"}})))
    errors = response.context["form"].errors["spec_json"]
    assert "spec.child.epochs" in errors[0]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"child": {"weight_decay": 1e400}}', "spec.child.weight_decay"),
        ('{"seed": 1, "child": {"x": [1, NaN]}}', "spec.child.x[1]"),
        ("Infinity", "spec"),
    ],
)
def test_a_non_finite_number_in_the_spec_json_is_refused_by_its_path(client, personas, text, path):
    client.force_login(personas.owner)
    response = client.post(URL, form_data(personas.alpha, spec_json=text))
    assert response.status_code == 400
    assert response.context["form"].errors["spec_json"] == [f"{path}: must be a finite number"]
    assert not Search.objects.exists()


def test_the_spec_json_nested_too_deeply_is_a_form_error_not_a_500(client, personas):
    client.force_login(personas.owner)
    response = client.post(URL, form_data(personas.alpha, spec_json="[" * 50000 + "]" * 50000))
    assert response.status_code == 400
    assert "nested too deeply" in response.context["form"].errors["spec_json"][0]
    assert not Search.objects.exists()


def test_the_quota_is_reported_on_the_team_field(client, personas, settings):
    settings.NAS_MAX_ACTIVE_SEARCHES_PER_TEAM = 1
    client.force_login(personas.owner)
    assert client.post(URL, form_data(personas.alpha)).status_code == 302
    response = client.post(URL, form_data(personas.alpha, name="second"))
    assert response.status_code == 400
    assert "quota" in response.context["form"].errors["team"][0]
    assert Search.objects.count() == 1


def test_a_spec_json_that_is_not_an_object_names_the_spec_once(client, personas):
    client.force_login(personas.owner)
    response = client.post(URL, form_data(personas.alpha, spec_json="[1]"))
    assert response.status_code == 400
    errors = response.context["form"].errors["spec_json"]
    assert any(e.startswith("spec: ") for e in errors) and not any("spec.spec" in e for e in errors), errors
