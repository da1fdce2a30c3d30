"""The training-jobs API: submit from an architecture or a genotype, list, detail, bundle."""

from __future__ import annotations

import io
import json
import os
import zipfile

import pytest

from webapp.searches import models as m

GENOTYPE = {
    "normal": {"blocks": [{"inputs": [0, 1], "ops": ["identity", "sep_conv_3x3"], "combine": "add"}]},
    "reduce": {"blocks": [{"inputs": [0, 1], "ops": ["max_pool_3x3", "identity"], "combine": "concat"}]},
}
RECIPE = {"repeats": 1, "filters": 8, "epochs": 2}


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def artifacts(settings, tmp_path):
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.NAS_ARTIFACTS_ROOT = root
    return root


@pytest.fixture
def arch(personas):
    search = m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="s", spec={}, children_total=1, status=m.FINISHED
    )
    return m.Architecture.objects.create(search=search, sample_index=0, genotype=GENOTYPE, canonical_hash="ab" * 32)


def make_job(p, team=None, **kwargs) -> m.TrainingJob:
    fields = {"name": "job", "genotype": GENOTYPE, "dataset": {"name": "digits"}, "recipe": RECIPE, **kwargs}
    return m.TrainingJob.objects.create(team=team or p.alpha, owner=p.owner, **fields)


def post(client, data):
    return client.post("/api/training-jobs", json.dumps(data), content_type="application/json")


def test_a_member_trains_an_architecture_of_the_team(client, personas, arch):
    client.force_login(personas.member)
    r = post(client, {"team": personas.alpha.id, "name": "final", "architecture": arch.id, "dataset": "digits"})
    assert r.status_code == 201, r.content
    job = m.TrainingJob.objects.get()
    assert r.json() == json.loads(json.dumps(job.to_dict()))
    assert job.architecture == arch and job.genotype == GENOTYPE and job.owner == personas.member


def test_an_owner_trains_a_pasted_genotype_with_a_recipe(client, personas):
    client.force_login(personas.owner)
    body = {"team": personas.alpha.id, "name": "g", "genotype": GENOTYPE, "dataset": "digits", "recipe": RECIPE}
    r = post(client, body)
    assert r.status_code == 201 and r.json()["recipe"]["epochs"] == 2 and r.json()["architecture"] is None


BAD = [
    ("team", {"team": None}, 400),
    ("team", {"team": "x"}, 400),
    ("name", {"name": ""}, 400),
    ("name", {"name": None}, 400),
    ("genotype", {"genotype": None}, 400),
    ("genotype", {"genotype": [1]}, 400),
    ("genotype.normal", {"genotype": {"reduce": GENOTYPE["reduce"]}}, 400),
    (
        "genotype.normal.blocks[0].ops[1]",
        {
            "genotype": {
                **GENOTYPE,
                "normal": {"blocks": [{"inputs": [0, 1], "ops": ["identity", "conv_99x99"], "combine": "add"}]},
            }
        },
        400,
    ),  # fmt: skip
    ("genotype", {"architecture": "ARCH"}, 400),
    ("architecture", {"genotype": None, "architecture": 987654321}, 404),
    ("architecture", {"genotype": None, "architecture": "one"}, 400),
    ("dataset", {"dataset": None}, 400),
    ("dataset.name", {"dataset": "../../etc"}, 400),
    ("dataset", {"dataset": "a\x00b"}, 400),  # nas_engine raises ValueError here; still a 400
    ("dataset", {"dataset": 5}, 400),
    ("recipe", {"recipe": "fast"}, 400),
    ("recipe.epochs", {"recipe": {"epochs": 0}}, 400),
    ("recipe.lr", {"recipe": {"lr": -1.0}}, 400),
    ("recipe.wings", {"recipe": {"wings": 1}}, 400),
]


