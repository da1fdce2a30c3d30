"""Early stopping in the service (workers/rungs.py) and the team reward cache
(workers/advance.py), in-process on the real PostgreSQL: decisions taken from the rows in
ask order whatever order results arrive in, a child that waits gives its worker back and
resumes, a child killed at a rung gets its stored decision again, and the cache reuses a
team's own measurements only. (The same across real Celery workers: test_orchestration.)
"""

from __future__ import annotations

import random

import pytest

from nas_engine.early_stopping import Board, decision_epochs, parse_early_stop
from nas_engine.genotype import Genotype
from nas_engine.synthetic import SyntheticObjective
from tests.test_orchestration_units import broker  # noqa: F401 - autouse: this run's own broker

EPOCHS = 9
ASHA = {"rule": "asha", "min_epochs": 1, "reduction_factor": 3}
SPEC = {
    "dataset": "digits",
    "objective": "synthetic",
    "strategy": "random",
    "child": {"epochs": EPOCHS},
    "early_stop": ASHA,
    "budget": {"children": 12, "parallel": 12},
}


@pytest.fixture
def member(db):
    from django.contrib.auth.models import User

    from webapp.accounts.models import ROLE_OWNER, Membership, Team

    team = Team.objects.create(name="alpha")
    user = User.objects.create_user("owner", password="pw-owner-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    return user, team


def submit(member, **spec):
    from webapp.searches.services import submit_search

    user, team = member
    return submit_search(user=user, team=team, name="s", spec_data={**SPEC, **spec})


def runs_by_index(search) -> dict:
    from webapp.searches import models as m

    runs = m.ChildRun.objects.filter(architecture__search=search).select_related("architecture")
    return {run.architecture.sample_index: run for run in runs}


def curves(search) -> dict[int, list[float]]:
    """The synthetic learning curve of every sampled child, by sample index."""
    spec = search.parsed_spec
    objective = SyntheticObjective(spec.space, spec.seed)
    return {
        i: objective.curve(Genotype.from_dict(run.architecture.genotype), EPOCHS)
        for i, run in runs_by_index(search).items()
    }


def stored_decisions(search) -> dict[tuple[int, int], tuple]:
    from webapp.searches import models as m

    rows = m.RungDecision.objects.filter(search=search)
    return {(r.sample_index, r.epoch): (r.stop, r.threshold, r.peers) for r in rows}


def board_decisions(settings, rows) -> dict[tuple[int, int], tuple]:
    """The engine's decisions (nas_engine.early_stopping.Board) on the same values."""
    board = Board.from_rows(settings, EPOCHS, rows)
    out = {}
    for index, values, _ in rows:
        for epoch in decision_epochs(settings, EPOCHS):
            if epoch <= len(values):
                d = board.decision(index, epoch)
                out[index, epoch] = (d.stop, d.threshold, d.peers)
    return out


def play(search, order_seed: int | None) -> dict[int, list[float]]:
    """Children report their curves epoch by epoch, interleaved at random (`order_seed`) or
    child after child (None), as workers would: each decision epoch's value is written to the
    run's row before asking; a child that cannot be decided yet waits, and is asked again
    after every later event (as the advance does for waiting runs). Returns the values each
    child reported."""
    from webapp.searches import models as m
    from workers import rungs

    spec = search.parsed_spec
    settings, values = spec.early_stop, curves(search)
    runs = runs_by_index(search)
    stops = set(decision_epochs(settings, EPOCHS))
    reached = {i: 0 for i in runs}
    waiting: dict[int, int] = {}  # index -> the epoch it waits at
    done: set[int] = set()
    rng = random.Random(order_seed)

    def write(i: int) -> None:
        epochs = [{"epoch": e, "epochs": EPOCHS, "val_acc": v} for e, v in enumerate(values[i][: reached[i]], 1)]
        m.ChildRun.objects.filter(pk=runs[i].pk).update(status=m.RUN_RUNNING, epochs=epochs)

    def settle(i: int, epoch: int) -> bool:
        verdict = rungs.decide(search.id, settings, i, epoch)
        if verdict.decision is None:
            waiting[i] = epoch
            return False
        waiting.pop(i, None)
        if verdict.decision.stop:
            m.ChildRun.objects.filter(pk=runs[i].pk).update(status=m.RUN_STOPPED)
            done.add(i)
        return True

    while len(done) < len(runs):
        ready = [i for i in runs if i not in done and i not in waiting]
        if not ready:
            raise AssertionError(f"deadlock: everyone waits {waiting}")
        i = rng.choice(ready) if order_seed is not None else min(ready)
        reached[i] += 1
        write(i)
        if reached[i] == EPOCHS:
            m.ChildRun.objects.filter(pk=runs[i].pk).update(status=m.RUN_SUCCEEDED)
            done.add(i)
        elif reached[i] in stops:
            settle(i, reached[i])
        for j, epoch in sorted(waiting.items()):
            settle(j, epoch)
    return {i: values[i][: reached[i]] for i in runs}


@pytest.mark.parametrize("rule", [ASHA, {"rule": "median", "min_epochs": 2, "min_peers": 2}])
def test_rung_decisions_are_the_engines_whatever_order_results_arrive_in(member, rule):
    from webapp.searches import models as m
    from workers import advance

    outcomes = []
    for order_seed in (None, 1, 2, 3, 4, 5):
        m.RungDecision.objects.all().delete()
        search = submit(member, early_stop=rule)
        advance.advance(search.id)
        reported = play(search, order_seed)
        settings = parse_early_stop(rule)
        rows = [(i, v, True) for i, v in sorted(reported.items())]
        stored = stored_decisions(search)
        assert stored == board_decisions(settings, rows)  # threshold and peers too
        outcomes.append((stored, {i: len(v) for i, v in reported.items()}))
        search.delete()
    assert all(outcome == outcomes[0] for outcome in outcomes)  # in order == every shuffle
    stopped = [i for i, n in outcomes[0][1].items() if n < EPOCHS]
    assert 0 < len(stopped) < 12  # the rule stopped some children, not all


def local_summary(search, children: int, parallel: int):
    """The CLI's local loop (nas_engine.search) on the search's spec: strategy, seed, curves."""
    from nas_engine.search import run_search

    spec = search.parsed_spec
    objective = SyntheticObjective(spec.space, spec.seed)
    return run_search(
        spec.make_strategy(),
        lambda genotype, report: objective.train(genotype, EPOCHS, report),
        children=children,
        parallel=parallel,
        epochs=EPOCHS,
        early_stop=spec.early_stop,
    )


def drive(search, limit: int = 200) -> None:
    """Advance and train in-process until the search is done (a controller and a worker)."""
    from webapp.searches import models as m
    from workers import advance, child_runs

    for _ in range(limit):
        advance.advance(search.id)
        search.refresh_from_db()
        if search.is_done:
            return
        queued = m.ChildRun.objects.filter(architecture__search=search, status=m.RUN_QUEUED).order_by("id")
        for run_id in list(queued.values_list("id", flat=True)):
            child_runs.run_child(run_id)
    raise AssertionError(f"not done: {search.to_dict()}")


def test_a_search_with_asha_stops_children_at_rungs_and_counts_the_epochs(member, settings):
    from webapp.searches import models as m

    settings.NAS_RUNG_WAIT_SECONDS = 0
    search = submit(member, budget={"children": 20, "parallel": 4})
    drive(search)
    search.refresh_from_db()
    assert search.status == m.FINISHED and search.children_done == 20
    runs = runs_by_index(search)
    stopped = {i: r for i, r in runs.items() if r.status == m.RUN_STOPPED}
    completed = {i: r for i, r in runs.items() if r.status == m.RUN_SUCCEEDED}
    assert len(stopped) + len(completed) == 20 and stopped and completed
    assert search.children_stopped == len(stopped)
    assert search.epochs_trained == sum(len(r.epochs) for r in runs.values())
    assert search.epochs_saved == sum(EPOCHS - len(r.epochs) for r in stopped.values())
    for run in stopped.values():
        assert len(run.epochs) in (1, 3) and run.reward == run.epochs[-1]["val_acc"]
        run.architecture.refresh_from_db()
        assert run.architecture.reward is None  # a rung value is never the architecture's reward
    assert search.best_reward == max(r.reward for r in completed.values())
    # The page's rung table, live: the last search.status event carries the decisions per rung.
    from webapp.live.models import SearchEvent

    last = SearchEvent.objects.filter(search=search, type="search.status").order_by("-seq").first()
    rungs = last.payload["rungs"]
    assert rungs == search.rung_counts() and [r["epoch"] for r in rungs] == [1, 3]
    assert rungs[0]["reached"] == 20 and sum(r["stopped"] for r in rungs) == len(stopped)
    # The same decisions as the engine's on the values the children reported.
    rows = [(i, [e["val_acc"] for e in r.epochs], True) for i, r in sorted(runs.items())]
    assert stored_decisions(search) == board_decisions(parse_early_stop(ASHA), rows)
    # And the same children stopped as the CLI's local loop with the same strategy and seed.
    summary = local_summary(search, children=20, parallel=4)
    assert (summary.stopped, summary.epochs_trained) == (len(stopped), search.epochs_trained)
    assert summary.best_reward == search.best_reward


def test_a_child_that_cannot_be_decided_gives_its_worker_back_and_resumes(member, settings):
    from webapp.searches import models as m
    from workers import advance, child_runs

    settings.NAS_RUNG_WAIT_SECONDS = 0
    search = submit(member, budget={"children": 2, "parallel": 2})
    advance.advance(search.id)
    runs = runs_by_index(search)
    child_runs.run_child(runs[1].id)  # child 0 is still queued: it cannot be decided at epoch 1
    runs[1].refresh_from_db()
    assert runs[1].status == m.RUN_WAITING and len(runs[1].epochs) == 1 and runs[1].worker
    assert not m.RungDecision.objects.filter(search=search, sample_index=1).exists()
    child_runs.run_child(runs[0].id)
    runs[0].refresh_from_db()
    assert runs[0].status == m.RUN_SUCCEEDED and len(runs[0].epochs) == EPOCHS
    advance.advance(search.id)  # decides the waiting child
    decision = m.RungDecision.objects.get(search=search, sample_index=1, epoch=1)
    runs[1].refresh_from_db()
    if decision.stop:
        assert runs[1].status == m.RUN_STOPPED and runs[1].reward == runs[1].epochs[0]["val_acc"]
    else:
        assert runs[1].status == m.RUN_QUEUED and runs[1].attempt == 0  # waiting was not a failed attempt
        child_runs.run_child(runs[1].id)
        runs[1].refresh_from_db()
        assert runs[1].attempt == 1 and runs[1].status in (m.RUN_SUCCEEDED, m.RUN_STOPPED)
    assert m.RungDecision.objects.filter(search=search, sample_index=1, epoch=1).count() == 1
    drive(search)
    search.refresh_from_db()
    assert search.status == m.FINISHED and search.children_done == 2


def test_a_child_killed_at_a_rung_gets_its_stored_decision_not_a_second_one(member, settings):
    from django.utils import timezone

    from webapp.searches import models as m
    from workers import advance, child_runs, reaper, rungs

    search = submit(member, budget={"children": 1, "parallel": 1})
    advance.advance(search.id)
    run = m.ChildRun.objects.get(architecture__search=search)
    claimed = child_runs.claim(run.id)
    value = curves(search)[0][0]
    claimed.heartbeat(epochs=[{"epoch": 1, "epochs": EPOCHS, "val_acc": value}])
    verdict = rungs.decide(search.id, search.parsed_spec.early_stop, 0, 1)
    assert verdict.decision is not None and not verdict.decision.stop  # the first child at a rung goes on
    # Its worker dies here. Say the decision had been "stop" (as it would be for a child that
    # trained worse on its first attempt): the retry must obey it, not decide again.
    m.RungDecision.objects.filter(pk=verdict.decision.pk).update(stop=True)
    m.ChildRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now())
    assert reaper.reap()["requeued"] == [run.id]
    child_runs.run_child(run.id)
    run.refresh_from_db()
    assert run.status == m.RUN_STOPPED and run.attempt == 2 and len(run.epochs) == 1
    assert m.RungDecision.objects.filter(search=search).count() == 1


