"""webapp.dispatch: one set of task names and queues, one send with one retry policy, on
the real Redis broker."""

from __future__ import annotations

import pytest
from django.conf import settings

from webapp import dispatch


def test_every_task_name_is_a_task_the_workers_define_and_routes_agree():
    import workers.tasks  # noqa: F401 - registers the tasks on the app

    names = {
        dispatch.TASK_ADVANCE,
        dispatch.TASK_TRAIN_CHILD,
        dispatch.TASK_TRAIN_JOB,
        dispatch.TASK_TRAIN_SELECTION,
        dispatch.TASK_REAP,
    }
    assert names <= set(dispatch.app.tasks)
    routes = settings.CELERY_TASK_ROUTES
    assert routes == {
        dispatch.TASK_TRAIN_CHILD: {"queue": dispatch.QUEUE_GPU},
        dispatch.TASK_TRAIN_JOB: {"queue": dispatch.QUEUE_GPU},
        dispatch.TASK_TRAIN_SELECTION: {"queue": dispatch.QUEUE_GPU},
    }
    assert settings.CELERY_TASK_DEFAULT_QUEUE == dispatch.QUEUE_CONTROLLER
    assert {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()} == {dispatch.TASK_REAP}


@pytest.fixture
def broker():
    """The test Redis, emptied, with the queues declared."""
    import redis

    redis.Redis.from_url(dispatch.app.conf.broker_url).flushdb()
    dispatch.ensure_queues()
    yield dispatch.app.conf.broker_url
    redis.Redis.from_url(dispatch.app.conf.broker_url).flushdb()


def test_send_puts_one_message_on_the_routed_queue(broker):
    assert dispatch.queue_length(dispatch.QUEUE_GPU) == 0
    assert dispatch.send(dispatch.TASK_TRAIN_CHILD, 41)
    assert dispatch.send(dispatch.TASK_ADVANCE, 7)
    assert dispatch.queue_length(dispatch.QUEUE_GPU) == 1
    assert dispatch.queue_length(dispatch.QUEUE_CONTROLLER) == 1


def test_send_repairs_lost_bindings_after_redis_was_emptied(broker):
    import redis

    redis.Redis.from_url(broker).flushdb()  # bindings gone: a plain publish fails ("Table empty")
    assert dispatch.send(dispatch.TASK_TRAIN_CHILD, 1)
    assert dispatch.queue_length(dispatch.QUEUE_GPU) == 1


def test_a_broker_that_is_down_is_logged_not_raised(broker, caplog):
    """The rows are the truth: a send that fails twice says so and returns False, and the
    caller's work goes on (the reaper dispatches it again later)."""
    from tests.celery_worker import use_broker

    use_broker("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        with pytest.raises(Exception):  # noqa: B017 - whichever connection error kombu raises
            dispatch.ping_broker(timeout=0.5)
        assert dispatch.send(dispatch.TASK_ADVANCE, 3) is False
    finally:
        use_broker(broker)
    assert "could not publish workers.tasks.advance_search(3,)" in caplog.text
    assert dispatch.queue_length(dispatch.QUEUE_CONTROLLER) == 0


def test_request_advance_coalesces_while_one_is_waiting(broker):
    dispatch.request_advance(5)
    dispatch.request_advance(5)
    dispatch.request_advance(5)
    assert dispatch.queue_length(dispatch.QUEUE_CONTROLLER) == 1
    dispatch.clear_advance_request(5)  # the advance started reading: the next result asks again
    dispatch.request_advance(5)
    assert dispatch.queue_length(dispatch.QUEUE_CONTROLLER) == 2
