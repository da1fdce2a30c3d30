"""Issue #12, staff roles: a reviewer made by `createmember --staff` (not a superuser)
uses the admin: every list and page, the review actions (cancel, requeue, cancel
selections), and nothing that adds or deletes teams' data or manages users.

tests/test_admin.py logs in as a superuser, who holds every permission; that is how a
plain `is_staff` user, who holds none, got 403 on every admin page unnoticed."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command

from tests import test_admin
from webapp.accounts.models import ApiToken
from webapp.accounts.roles import ACTION_PERMISSIONS, REVIEWERS, reviewer_permission_names
from webapp.fleet.models import Worker
from webapp.live.models import SearchEvent
from webapp.searches import models as m

# The rows the superuser tests use (a search with a failed run, a running selection).
search, selection = test_admin.search, test_admin.selection


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def reviewer(personas):
    run("createmember", "rita", "alpha", "--password", "pw-rita-123", "--staff")
    user = User.objects.get(username="rita")
    assert user.is_staff and not user.is_superuser
    return user


@pytest.fixture
def a_row_of_every_model(personas, search, selection):
    """At least one row for each model the admin registers, so each has a page to open."""
    m.TrainingJob.objects.create(
        team=personas.alpha, owner=personas.owner, name="job", genotype={}, dataset={}, recipe={}
    )
    ApiToken.issue(personas.owner, "laptop")
    SearchEvent.objects.create(search=search, seq=1, type="started")
    Worker.objects.create(hostname="gpu0@host", queues="gpu", device="CPU")
    m.RungDecision.objects.create(search=search, sample_index=0, epoch=1, statistic=0.5, value=0.5, stop=False)


def model_url(model) -> str:
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/"


def test_a_reviewer_opens_every_admin_list_and_page_without_a_delete_button(client, reviewer, a_row_of_every_model):
    client.force_login(reviewer)
    assert client.get("/admin/").status_code == 200
    wrong = []
    for model in admin.site._registry:
        base = model_url(model)
        row = model._default_manager.order_by("pk").first()
        assert row is not None, f"give {model._meta.label} a row in a_row_of_every_model"
        listing = client.get(base)
        page = client.get(f"{base}{row.pk}/change/")
        for url, response in ((base, listing), (f"{base}{row.pk}/change/", page)):
            if response.status_code != 200:
                wrong.append(f"GET {url}: {response.status_code}")
        if listing.status_code == 200 and "delete_selected" in listing.content.decode():
            wrong.append(f"{base}: offers 'Delete selected'")
        if page.status_code == 200 and 'class="deletelink"' in page.content.decode():
            wrong.append(f"{base}{row.pk}/change/: shows a delete button")
        for url in (f"{base}add/", f"{base}{row.pk}/delete/"):
            status = client.get(url).status_code
            if status != 403:
                wrong.append(f"GET {url}: {status}, not 403")
    assert wrong == []


def test_a_reviewer_cancels_a_search_and_requeues_its_failed_runs(client, reviewer, search):
    client.force_login(reviewer)
    client.post("/admin/searches/search/", {"action": "requeue_failed", "_selected_action": [search.id]})
    run_ = m.ChildRun.objects.get(architecture__search=search, architecture__sample_index=1)
    assert run_.status == m.RUN_QUEUED
    response = client.post(
        "/admin/searches/search/", {"action": "cancel_searches", "_selected_action": [search.id]}, follow=True
    )
    search.refresh_from_db()
    assert search.status == m.CANCELLING and "Cancelling 1." in response.content.decode()


def test_a_reviewer_cancels_a_selection(client, reviewer, selection):
    client.force_login(reviewer)
    client.post("/admin/searches/selection/", {"action": "cancel_selections", "_selected_action": [selection.id]})
    selection.refresh_from_db()
    assert selection.status == m.RUN_CANCELLED and selection.runs.get(seed=1).status == m.RUN_CANCELLED


def test_a_reviewer_cancels_a_training_job(client, personas, reviewer):
    job = m.TrainingJob.objects.create(
        team=personas.alpha, owner=personas.owner, name="job", genotype={}, dataset={}, recipe={}, status=m.RUN_QUEUED
    )
    client.force_login(reviewer)
    client.post("/admin/searches/trainingjob/", {"action": "cancel_training_jobs", "_selected_action": [job.id]})
    job.refresh_from_db()
    assert job.status == m.RUN_CANCELLED and job.error == "cancelled by rita"


def test_a_reviewer_cannot_promote_an_architecture(client, reviewer, search):
    """Promoting queues a training job in the team's name (GPU time, a new row of the
    team's): an add, which reviewers do not hold."""
    arch = search.architectures.get(sample_index=0)
    client.force_login(reviewer)
    listing = client.get("/admin/searches/architecture/").content.decode()
    assert "promote_architectures" not in listing
    client.post("/admin/searches/architecture/", {"action": "promote_architectures", "_selected_action": [arch.id]})
    assert not m.TrainingJob.objects.exists()