def test_a_real_child_that_waits_resumes_from_its_checkpoint(member, settings, tmp_path):
    from webapp.searches import models as m
    from workers import advance, child_runs
    from workers.resources import checkpoint_path

    settings.NAS_RUNG_WAIT_SECONDS = 0
    settings.NAS_ARTIFACTS_ROOT = tmp_path
    search = submit(
        member,
        objective="accuracy",
        child={"repeats": 1, "filters": 4, "epochs": 3, "batch_size": 64},
        dataset={"name": "digits", "subset_per_class": 30},
        noise_floor=None,
        budget={"children": 2, "parallel": 2},
    )
    advance.advance(search.id)
    runs = runs_by_index(search)
    child_runs.run_child(runs[1].id)
    runs[1].refresh_from_db()
    assert runs[1].status == m.RUN_WAITING and len(runs[1].epochs) == 1
    assert checkpoint_path("child", runs[1].id).exists()
    first_epoch, first_claim = runs[1].epochs[0], runs[1].wall_time
    assert first_claim > 0  # the time of the claim that parked, kept for the one that resumes
    # Child 0 fails before its first epoch: child 1 is then the first at the rung, and goes on.
    m.ChildRun.objects.filter(pk=runs[0].id).update(status=m.RUN_FAILED, error="gone")
    advance.advance(search.id)
    runs[1].refresh_from_db()
    assert runs[1].status == m.RUN_QUEUED
    child_runs.run_child(runs[1].id)
    runs[1].refresh_from_db()
    assert runs[1].status == m.RUN_SUCCEEDED and len(runs[1].epochs) == 3
    assert runs[1].epochs[0] == first_epoch  # resumed after epoch 1, not trained again
    assert runs[1].epochs_discarded == 0 and runs[1].wall_time > first_claim  # both claims' time
    assert not checkpoint_path("child", runs[1].id).exists()


