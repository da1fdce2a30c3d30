"""Live events over Channels websockets (webapp.live), against the real Redis channel layer
and the full ASGI stack (session cookie, origin check, URL routing).

The tests are sync (no pytest-asyncio): each runs its async part with async_to_sync, so the
consumer's database calls run on the test's thread and see its rows (transaction=True).
"""

from __future__ import annotations

import os
import zlib

import pytest
import redis
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import transaction
from django.test import Client

from webapp.live import events as live
from webapp.live.models import SearchEvent
from webapp.searches import models as m

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 5


def live_redis_url() -> str:
    """A Redis database of its own (1..8, by test database name), apart from the orchestration
    tests' (10..15) and the default (0)."""
    name = settings.DATABASES["default"]["NAME"]
    return os.environ.get("NAS_TEST_LIVE_REDIS_URL", f"redis://127.0.0.1:6379/{1 + zlib.crc32(name.encode()) % 8}")


@pytest.fixture
def layer(settings):
    url = live_redis_url()
    redis.Redis.from_url(url).flushdb()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": "nasnet-live-test"},
        }
    }
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def search(personas):
    return m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="live", spec={}, status=m.RUNNING, children_total=20
    )


def application():
    from webapp.asgi import application

    return application


def login(user=None) -> list[tuple[bytes, bytes]]:
    """Headers of a browser logged in as `user` (None: anonymous), with the session cookie."""
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if user is not None:
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return headers


def communicator(search_id: int, headers) -> WebsocketCommunicator:
    """A websocket client through the whole stack (session auth, origin check, routing)."""
    return WebsocketCommunicator(application(), f"/ws/searches/{search_id}/", headers=headers)


apublish = sync_to_async(live.publish)

# The size rule of webapp.live.events.model_dict, written out again (not imported) so that a
# change to either side fails here: an event carries the row's to_dict() less these immutable
# bulky fields, its `epochs` list cut to the newest entry, and nothing else changed.
OMITTED = {m.Search: {"spec"}, m.Architecture: {"genotype"}, m.TrainingJob: {"genotype", "dataset"}}


def event_shape(row) -> dict:
    data = {k: v for k, v in row.to_dict().items() if k not in OMITTED.get(type(row), set())}
    if "epochs" in data:
        data["epochs"] = data["epochs"][-1:]
    return data


def progress(i: int) -> tuple[str, dict]:
    """A child.progress event of an unsaved run (payloads are JSON: no row is needed)."""
    run = m.ChildRun(id=1, architecture_id=1, status=m.RUN_RUNNING, attempt=1, worker="w")
    run.epochs = [{"epoch": i, "epochs": 10, "val_acc": 0.5, "train_loss": 1.0}]
    return live.progress(run, i)


def test_a_member_receives_a_published_event(layer, personas, search):
    headers = login(personas.member)

    @async_to_sync
    async def scenario():
        ws = communicator(search.id, headers)
        connected, _ = await ws.connect(timeout=TIMEOUT)
        assert connected
        await apublish(search.id, *live.status(search))
        event = await ws.receive_json_from(timeout=TIMEOUT)
        assert event["seq"] == 1 and event["type"] == "search.status" and event["search_id"] == search.id
        assert event["search"]["status"] == m.RUNNING and event["search"]["children_total"] == 20
        assert event["search"]["id"] == search.id and event["search"]["owner"] == personas.owner.username
        await ws.disconnect()

    scenario()


@pytest.mark.parametrize("who", ["owner", "staff"])
def test_the_owner_and_staff_may_connect(layer, personas, search, who):
    headers = login(getattr(personas, who))

    @async_to_sync
    async def scenario():
        ws = communicator(search.id, headers)
        connected, _ = await ws.connect(timeout=TIMEOUT)
        assert connected
        await ws.disconnect()

    scenario()


@pytest.mark.parametrize("who", ["outsider", "anonymous", "missing search"])
def test_everyone_else_is_refused(layer, personas, search, who):
    user = {"outsider": personas.outsider, "anonymous": None, "missing search": personas.member}[who]
    search_id = search.id + 1000 if who == "missing search" else search.id
    headers = login(user)

    @async_to_sync
    async def scenario():
        ws = communicator(search_id, headers)
        connected, _ = await ws.connect(timeout=TIMEOUT)
        assert not connected
        await ws.disconnect()

    scenario()


