"""An architecture's page, its genotype download and the "train at scale" form."""

from __future__ import annotations

import json

import pytest

from nas_engine.cells import NASNET_A
from tests.test_front_helpers import make_architecture, make_search
from webapp.searches.models import TrainingJob


@pytest.fixture
def arch(personas):
    return make_architecture(make_search(personas.alpha, personas.owner, name="alpha digits"), 0, reward=0.8765)


def test_it_redirects_an_anonymous_visitor_to_login(client, arch):
    for url in (f"/architectures/{arch.id}", f"/architectures/{arch.id}/genotype.json"):
        assert client.get(url).status_code == 302
    assert client.post(f"/architectures/{arch.id}/train", {}).status_code == 302


@pytest.mark.parametrize("who", ["owner", "member", "staff"])
def test_it_shows_cells_numbers_and_per_epoch_metrics(client, personas, arch, who):
    client.force_login(getattr(personas, who))
    response = client.get(f"/architectures/{arch.id}")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count("<svg") == 1 and 'data-cell="normal"' in body and 'data-cell="reduce"' in body
    assert "0.8765" in body and "123,456" in body and "7,890,123" in body
    assert response.context["column_keys"][:3] == ["epoch", "train_loss", "train_acc"]
    assert "val acc" in body and "0.8300" in body and "1.2" in body
    assert f'href="/architectures/{arch.id}/genotype.json"' in body


def test_an_outsider_gets_404_everywhere(client, personas, arch):
    client.force_login(personas.outsider)
    assert client.get(f"/architectures/{arch.id}").status_code == 404
    assert client.get(f"/architectures/{arch.id}/genotype.json").status_code == 404
    data = {"name": "x", "repeats": 6, "filters": 32, "epochs": 10, "dataset": "digits"}
    assert client.post(f"/architectures/{arch.id}/train", data).status_code == 404
    assert not TrainingJob.objects.exists()