def test_epochs_a_restart_trains_again_count_as_trained(member, client):
    """A worker lost after 2 epochs, with no checkpoint (no early stopping): the next attempt
    trains from scratch. Its 3 rows say 3 epochs; 5 were spent, and the counters say 5."""
    from webapp.searches import models as m
    from workers import advance, child_runs

    search = submit(
        member,
        early_stop=None,
        objective="accuracy",
        child={"repeats": 1, "filters": 4, "epochs": 3, "batch_size": 64},
        dataset={"name": "digits", "subset_per_class": 30},
        noise_floor=None,
        budget={"children": 1, "parallel": 1},
    )
    advance.advance(search.id)
    run = runs_by_index(search)[0]
    lost = [{"epoch": e, "epochs": 3, "val_acc": 0.1, "train_loss": 2.3} for e in (1, 2)]
    m.ChildRun.objects.filter(pk=run.pk).update(epochs=lost, attempt=1)  # what the lost worker wrote
    child_runs.run_child(run.id)
    run.refresh_from_db()
    assert run.status == m.RUN_SUCCEEDED and [e["epoch"] for e in run.epochs] == [1, 2, 3]
    assert run.epochs[0] != lost[0] and run.epochs_discarded == 2
    advance.advance(search.id)
    search.refresh_from_db()
    assert search.epochs_trained == 5
    client.force_login(member[0])
    rows = client.get(f"/api/searches/{search.id}/architectures").json()["results"]
    assert [row["epochs_trained"] for row in rows] == [5]