def test_a_foreign_origin_is_refused(layer, personas, search):
    headers = login(personas.member)

    @async_to_sync
    async def scenario():
        ws = communicator(search.id, headers)
        ws.scope["headers"] = [(k, b"http://evil.example" if k == b"origin" else v) for k, v in ws.scope["headers"]]
        connected, _ = await ws.connect(timeout=TIMEOUT)
        assert not connected

    scenario()


def test_catch_up_after_a_reconnect_sends_exactly_the_missed_events(layer, personas, search):
    headers = login(personas.member)

    @async_to_sync
    async def scenario():
        ws = communicator(search.id, headers)
        assert (await ws.connect(timeout=TIMEOUT))[0]
        await ws.send_json_to({"type": "catch_up", "after": 0})
        for i in range(1, 6):
            await apublish(search.id, *progress(i))
        seen = [(await ws.receive_json_from(timeout=TIMEOUT))["seq"] for _ in range(2)]
        assert seen == [1, 2]
        await ws.disconnect()

        for i in range(6, 9):
            await apublish(search.id, *progress(i))
        ws = communicator(search.id, headers)
        assert (await ws.connect(timeout=TIMEOUT))[0]
        await ws.send_json_to({"type": "catch_up", "after": 2})
        got = [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(6)]
        assert [e["seq"] for e in got] == [3, 4, 5, 6, 7, 8]
        assert [e["sample_index"] for e in got] == [3, 4, 5, 6, 7, 8]
        # then the live ones, once each
        await apublish(search.id, *progress(9))
        assert (await ws.receive_json_from(timeout=TIMEOUT))["seq"] == 9
        assert await ws.receive_nothing(timeout=0.3)
        await ws.disconnect()

    scenario()


def test_live_events_that_overtake_one_are_preceded_by_the_missing_ones(layer, personas, search):
    """Two processes publishing at once: seq 2's message may reach the group before seq 1's."""
    headers = login(personas.member)

    @async_to_sync
    async def scenario():
        ws = communicator(search.id, headers)
        assert (await ws.connect(timeout=TIMEOUT))[0]
        await ws.send_json_to({"type": "catch_up", "after": 0})
        await ws.receive_nothing(timeout=0.2)  # the (empty) catch-up is done

        def store_two_send_second():
            with transaction.atomic():
                first = live.publish_many(search.id, [progress(1)])
            live.publish_many(search.id, [progress(2)])  # sent on commit
            return first

        first = await sync_to_async(store_two_send_second)()
        got = [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(2)]
        assert [e["seq"] for e in got] == [1, 2]
        await sync_to_async(live.send)(search.id, first)  # the late message of seq 1: dropped
        assert await ws.receive_nothing(timeout=0.3)
        await ws.disconnect()

    scenario()


def test_sequence_numbers_are_consecutive_per_search(layer, personas, search):
    other = m.Search.objects.create(
        team=personas.beta, owner=personas.outsider, name="other", spec={}, children_total=5
    )
    live.publish(search.id, *live.status(search))
    live.publish(other.id, *live.status(other))
    messages = live.publish_many(search.id, [progress(i) for i in range(3)])
    assert [e["seq"] for e in messages] == [2, 3, 4]
    with pytest.raises(RuntimeError), transaction.atomic():
        live.publish(search.id, *progress(9))
        raise RuntimeError("rolled back: the number is given back")
    live.publish(other.id, *progress(1))
    live.publish(search.id, *progress(5))
    seqs = lambda s: list(SearchEvent.objects.filter(search=s).order_by("seq").values_list("seq", flat=True))  # noqa: E731
    assert seqs(search) == [1, 2, 3, 4, 5]
    assert seqs(other) == [1, 2]


def test_a_broken_channel_layer_never_breaks_a_publish(settings, personas, search, monkeypatch):
    warnings = []
    monkeypatch.setattr(live.log, "warning", lambda *args, **kwargs: warnings.append(args))
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}
    }
    messages = live.publish(search.id, *live.status(search))
    assert messages[0]["seq"] == 1
    assert SearchEvent.objects.filter(search=search).count() == 1
    assert warnings and "not sent" in warnings[0][0]  # the layer was tried, and failed