def test_the_genotype_downloads_as_json(client, personas, arch):
    client.force_login(personas.member)
    response = client.get(f"/architectures/{arch.id}/genotype.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    assert json.loads(response.content) == NASNET_A.to_dict()


def test_a_member_queues_a_training_job_at_scale(client, personas, arch):
    client.force_login(personas.member)
    data = {"name": "big one", "repeats": 4, "filters": 24, "epochs": 50, "dataset": "digits"}
    response = client.post(f"/architectures/{arch.id}/train", data)
    assert response.status_code == 302 and response["Location"] == f"/architectures/{arch.id}"
    job = TrainingJob.objects.get()
    assert (job.team, job.owner, job.architecture, job.name) == (personas.alpha, personas.member, arch, "big one")
    assert (job.recipe["repeats"], job.recipe["filters"], job.recipe["epochs"]) == (4, 24, 50)
    assert job.genotype == NASNET_A.to_dict() and job.dataset["name"] == "digits"
    assert "big one" in client.get(f"/architectures/{arch.id}").content.decode()


def test_the_train_form_starts_at_the_papers_scale_on_the_searchs_data_set(client, personas, arch):
    client.force_login(personas.owner)
    response = client.get(f"/architectures/{arch.id}")
    form = response.context["form"]
    # Blank numbers take the preset's, or without one the paper's CIFAR-10 model: shown as placeholders.
    assert form["repeats"].value() is None and form["dataset"].value() == "digits"
    body = response.content.decode()
    assert 'placeholder="6"' in body and 'placeholder="32"' in body and 'placeholder="600"' in body
    assert '<option value="cifar_final">' in body and '<option value="imagenet_mobile">' in body


def test_blank_numbers_train_at_the_papers_scale(client, personas, arch):
    client.force_login(personas.member)
    response = client.post(f"/architectures/{arch.id}/train", {"name": "default", "dataset": "digits"})
    assert response.status_code == 302
    job = TrainingJob.objects.get()
    assert (job.recipe["repeats"], job.recipe["filters"], job.recipe["epochs"], job.preset) == (6, 32, 600, "")


def test_a_member_queues_a_preset_within_a_budget_and_the_job_page_shows_it(client, personas, arch):
    client.force_login(personas.member)
    data = {"name": "mobile", "preset": "cifar_final_cpu", "epochs": 3, "dataset": "digits", "max_params": "50k"}
    response = client.post(f"/architectures/{arch.id}/train", data)
    assert response.status_code == 302, response.context["form"].errors if response.context else response
    job = TrainingJob.objects.get()
    assert job.preset == "cifar_final_cpu" and job.recipe["epochs"] == 3 and job.recipe["cutout"] == 16
    assert job.budget == {"max_params": 50000, "max_mult_adds": None, "repeats": 2}
    body = client.get(f"/training-jobs/{job.id}").content.decode()
    assert "cifar_final_cpu" in body and "≤ 50,000 params" in body and "N fixed at 2" in body
    assert "fitted when a worker starts the job" in body
    job.budget = {
        **job.budget,
        "fitted": {"repeats": 2, "filters": 5, "n_at_p": "2@120", "params": 41000, "mult_adds": 9},
    }
    job.save(update_fields=["budget"])
    assert "fitted: 2@120 (F=5), 41,000 params" in client.get(f"/training-jobs/{job.id}").content.decode()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"dataset": "no-such-folder"}, "dataset"),
        ({"name": "\u200b"}, "name"),  # blank takes a default; nothing visible is refused
        ({"epochs": 0}, "epochs"),
        ({"preset": "cifar_huge"}, "preset"),
        ({"max_params": "lots"}, "max_params"),
        ({"filters": "", "max_mult_adds": "10"}, "max_mult_adds"),  # below the smallest network
        ({"max_params": "1M"}, "filters"),  # a budget picks F: leave it blank
    ],
)
def test_a_bad_train_request_names_the_field_and_writes_nothing(client, personas, arch, overrides, field):
    client.force_login(personas.owner)
    data = {"name": "x", "repeats": 6, "filters": 32, "epochs": 10, "dataset": "digits", **overrides}
    response = client.post(f"/architectures/{arch.id}/train", data)
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize(
    "data, name",
    [
        ({}, "alpha digits #0 at N=6 F=32"),
        ({"preset": "cifar_final_cpu", "max_params": "50k"}, "alpha digits #0 at cifar_final_cpu within 50k params"),
        ({"repeats": 3, "max_mult_adds": "600M"}, "alpha digits #0 at N=3 within 600M mult-adds"),
    ],
)
def test_a_blank_name_says_the_recipe_and_the_size(client, personas, arch, data, name):
    client.force_login(personas.member)
    response = client.post(f"/architectures/{arch.id}/train", {"name": "", "dataset": "digits", **data})
    assert response.status_code == 302, response.context and response.context["form"].errors
    assert TrainingJob.objects.get().name == name


# -- early stopping and the team reward cache (issue #13) ------------------------------------------
def test_a_stopped_childs_page_shows_its_rung_value_and_no_reward(client, personas):
    from tests.test_front_helpers import ES_SPEC, make_child
    from webapp.searches import models as m

    search = make_search(personas.alpha, personas.owner)
    search.spec = ES_SPEC
    search.save()
    arch = make_child(search, 0, m.RUN_STOPPED, done=3, value=0.4567)
    client.force_login(personas.member)
    body = client.get(f"/architectures/{arch.id}").content.decode()
    assert 'id="arch-reward">–<' in body
    note = body.split('<div id="run-note">', 1)[1].split("</div></div>", 1)[0]
    assert '<div class="child-note muted">stopped after epoch 3 of 9</div>' in note
    assert "rung value 0.4567" in note and '<span class="badge stopped">stopped</span>' in body


def test_a_reused_childs_page_links_to_where_it_was_measured(client, personas):
    from tests.test_front_helpers import make_child
    from webapp.searches import models as m

    origin_search = make_search(personas.alpha, personas.owner, name="measured here")
    origin = make_child(origin_search, 7, m.RUN_SUCCEEDED, done=1, value=0.8, reward=0.8)
    arch = make_child(make_search(personas.alpha, personas.owner), 0, m.RUN_REUSED, value=0.8, reward=0.8,
                      reused_from=origin)  # fmt: skip
    client.force_login(personas.member)
    body = client.get(f"/architectures/{arch.id}").content.decode()
    assert (
        f'reused from <a href="/architectures/{origin.id}">#7</a> of '
        f'<a class="wrap" href="/searches/{origin_search.id}">measured here</a>'
    ) in body
    assert 'id="arch-reward">0.8000<' in body