# -- the team reward cache -------------------------------------------------------------------
CACHED = {"early_stop": None, "budget": {"children": 6, "parallel": 3}}


def test_the_team_cache_reuses_a_cell_measured_by_another_search_of_the_team(member):
    from webapp.searches import models as m
    from workers import advance

    first = submit(member, **CACHED)
    drive(first)
    second = submit(member, **CACHED)  # random search, same seed: the same six cells
    advance.advance(second.id)
    second.refresh_from_db()
    assert second.status == m.FINISHED and second.children_reused == 6
    originals = {a.canonical_hash: a for a in m.Architecture.objects.filter(search=first)}
    for arch in m.Architecture.objects.filter(search=second):
        source = originals[arch.canonical_hash]
        assert arch.reused_from_id == source.id and arch.reward == source.reward
    assert second.best_reward == first.best_reward
    # A third search reuses from the original measurement, not from the reuse.
    third = submit(member, **CACHED)
    advance.advance(third.id)
    assert set(m.Architecture.objects.filter(search=third).values_list("reused_from__search", flat=True)) == {first.id}


@pytest.mark.parametrize(
    "change",
    [
        {"child": {"epochs": EPOCHS, "lr": 0.02}},  # another recipe
        {"dataset": {"name": "digits", "subset_per_class": 40}},  # another data set
        {"seed": 1},  # another split (and other cells)
        {"objective": {"name": "synthetic", "noise": 0.05}},  # another objective
        {"reuse_team_rewards": False},  # turned off
    ],
)
def test_the_team_cache_never_reuses_a_different_measurement(member, change):
    from webapp.searches import models as m
    from workers import advance

    drive(submit(member, **CACHED))
    other = submit(member, **{**CACHED, **change})
    advance.advance(other.id)
    other.refresh_from_db()
    assert other.children_reused == 0
    assert not m.Architecture.objects.filter(search=other, reused_from__isnull=False).exists()