@pytest.mark.parametrize(("field", "change", "status"), BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_it_refuses_a_bad_job_naming_the_field_and_writes_nothing(client, personas, arch, field, change, status):
    body = {"team": personas.alpha.id, "name": "j", "genotype": GENOTYPE, "dataset": "digits", "recipe": RECIPE}
    body.update({k: (arch.id if v == "ARCH" else v) for k, v in change.items()})
    body = {k: v for k, v in body.items() if v is not None or k in ("team", "name")}
    client.force_login(personas.owner)
    r = post(client, body)
    assert r.status_code == status and r.json()["field"].startswith(field), r.content
    assert m.TrainingJob.objects.count() == 0


def test_an_outsider_cannot_train_alphas_architecture_in_beta(client, personas, arch):
    client.force_login(personas.outsider)
    r = post(client, {"team": personas.beta.id, "name": "steal", "architecture": arch.id, "dataset": "digits"})
    assert r.status_code == 404 and r.json()["field"] == "architecture"
    r = post(client, {"team": personas.alpha.id, "name": "steal", "genotype": GENOTYPE, "dataset": "digits"})
    assert r.status_code == 404 and r.json()["field"] == "team"
    assert m.TrainingJob.objects.count() == 0


def test_staff_cannot_move_an_architecture_to_another_team(client, personas, arch):
    client.force_login(personas.staff)
    r = post(client, {"team": personas.beta.id, "name": "x", "architecture": arch.id, "dataset": "digits"})
    assert r.status_code == 400 and r.json()["field"] == "architecture"
    assert m.TrainingJob.objects.count() == 0


def test_the_list_and_detail_follow_the_team(client, personas):
    alpha_job, beta_job = make_job(personas), make_job(personas, team=personas.beta, name="beta job")
    client.force_login(personas.member)
    assert [j["id"] for j in client.get("/api/training-jobs").json()["results"]] == [alpha_job.id]
    assert client.get(f"/api/training-jobs/{alpha_job.id}").json() == json.loads(json.dumps(alpha_job.to_dict()))
    assert client.get(f"/api/training-jobs/{beta_job.id}").status_code == 404
    client.force_login(personas.staff)
    assert client.get("/api/training-jobs").json()["count"] == 2
    assert client.get(f"/api/training-jobs?team={personas.beta.id}").json()["results"][0]["id"] == beta_job.id
    assert client.get("/api/training-jobs?status=succeeded").json()["count"] == 0
    assert client.get("/api/training-jobs?status=nope").json()["field"] == "status"


def write_bundle(artifacts, rel="jobs/1"):
    folder = artifacts / rel
    (folder / "sub").mkdir(parents=True)
    (folder / "genotype.json").write_text(json.dumps(GENOTYPE))
    (folder / "sub" / "metrics.json").write_text("{}")
    return folder


@pytest.mark.parametrize("who", ["owner", "member", "staff"])
def test_the_bundle_downloads_as_a_zip_once_it_exists(client, personas, artifacts, who):
    job = make_job(personas)
    client.force_login(getattr(personas, who))
    r = client.get(f"/api/training-jobs/{job.id}/bundle")
    assert r.status_code == 404 and r.json()["field"] == "bundle"
    job.bundle_path = "jobs/1"
    job.save()
    assert client.get(f"/api/training-jobs/{job.id}/bundle").status_code == 404  # folder not written yet
    write_bundle(artifacts)
    r = client.get(f"/api/training-jobs/{job.id}/bundle")
    assert r.status_code == 200 and r["Content-Type"] == "application/zip"
    assert f"training-job-{job.id}-bundle.zip" in r["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(r.streaming_content)))
    assert sorted(archive.namelist()) == ["genotype.json", "sub/metrics.json"]


@pytest.mark.parametrize("path", ["../outside", "/etc", ".", "jobs/../../outside", "link"])
def test_the_bundle_never_leaves_the_artifacts_root(client, personas, artifacts, path):
    outside = artifacts.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, artifacts / "link")
    job = make_job(personas, bundle_path=path)
    client.force_login(personas.owner)
    r = client.get(f"/api/training-jobs/{job.id}/bundle")
    assert r.status_code == 404


def test_symlinks_inside_a_bundle_are_not_followed(client, personas, artifacts):
    folder = write_bundle(artifacts)
    (artifacts.parent / "secret.txt").write_text("secret")
    os.symlink(artifacts.parent / "secret.txt", folder / "leak.txt")
    os.symlink(artifacts.parent, folder / "leakdir")
    job = make_job(personas, bundle_path="jobs/1")
    client.force_login(personas.owner)
    r = client.get(f"/api/training-jobs/{job.id}/bundle")
    names = zipfile.ZipFile(io.BytesIO(b"".join(r.streaming_content))).namelist()
    assert sorted(names) == ["genotype.json", "sub/metrics.json"]


def test_an_outsider_gets_404_on_alphas_job_and_bundle(client, personas, artifacts):
    write_bundle(artifacts)
    job = make_job(personas, bundle_path="jobs/1")
    client.force_login(personas.outsider)
    for url in (f"/api/training-jobs/{job.id}", f"/api/training-jobs/{job.id}/bundle"):
        r = client.get(url)
        assert r.status_code == 404 and r.json() == {"field": "id", "error": "not found"}
    assert client.get("/api/training-jobs").json()["count"] == 0


def test_anonymous_gets_401_on_jobs(client, personas):
    job = make_job(personas)
    for url in ("/api/training-jobs", f"/api/training-jobs/{job.id}", f"/api/training-jobs/{job.id}/bundle"):
        assert client.get(url).status_code == 401
    assert post(client, {"team": personas.alpha.id}).status_code == 401


# -- transfer: presets and size budgets (issue #11) -----------------------------------------------
def test_a_preset_is_the_base_recipe_and_sets_the_image_size(client, personas):
    client.force_login(personas.owner)
    body = {"team": personas.alpha.id, "name": "p", "genotype": GENOTYPE, "dataset": "digits"}
    r = post(client, {**body, "preset": "cifar_final_cpu", "recipe": {"epochs": 1}})
    assert r.status_code == 201, r.content
    job = m.TrainingJob.objects.get()
    # The preset's regularisation, the explicit field over it, its 32 px over digits' 8.
    assert (job.recipe["aux_weight"], job.recipe["drop_path_keep"], job.recipe["cutout"]) == (0.4, 0.6, 16)
    assert (job.recipe["epochs"], job.recipe["repeats"], job.recipe["filters"]) == (1, 2, 8)
    assert job.dataset["image_size"] == 32 and job.preset == "cifar_final_cpu" and job.budget == {}
    assert r.json()["preset"] == "cifar_final_cpu" and r.json()["budget"] is None


def test_an_explicit_image_size_wins_over_the_presets(client, personas):
    client.force_login(personas.owner)
    body = {"team": personas.alpha.id, "name": "p", "genotype": GENOTYPE, "preset": "cifar_final_cpu"}
    r = post(client, {**body, "dataset": {"name": "digits", "image_size": 16}})
    assert r.status_code == 201, r.content
    assert m.TrainingJob.objects.get().dataset["image_size"] == 16


def test_a_budget_is_stored_for_the_worker_to_fit(client, personas):
    client.force_login(personas.owner)
    body = {"team": personas.alpha.id, "name": "b", "genotype": GENOTYPE, "dataset": "digits"}
    r = post(client, {**body, "recipe": {"repeats": 2, "epochs": 1}, "budget": {"max_params": "20k"}})
    assert r.status_code == 201, r.content
    job = m.TrainingJob.objects.get()
    assert job.budget == {"max_params": 20000, "max_mult_adds": None, "repeats": 2}
    assert r.json()["budget"] == job.budget


def test_the_presets_are_listed(client, personas):
    client.force_login(personas.member)
    r = client.get("/api/transfer-presets")
    assert r.status_code == 200
    presets = r.json()
    assert {"cifar_final", "imagenet_mobile", "imagenet_large", "cifar_final_cpu"} <= set(presets)
    assert presets["cifar_final"]["recipe"]["epochs"] == 600 and presets["cifar_final"]["n_at_p"] == "6@768"
    client.logout()
    assert client.get("/api/transfer-presets").status_code == 401


BAD_TRANSFER = [
    ("preset", {"preset": "cifar_huge"}),
    ("preset", {"preset": 3}),
    ("budget", {"budget": 5}),
    ("budget", {"budget": {"max_params": None}}),
    ("budget.max_flops", {"budget": {"max_flops": 1}}),
    ("budget.max_params", {"budget": {"max_params": "lots"}}),
    ("budget.max_params", {"budget": {"max_params": -5}}),
    ("budget.max_params", {"budget": {"max_params": True}}),
    # Below the smallest network of this cell: no N@P can meet it.
    ("budget.max_params", {"budget": {"max_params": 100}}),
    ("budget.max_mult_adds", {"budget": {"max_mult_adds": "1k"}}),
    ("recipe.filters", {"budget": {"max_params": "1M"}, "recipe": {"filters": 8}}),
    # An ImageNet stem needs 32 px; digits are 8 px unless an image size is given.
    ("dataset.image_size", {"recipe": {"macro": "imagenet"}}),
]


@pytest.mark.parametrize(("field", "change"), BAD_TRANSFER, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_TRANSFER)])
def test_it_refuses_a_bad_preset_or_budget_naming_the_field(client, personas, field, change):
    client.force_login(personas.owner)
    body = {"team": personas.alpha.id, "name": "j", "genotype": GENOTYPE, "dataset": "digits", **change}
    r = post(client, body)
    assert r.status_code == 400 and r.json()["field"] == field, r.content
    assert m.TrainingJob.objects.count() == 0


def test_an_unreachable_budget_says_the_smallest_reachable_value(client, personas):
    client.force_login(personas.owner)
    body = {"team": personas.alpha.id, "name": "j", "genotype": GENOTYPE, "dataset": "digits"}
    r = post(client, {**body, "budget": {"max_params": 100}})
    assert "smallest reachable value" in r.json()["error"]