def test_a_reviewer_cannot_manage_users_or_make_themselves_superuser(client, personas, reviewer):
    client.force_login(reviewer)
    own = f"/admin/auth/user/{reviewer.pk}/"
    page = client.get(f"{own}change/")
    assert page.status_code == 200 and 'name="is_superuser"' not in page.content.decode()  # read-only
    edit = {"username": "rita", "is_staff": "on", "is_superuser": "on", "is_active": "on"}
    assert client.post(f"{own}change/", edit).status_code == 403
    password = {"password1": "a-new-pass-123", "password2": "a-new-pass-123", "usable_password": "true"}
    assert client.get(f"{own}password/").status_code == 403
    assert client.post(f"/admin/auth/user/{personas.owner.pk}/password/", password).status_code == 403
    assert client.get("/admin/auth/user/add/").status_code == 403
    group = Group.objects.get(name=REVIEWERS)
    change_user = Permission.objects.get(codename="change_user")
    grant = {"name": REVIEWERS, "permissions": [change_user.pk]}
    assert client.post(f"/admin/auth/group/{group.pk}/change/", grant).status_code == 403
    reviewer.refresh_from_db(), personas.owner.refresh_from_db()
    assert not reviewer.is_superuser and not reviewer.has_perm("auth.change_user")
    assert personas.owner.check_password("pw-owner-123")


def test_viewing_is_not_enough_to_run_any_action(client, search, a_row_of_every_model):
    """Every action asks for a permission beyond view: Django offers an action without
    `allowed_permissions` to anyone who can open the list, so a staff user who may only
    look could otherwise cancel searches and jobs."""
    looker = User.objects.create_user("looker", password="pw-looker-123", is_staff=True)
    looker.user_permissions.set(
        Permission.objects.get(content_type__app_label=model._meta.app_label, codename=f"view_{model._meta.model_name}")
        for model in admin.site._registry
    )
    client.force_login(looker)
    offered = {}
    for model in admin.site._registry:
        response = client.get(model_url(model))
        assert response.status_code == 200, model_url(model)
        form = response.context["action_form"]
        offered[model._meta.label] = [name for name, _ in form.fields["action"].choices if name] if form else []
    assert {label: names for label, names in offered.items() if names} == {}
    client.post("/admin/searches/search/", {"action": "cancel_searches", "_selected_action": [search.id]})
    search.refresh_from_db()
    assert search.status == m.RUNNING


def test_migrate_made_the_reviewers_group_with_view_on_every_admin_model_and_the_action_permissions(db):
    group = Group.objects.get(name=REVIEWERS)
    held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
    assert held == reviewer_permission_names()
    for model in admin.site._registry:
        assert f"{model._meta.app_label}.view_{model._meta.model_name}" in held
    assert set(ACTION_PERMISSIONS) == {
        "searches.change_search", "searches.change_selection", "searches.change_trainingjob"
    }  # fmt: skip
    assert {p for p in held if not p.split(".")[1].startswith("view_")} == set(ACTION_PERMISSIONS)


def test_migrate_puts_the_reviewers_group_back_as_the_code_says(db):
    group = Group.objects.get(name=REVIEWERS)
    group.permissions.remove(Permission.objects.get(codename="view_search"))
    group.permissions.add(Permission.objects.get(codename="change_user"))  # granted by hand
    run("migrate", "--verbosity", "0")
    held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
    assert held == reviewer_permission_names()


def test_createmember_staff_makes_an_existing_user_a_reviewer_once(personas):
    out = run("createmember", "owner", "alpha", "--staff")
    assert "made owner staff" in out and "added owner to the reviewers group" in out
    owner = User.objects.get(username="owner")
    assert owner.is_staff and not owner.is_superuser and owner.groups.filter(name=REVIEWERS).exists()
    assert owner.has_perm("searches.view_search") and not owner.has_perm("auth.change_user")
    again = run("createmember", "owner", "alpha", "--staff")
    assert "owner is already staff in the reviewers group" in again and "made owner staff" not in again