def test_the_team_cache_never_crosses_teams(member):
    from django.contrib.auth.models import User

    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from workers import advance

    drive(submit(member, **CACHED))
    team = Team.objects.create(name="beta")
    user = User.objects.create_user("other", password="pw-other-123")
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    other = submit((user, team), **CACHED)
    advance.advance(other.id)
    other.refresh_from_db()
    assert other.children_reused == 0 and other.children_sampled == 3


def test_a_stopped_childs_rung_value_is_never_reused(member, settings):
    from webapp.searches import models as m
    from workers import advance

    settings.NAS_RUNG_WAIT_SECONDS = 0
    first = submit(member, budget={"children": 12, "parallel": 4})
    drive(first)
    stopped = m.Architecture.objects.filter(search=first, runs__status=m.RUN_STOPPED)
    assert stopped.exists()
    second = submit(member, budget={"children": 12, "parallel": 12})
    advance.advance(second.id)
    reused = m.Architecture.objects.filter(search=second, reused_from__isnull=False)
    assert reused.count() == 12 - stopped.count()
    assert not reused.filter(canonical_hash__in=stopped.values("canonical_hash")).exists()


def test_a_duplicate_of_a_stopped_child_is_stopped_again_without_training(member, settings, client):
    """As the local loop does: reused as stopped at the same rung, told the same Fidelity,
    no epochs spent; the same counters as nas_engine.search with the same strategy and seed."""
    from webapp.searches import models as m

    settings.NAS_RUNG_WAIT_SECONDS = 0
    # Random search in a space of a few cells: most children duplicate an earlier one.
    tiny = {"ops": ["identity", "sep_conv_3x3"], "num_blocks": 1, "combines": ["add"]}
    search = submit(member, space=tiny, budget={"children": 30, "parallel": 1})
    drive(search)
    search.refresh_from_db()
    runs = runs_by_index(search)
    again = {i: r for i, r in runs.items() if r.status == m.RUN_STOPPED and r.architecture.reused_from_id}
    assert again, f"no duplicate of a stopped child: {[(i, r.status) for i, r in runs.items()]}"
    for run in again.values():
        original = m.Architecture.objects.get(pk=run.architecture.reused_from_id)
        assert original.search_id == search.id and original.reused_from_id is None
        first = original.runs.get()
        assert (
            first.status == m.RUN_STOPPED
            and not m.RungDecision.objects.filter(search=search, sample_index=run.architecture.sample_index).exists()
        )  # no decision of its own: the original's verdict
        assert (run.reward, run.epochs) == (first.reward, first.epochs)
        assert run.architecture.reward is None and run.architecture.canonical_hash == original.canonical_hash
    trained = [r for i, r in runs.items() if i not in again and r.status != m.RUN_REUSED]
    assert search.epochs_trained == sum(len(r.epochs) for r in trained)  # the duplicates trained none
    assert search.children_stopped == sum(r.status == m.RUN_STOPPED for r in runs.values())
    assert search.children_reused == len(again) + sum(r.status == m.RUN_REUSED for r in runs.values())
    assert search.epochs_saved == sum(EPOCHS - len(r.epochs) for r in runs.values() if r.status == m.RUN_STOPPED)
    summary = local_summary(search, children=30, parallel=1)
    assert (summary.stopped, summary.reused, summary.epochs_trained) == (
        search.children_stopped,
        search.children_reused,
        search.epochs_trained,
    )
    # The API says the same: no epochs trained for the duplicate, its rung value in `run`.
    client.force_login(member[0])
    rows = client.get(f"/api/searches/{search.id}/architectures?page_size=50").json()["results"]
    assert sum(row["epochs_trained"] for row in rows) == search.epochs_trained
    by_index = {row["sample_index"]: row for row in rows}
    for i, run in again.items():
        assert by_index[i]["epochs_trained"] == 0 and by_index[i]["run"]["status"] == "stopped"
        assert by_index[i]["reward"] is None and by_index[i]["run"]["reward"] == run.reward
    # The page: where it stopped (its original's rung) and a link to the original.
    page = client.get(f"/searches/{search.id}").content.decode()
    i, run = next(iter(again.items()))
    rung = len(run.epochs)
    original = m.Architecture.objects.get(pk=run.architecture.reused_from_id)
    assert (
        f'stopped after epoch {rung} of {EPOCHS}</div><div class="child-note muted">reused from '
        f'<a href="/architectures/{original.id}">#{original.sample_index}</a></div>'
    ) in page