def test_non_finite_numbers_are_stored_as_null(personas, search, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    run = m.ChildRun(id=1, architecture_id=1, status=m.RUN_RUNNING, reward=float("inf"))
    run.epochs = [{"epoch": 1, "epochs": 2, "val_acc": 0.1, "train_loss": float("nan")}]
    live.publish(search.id, *live.progress(run, 0))
    stored = SearchEvent.objects.get(search=search).payload["run"]
    assert stored["epochs"][0]["train_loss"] is None and stored["reward"] is None


def test_the_advance_and_the_child_run_publish_their_events(layer, personas, monkeypatch):
    """In-process advance -> claim -> finish -> advance (tasks recorded, not sent)."""
    from webapp import dispatch
    from webapp.searches import services
    from workers import advance, child_runs

    monkeypatch.setattr(dispatch, "send", lambda *args: None)
    monkeypatch.setattr(dispatch, "request_advance", lambda search_id: None)
    budget = {"children": 2, "parallel": 2}
    spec = {"dataset": "digits", "objective": "synthetic", "strategy": "random", "budget": budget}
    search = services.submit_search(user=personas.owner, team=personas.alpha, name="s", spec_data=spec)
    advance.advance(search.id)
    for run in m.ChildRun.objects.filter(architecture__search=search).order_by("id"):
        child_runs.run_child(run.id)
    advance.advance(search.id)
    events = list(SearchEvent.objects.filter(search=search).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    types = [e.type for e in events]
    assert types[:3] == ["architecture.sampled", "architecture.sampled", "search.status"]
    assert types[3:5] == ["child.finished", "child.finished"]
    assert types[-1] == "search.status" and events[-1].payload["search"]["status"] == m.FINISHED
    assert events[-1].payload["search"]["children_done"] == 2
    search.refresh_from_db()
    assert events[-1].payload["search"] == event_shape(search)  # the row as the last advance left it
    finished = events[3].payload["run"]
    assert finished["status"] == m.RUN_SUCCEEDED and 0 <= finished["reward"] <= 1 and finished["wall_time"] >= 0
    assert finished == event_shape(m.ChildRun.objects.get(pk=finished["id"]))  # the row as finish() wrote it
    assert events[3].payload["sample_index"] == m.Architecture.objects.get(pk=finished["architecture"]).sample_index
    sampled = events[0].payload
    arch = m.Architecture.objects.get(pk=sampled["architecture"]["id"])
    assert sampled["architecture"]["canonical_hash"] == arch.canonical_hash
    assert sampled["url"] == f"/architectures/{arch.id}" and sampled["svg"] == f"/architectures/{arch.id}/cells.svg"


def test_controller_updates_carry_the_policy_for_the_heatmap(layer, personas, monkeypatch):
    """A PPO search in-process: each controller.update has one probability row per decision."""
    from nas_engine.space import SearchSpace
    from webapp import dispatch
    from webapp.searches import services
    from workers import advance, child_runs

    monkeypatch.setattr(dispatch, "send", lambda *args: None)
    monkeypatch.setattr(dispatch, "request_advance", lambda search_id: None)
    spec = {
        "dataset": "digits",
        "objective": "synthetic",
        "strategy": {"name": "ppo", "settings": {"batch_size": 2}},
        "budget": {"children": 4, "parallel": 2},
    }
    search = services.submit_search(user=personas.owner, team=personas.alpha, name="ppo", spec_data=spec)
    for _ in range(3):
        advance.advance(search.id)
        for run in m.ChildRun.objects.filter(architecture__search=search, status=m.RUN_QUEUED):
            child_runs.run_child(run.id)
    updates = [e.payload for e in SearchEvent.objects.filter(search=search, type="controller.update").order_by("seq")]
    assert len(updates) == 2  # 4 children, minibatches of 2
    sizes = SearchSpace().decision_sizes()
    for update in updates:
        assert [len(row) for row in update["policy"]] == list(sizes)
        assert all(abs(sum(row) - 1) < 1e-3 for row in update["policy"])
        assert update["entropy"] > 0 and update["step"] >= 1


def test_a_training_job_publishes_its_progress_to_the_search(layer, personas, settings, tmp_path):
    from workers import training_jobs

    settings.NAS_ARTIFACTS_ROOT = tmp_path
    search = m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="s", spec={}, status=m.FINISHED, children_total=1
    )
    from nas_engine.cells import NASNET_A

    arch = m.Architecture.objects.create(search=search, genotype=NASNET_A.to_dict(), canonical_hash="x", sample_index=0)
    recipe = {"epochs": 1, "batch_size": 64, "repeats": 1, "filters": 4, "seed": 0}
    job = m.TrainingJob.objects.create(
        team=personas.alpha,
        owner=personas.owner,
        architecture=arch,
        name="transfer",
        genotype=arch.genotype,
        dataset={"name": "digits", "subset_per_class": 10, "val_size": 50},
        recipe=recipe,
    )
    training_jobs.run_training_job(job.id)
    job.refresh_from_db()
    events = [e.payload["job"] for e in SearchEvent.objects.filter(search=search, type="job.progress").order_by("seq")]
    assert events[0]["status"] == m.RUN_RUNNING and events[0]["id"] == job.id and events[0]["epochs"] == []
    assert events[-1]["status"] == job.status == m.RUN_SUCCEEDED
    assert events[-1]["architecture"] == arch.id and events[-1]["reward"] == job.reward
    assert events[-1] == event_shape(job) and events[-1]["has_bundle"] is True
    assert any(e["epochs"] and e["epochs"][-1]["epoch"] == 1 and e["epochs"][-1]["epochs"] == 1 for e in events)


def test_a_member_who_leaves_the_team_is_disconnected(layer, personas, search, monkeypatch):
    from webapp.accounts.models import Membership
    from webapp.live.consumers import SearchEventsConsumer

    headers = login(personas.member)
    monkeypatch.setattr(SearchEventsConsumer, "RECHECK_SECONDS", 0.0)  # check on every event

    @async_to_sync
    async def scenario():
        ws = communicator(search.id, headers)
        connected, _ = await ws.connect(timeout=TIMEOUT)
        assert connected
        await apublish(search.id, *progress(1))
        assert (await ws.receive_json_from(timeout=TIMEOUT))["seq"] == 1  # still a member
        await sync_to_async(Membership.objects.filter(user=personas.member, team=personas.alpha).delete)()
        await apublish(search.id, *progress(2))
        closed = await ws.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": 4403}

    scenario()


# -- the payloads are the models' to_dict() ------------------------------------------------------
def epoch_list(n: int) -> list[dict]:
    return [
        {"epoch": e, "epochs": n, "train_loss": 2.0 / e, "train_acc": 0.1 * e, "val_acc": 0.1 * e, "lr": 0.05}
        for e in range(1, n + 1)
    ]


def test_every_event_carries_its_rows_to_dict_less_the_documented_omissions(personas, search, settings):
    """One rule for every model event (webapp.live.events.model_dict): the stored payload's
    model dict is the row's to_dict() (the API's shape) less the omissions its docstring
    names, with `epochs` cut to the newest; the shapes cannot drift apart."""
    from django.utils import timezone

    from nas_engine.cells import NASNET_A

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert {model: set(fields) for model, fields in live.OMITTED.items()} == OMITTED  # the rule written out above
    for fields in live.OMITTED.values():
        assert all(f"`{field}`" in live.model_dict.__doc__ for field in fields)
    now = timezone.now()
    arch = m.Architecture.objects.create(
        search=search, sample_index=4, genotype=NASNET_A.to_dict(), canonical_hash="h", params=123, mult_adds=456
    )
    run = m.ChildRun.objects.create(
        architecture=arch, status=m.RUN_SUCCEEDED, attempt=2, worker="gpu0@box:1", epochs=epoch_list(3),
        reward=0.3, wall_time=12.5, started_at=now, finished_at=now,
    )  # fmt: skip
    job = m.TrainingJob.objects.create(
        team=personas.alpha, owner=personas.owner, architecture=arch, name="transfer", genotype=NASNET_A.to_dict(),
        dataset={"name": "digits"}, recipe={"epochs": 5}, status=m.RUN_RUNNING, epochs=epoch_list(5),
        bundle_path="jobs/1",
    )  # fmt: skip
    m.Search.objects.filter(pk=search.pk).update(
        spec={"strategy": "ppo"}, best_reward=0.3, best_architecture=arch, children_sampled=5, started_at=now
    )
    rows = {
        "search": m.Search.objects.select_related("owner").get(pk=search.pk),
        "arch": m.Architecture.objects.get(pk=arch.pk),
        "run": m.ChildRun.objects.get(pk=run.pk),
        "job": m.TrainingJob.objects.select_related("owner").get(pk=job.pk),
    }
    live.publish_many(
        search.id,
        [
            live.sampled(rows["arch"]),
            live.progress(rows["run"], arch.sample_index),
            live.finished(rows["run"], arch.sample_index),
            live.status(rows["search"]),
            live.job_progress(rows["job"]),
        ],
    )
    stored = {e.type: e.payload for e in SearchEvent.objects.filter(search=search)}
    assert stored[live.SAMPLED] == {
        "architecture": event_shape(rows["arch"]),
        "url": f"/architectures/{arch.id}",
        "svg": f"/architectures/{arch.id}/cells.svg",
        "reused_from": None,  # trained, not reused (test_rungs: a reused child's origin)
    }
    assert stored[live.PROGRESS] == {"run": event_shape(rows["run"]), "sample_index": 4}
    assert stored[live.FINISHED] == {"run": event_shape(rows["run"]), "sample_index": 4}
    assert stored[live.STATUS] == {"search": event_shape(rows["search"])}
    assert stored[live.JOB] == {"job": event_shape(rows["job"])}
    # what the cuts keep: every other key, the newest epoch, the recipe
    assert stored[live.FINISHED]["run"]["epochs"] == [epoch_list(3)[-1]]
    assert stored[live.JOB]["job"]["epochs"] == [epoch_list(5)[-1]] and stored[live.JOB]["job"]["recipe"] == {
        "epochs": 5
    }
    assert set(stored[live.JOB]["job"]) == set(job.to_dict()) - {"genotype", "dataset"}
    assert set(stored[live.STATUS]["search"]) == set(search.to_dict()) - {"spec"}
    message = SearchEvent.objects.get(search=search, type=live.STATUS).message()
    assert message["search_id"] == search.id and message["search"]["id"] == search.id  # no collision


def test_a_reused_child_is_published_as_its_row_was_written(personas, settings, monkeypatch):
    """Reused runs are written in bulk by the advance: their child.finished names the row."""
    from webapp import dispatch
    from webapp.searches import services
    from workers import advance

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setattr(dispatch, "send", lambda *args: None)
    spec = {
        "dataset": "digits",
        "objective": "synthetic",
        "strategy": "random",
        "budget": {"children": 2, "parallel": 2},
    }
    search = services.submit_search(user=personas.owner, team=personas.alpha, name="s", spec_data=spec)
    first = search.parsed_spec.make_strategy().ask(1)[0]  # what the advance's strategy proposes first
    genotype = first.genotype
    m.Architecture.objects.create(  # an earlier child of the same genotype, with its reward
        search=search, sample_index=99, genotype=genotype.to_dict(), canonical_hash=genotype.canonical_hash(),
        reward=0.75, told=True,
    )  # fmt: skip
    advance.advance(search.id)
    finished = [e.payload for e in SearchEvent.objects.filter(search=search, type=live.FINISHED)]
    assert len(finished) == 1 and finished[0]["sample_index"] == first.id
    row = m.ChildRun.objects.get(pk=finished[0]["run"]["id"])
    assert row.status == m.RUN_REUSED and row.reward == 0.75
    assert finished[0]["run"] == event_shape(row)


def test_the_advance_reads_the_owner_with_the_locked_search(personas, search):
    """The status event names the owner: the advance's one locking read brings it along."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from workers.advance import _locked

    with transaction.atomic():
        row = _locked(m.Search.objects).get(pk=search.pk)
        with CaptureQueriesContext(connection) as queries:
            live.status(row)
    assert len(queries) == 0


def test_early_stopping_reaches_the_page_through_the_status_and_finished_events(personas, search, settings):
    """What search_live.js reads for issue #13: the counters in search.status (the tiles), and a
    stopped child's status, rung value and rung epoch in child.finished (its row, its point)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    m.Search.objects.filter(pk=search.pk).update(children_stopped=2, epochs_trained=40, epochs_saved=36)
    arch = m.Architecture.objects.create(search=search, sample_index=3, genotype={}, canonical_hash="h")
    run = m.ChildRun.objects.create(
        architecture=arch, status=m.RUN_STOPPED, attempt=1, reward=0.41, epochs=epoch_list(3)
    )
    row = m.Search.objects.select_related("owner").get(pk=search.pk)
    live.publish_many(search.id, [live.status(row), live.finished(run, 3)])
    stored = {e.type: e.payload for e in SearchEvent.objects.filter(search=search)}
    counters = {k: stored[live.STATUS]["search"][k] for k in ("children_stopped", "epochs_trained", "epochs_saved")}
    assert counters == {"children_stopped": 2, "epochs_trained": 40, "epochs_saved": 36}
    finished = stored[live.FINISHED]["run"]
    assert (finished["status"], finished["reward"], finished["epochs"][-1]["epoch"]) == ("stopped", 0.41, 3)