def test_a_reused_childs_sampled_event_names_where_it_was_measured(member):
    """The live row of a reused child reads "#k of <search>" at once (the page's words), not
    only after a reload: architecture.sampled carries the origin, null for a trained child."""
    from webapp.live.models import SearchEvent
    from workers import advance

    first = submit(member, early_stop=None, budget={"children": 2, "parallel": 2})
    drive(first)
    second = submit(member, early_stop=None, budget={"children": 3, "parallel": 3})
    second.name = "second"
    second.save()
    advance.advance(second.id)
    events = SearchEvent.objects.filter(search=second, type="architecture.sampled").order_by("seq")
    origins = {e.payload["architecture"]["sample_index"]: e.payload["reused_from"] for e in events}
    firsts = {a.sample_index: a for a in first.architectures.all()}
    assert origins == {
        0: {"architecture": firsts[0].id, "sample_index": 0, "search": first.id, "search_name": "s"},
        1: {"architecture": firsts[1].id, "sample_index": 1, "search": first.id, "search_name": "s"},
        2: None,  # the first search had only two children: this one is trained
    }


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_child_reused_while_the_page_is_open_links_its_origin_by_name(member, monkeypatch, settings):
    """daphne on the test database and headless Chromium (as tests/test_front_selection.py):
    the advance runs here, in-process, after the page opened; its events alone must make the
    row read "reused from #k of <name>", a hostile name shown as text."""
    from tests.test_e2e_browser import live_browser
    from webapp.searches import models as m
    from workers import advance

    evil = '<img src=x onerror="alert(1)"> origin'
    first = submit(member, early_stop=None, budget={"children": 2, "parallel": 2})
    m.Search.objects.filter(pk=first.pk).update(name=evil)
    drive(first)
    second = submit(member, early_stop=None, budget={"children": 2, "parallel": 2})  # not advanced yet
    origin = first.architectures.get(sample_index=1)
    with live_browser(settings, monkeypatch) as pages:
        page = pages.open(f"/searches/{second.id}")
        advance.advance(second.id)  # both children reused from the first search
        reused = m.Architecture.objects.get(search=second, sample_index=1)
        note = page.locator(f'#children tr[data-architecture="{reused.id}"] .child-note')
        note.wait_for(timeout=20_000)
        assert note.text_content() == f"reused from #1 of {evil}"
        links = note.locator("a")
        assert links.nth(0).get_attribute("href") == f"/architectures/{origin.id}"
        assert links.nth(1).get_attribute("href") == f"/searches/{first.id}"
        assert page.evaluate("() => document.querySelectorAll('#children img').length") == 0  # text only
        assert not pages.errors, pages.errors


# -- the spec ---------------------------------------------------------------------------------
def _spec(**fields):
    from django.conf import settings

    from nas_engine.spec import validate_spec

    return validate_spec({**SPEC, **fields}, data_root=settings.NAS_DATA_ROOT)


@pytest.mark.parametrize(
    "fields, field, reason",
    [
        ({"early_stop": "hyperband"}, "early_stop.rule", "must be one of none, asha, median"),
        ({"early_stop": {"rule": "asha", "reduction_factor": 1}}, "early_stop.reduction_factor", ">= 2"),
        ({"early_stop": {"rule": "asha", "grace": 2}}, "early_stop.grace", "unknown field"),
        ({"early_stop": {"rule": "asha", "min_epochs": EPOCHS}}, "early_stop.min_epochs", "no child would be stopped"),
        ({"early_stop": 3}, "early_stop", "must be an object or a rule name"),
        ({"reuse_team_rewards": "yes"}, "reuse_team_rewards", "must be true or false"),
    ],
)
def test_bad_early_stopping_settings_are_refused_naming_the_field(fields, field, reason):
    from nas_engine.spec import SpecError

    with pytest.raises(SpecError) as caught:
        _spec(**fields)
    assert caught.value.field == field and reason in caught.value.reason


def test_the_spec_keeps_early_stopping_in_full_form_and_its_measurement_key():
    spec = _spec(early_stop="median")
    assert spec.to_dict()["early_stop"] == {
        "rule": "median",
        "min_epochs": 1,
        "reduction_factor": 3,
        "min_peers": 3,
        "stopped_reward": "rung",
    }
    assert spec.to_dict()["reuse_team_rewards"] is True
    # Neither the strategy nor early stopping changes how a cell is measured; a recipe does.
    assert spec.measurement_key() == _spec(strategy="ppo", early_stop=None).measurement_key()
    assert spec.measurement_key() != _spec(child={"epochs": EPOCHS, "batch_size": 64}).measurement_key()


def test_searches_from_before_the_cache_get_their_measurement_key(transactional_db):
    """Migration 0008 gives existing searches their key, so their cells are reused too."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from webapp.searches import models as m

    stored = _spec().to_dict()
    for key in ("early_stop", "reuse_team_rewards"):
        del stored[key]  # as specs were stored before
    executor = MigrationExecutor(connection)
    old = [("searches", "0007_strategy_checkpoint_parts")]
    executor.migrate(old)
    old_apps = executor.loader.project_state(old).apps
    Team, User = old_apps.get_model("accounts", "Team"), old_apps.get_model("auth", "User")
    Search = old_apps.get_model("searches", "Search")
    team, owner = Team.objects.create(name="t"), User.objects.create(username="u")
    old_search = Search.objects.create(team=team, owner=owner, name="old", spec=stored, children_total=4)
    Architecture, ChildRun = old_apps.get_model("searches", "Architecture"), old_apps.get_model("searches", "ChildRun")
    for index, (status, epochs, told) in enumerate(
        [("succeeded", [], True), ("failed", [], True), ("succeeded", [{"epoch": 1}] * 2, True), ("running", [], False)]
    ):
        arch = Architecture.objects.create(
            search=old_search, sample_index=index, genotype={}, canonical_hash="h", told=told
        )
        ChildRun.objects.create(architecture=arch, status=status, epochs=epochs)
    broken = Search.objects.create(team=team, owner=owner, name="odd", spec={}, children_total=4)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    migrated = m.Search.objects.get(pk=old_search.pk)
    assert migrated.measure_key == _spec().measurement_key()
    assert migrated.epochs_trained == EPOCHS + 0 + 2  # told children only
    assert m.Search.objects.get(pk=broken.pk).measure_key == ""


# -- review fixes ------------------------------------------------------------------------------
def test_a_search_whose_data_set_went_away_can_still_be_failed_and_cancelled(member):
    """The status event's rung table reads the stored spec without validating it again: a
    folder renamed under a running search must not make its failure (or cancel) fail too."""
    from webapp.live import events as live
    from webapp.searches import models as m
    from workers import advance

    search = submit(member)
    advance.advance(search.id)
    m.Search.objects.filter(pk=search.id).update(
        spec={**search.spec, "dataset": {**search.spec["dataset"], "name": "gone"}}
    )
    search.refresh_from_db()
    assert live.status(search)[1]["rungs"][0]["epoch"] == 1
    advance.advance(search.id)  # the spec no longer validates: the search fails, with the reason
    search.refresh_from_db()
    assert search.status == m.FAILED and "dataset.name" in search.error


def test_cancelling_removes_the_checkpoints_nobody_will_resume(
    member, settings, tmp_path, django_capture_on_commit_callbacks
):
    from webapp.searches import models as m
    from webapp.searches.services import transition
    from workers import advance, child_runs
    from workers.resources import checkpoint_path

    settings.NAS_RUNG_WAIT_SECONDS = 0
    settings.NAS_ARTIFACTS_ROOT = tmp_path
    search = submit(member, budget={"children": 3, "parallel": 3})
    advance.advance(search.id)
    runs = runs_by_index(search)
    child_runs.run_child(runs[1].id)  # waits: child 0 is queued
    assert m.ChildRun.objects.get(pk=runs[1].id).status == m.RUN_WAITING
    paths = [checkpoint_path("child", run.id) for run in runs.values()]
    for path in paths:  # as real children leave them (queued ones: requeued after waiting)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    transition(search, "cancel")
    with django_capture_on_commit_callbacks(execute=True):
        advance.advance(search.id)
    assert {run.status for run in runs_by_index(search).values()} == {m.RUN_CANCELLED}
    assert not any(path.exists() for path in paths)


def test_a_reused_child_is_told_the_rung_values_of_the_run_that_measured_it(member, settings):
    from webapp.searches import models as m
    from workers import advance

    settings.NAS_RUNG_WAIT_SECONDS = 0
    first = submit(member, budget={"children": 6, "parallel": 3})
    drive(first)
    completed = m.Architecture.objects.filter(search=first, runs__status=m.RUN_SUCCEEDED).first()
    values = [e["val_acc"] for e in completed.runs.get().epochs]
    told = advance._reused_fidelity(first.parsed_spec, [completed.id])[completed.id]
    assert (told.epochs, told.max_epochs, told.stopped) == (EPOCHS, EPOCHS, False)
    assert told.rungs == ((1, values[0]), (3, values[2]))


def test_the_api_counts_a_synthetic_childs_epochs_as_its_search_does(member, client):
    search = submit(member, early_stop=None, budget={"children": 3, "parallel": 3})
    drive(search)
    search.refresh_from_db()
    client.force_login(member[0])
    rows = client.get(f"/api/searches/{search.id}/architectures").json()["results"]
    assert [row["epochs_trained"] for row in rows] == [EPOCHS] * 3  # no per-epoch rows, trained in full
    assert search.epochs_trained == 3 * EPOCHS
