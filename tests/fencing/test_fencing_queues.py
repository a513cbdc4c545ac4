"""Celery tasks and RQ jobs: the token of the message reaches the fenced helpers, and with
``refuse_stale`` a message of an older term is not run once a newer one has run.

Real Celery worker (solo pool, Redis broker on a private queue) and a real RQ worker
(``SimpleWorker``, burst) on the Redis at 127.0.0.1:6379; messages are stamped the way
the leader beat / schedulers stamp them.
"""

from __future__ import annotations

import time
import uuid

import pytest

from celery_leader.errors import ConfigurationError, InvalidTokenError, StaleTokenError
from celery_leader.integrations.celery.beat import HEADER_ELECTION, HEADER_TOKEN

#: the RQ job functions live in tests/fencing/rq_jobs.py (RQ imports them by path)
from tests.fencing import rq_jobs
from tests.fencing.conftest import REDIS_URL, _need


@pytest.fixture
def redis_client():
    _need("redis")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys: list[str] = []
    yield client, keys
    for key in keys:
        client.delete(key, key + ":fence")
    client.close()


def _celery_app(queue: str):
    from celery import Celery

    from celery_leader.fencing.celery import FencedTask
    from celery_leader.fencing.redis import fenced_rpush

    app = Celery("fencing-tests", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    app.conf.update(task_default_queue=queue, result_expires=60, broker_connection_retry_on_startup=False,
                    worker_hijack_root_logger=False)

    @app.task(bind=True, base=FencedTask, refuse_stale=True, name="fencing.append")
    def append(self, key: str, value: str) -> int:
        import redis

        with redis.Redis.from_url(REDIS_URL) as client:
            return fenced_rpush(client, key, self.fencing_token, value)

    @app.task(bind=True, base=FencedTask, name="fencing.token")
    def token(self):
        return self.fencing_token

    return app, append, token


def test_celery_worker_refuses_a_stale_message_and_fences_its_write(redis_client):
    from celery.contrib.testing.worker import start_worker

    from celery_leader.fencing.celery import fence_key

    client, keys = redis_client
    queue = "fencing-" + uuid.uuid4().hex[:8]
    election = "beat-" + uuid.uuid4().hex[:8]
    log = "fence-test:" + uuid.uuid4().hex[:8]
    keys += [log, fence_key(election)]
    assert client.get(fence_key(election)) is None
    app, append, token = _celery_app(queue)

    def send(task, *args, tok=None):
        headers = {} if tok is None else {HEADER_TOKEN: tok, HEADER_ELECTION: election}
        return task.apply_async(args=args, headers=headers, queue=queue)

    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", queues=[queue],
                      shutdown_timeout=10):
        assert send(token, tok=7).get(timeout=30) == 7
        assert send(token).get(timeout=30) is None  # not sent by a leader beat
        assert send(append, log, "t5", tok=5).get(timeout=30) == 1
        assert send(append, log, "t6", tok=6).get(timeout=30) == 2
        stale = send(append, log, "t5 again", tok=5)  # a frozen beat's tick, delivered late
        with pytest.raises(Exception) as info:
            stale.get(timeout=30)
        assert type(info.value).__name__ == "StaleTokenError"
        assert stale.state == "FAILURE"
        no_token = send(append, log, "by hand")  # runs, but the fenced write refuses None
        with pytest.raises(Exception) as info:
            no_token.get(timeout=30)
        assert type(info.value).__name__ == "InvalidTokenError"
    assert [v.decode() for v in client.lrange(log, 0, -1)] == ["t5", "t6"]
    assert int(client.get(fence_key(election))) == 6


def test_celery_retry_keeps_the_token_of_the_beat_message(redis_client):
    """A FencedTask that retries (self.retry / autoretry_for) runs again under the same
    beat term: the retried message must still carry its token, or the fenced writes of the
    retry refuse None and refuse_stale is skipped."""
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    from celery_leader.fencing.celery import FencedTask, fence_key

    client, keys = redis_client
    queue = "fencing-" + uuid.uuid4().hex[:8]
    election = "beat-" + uuid.uuid4().hex[:8]
    keys.append(fence_key(election))
    app = Celery("fencing-retry", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    app.conf.update(task_default_queue=queue, result_expires=60, broker_connection_retry_on_startup=False,
                    worker_hijack_root_logger=False)

    @app.task(bind=True, base=FencedTask, refuse_stale=True, name="fencing.flaky", max_retries=2)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return self.fencing_token

    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", queues=[queue],
                      shutdown_timeout=10):
        result = flaky.apply_async(headers={HEADER_TOKEN: 7, HEADER_ELECTION: election}, queue=queue)
        assert result.get(timeout=30) == 7

def test_celery_refuse_stale_without_a_redis_names_the_setting():
    from celery import Celery

    from celery_leader.fencing.celery import FencedTask

    app = Celery("fencing-amqp", broker="amqp://guest:secret@127.0.0.1:5672//", set_as_current=False)

    @app.task(bind=True, base=FencedTask, refuse_stale=True)
    def job(self):
        return 1

    with pytest.raises(ConfigurationError, match="leader_fence_url") as info:
        job.apply(headers={HEADER_TOKEN: 3, HEADER_ELECTION: "x"}, throw=True)
    assert "secret" not in str(info.value)
    assert job.apply().get() == 1  # without a token there is nothing to check



@pytest.mark.parametrize("broker", [
    "redis://:hunter2@127.0.0.1:6379/3;redis://:hunter2@127.0.0.1:6380/3",  # failover list: which one keeps the mark?
    ["redis://:hunter2@127.0.0.1:6379/3", "redis://:hunter2@127.0.0.1:6380/3"],
])
def test_celery_refuse_stale_with_a_failover_broker_list_names_the_setting(broker):
    """A list of brokers names no single Redis for the mark: refuse, naming leader_fence_url."""
    from celery import Celery

    from celery_leader.fencing.celery import FencedTask

    app = Celery("fencing-list", broker="memory://", set_as_current=False)
    app.conf.broker_url = broker
    ran: list[int] = []

    @app.task(bind=True, base=FencedTask, refuse_stale=True)
    def job(self):
        ran.append(self.fencing_token)

    with pytest.raises(ConfigurationError, match="leader_fence_url") as info:
        job.apply(headers={HEADER_TOKEN: 3, HEADER_ELECTION: "x"}, throw=True)
    assert "hunter2" not in str(info.value)
    assert ran == []


@pytest.mark.parametrize("garbled", [7.9, True, "abc", -1])
def test_celery_garbled_token_header_is_refused_not_rounded(garbled):
    from celery import Celery

    from celery_leader.fencing.celery import FencedTask

    app = Celery("fencing-garbled", broker="memory://", set_as_current=False)
    app.conf.leader_fence_url = REDIS_URL
    ran: list[object] = []

    @app.task(bind=True, base=FencedTask, refuse_stale=True)
    def job(self):
        ran.append(self.fencing_token)

    with pytest.raises(InvalidTokenError, match="fencing token"):
        job.apply(headers={HEADER_TOKEN: garbled, HEADER_ELECTION: "garbled-" + uuid.uuid4().hex[:8]}, throw=True)
    assert ran == []

def test_celery_refuse_stale_fails_closed_when_its_redis_is_down(caplog):
    """Without the mark the stale check cannot be made: the task body does not run."""
    from celery import Celery

    from celery_leader.fencing.celery import FencedTask
    from tests.servers import free_port

    app = Celery("fencing-down", broker="memory://", set_as_current=False)
    app.conf.leader_fence_url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    ran: list[int] = []

    @app.task(bind=True, base=FencedTask, refuse_stale=True)
    def job(self):
        ran.append(self.fencing_token)

    with pytest.raises(Exception) as info:
        job.apply(headers={HEADER_TOKEN: 3, HEADER_ELECTION: "x"}, throw=True)
    assert "Connection" in type(info.value).__name__
    assert ran == []
    assert "not running it" in caplog.text and "hunter2" not in caplog.text


def test_rq_job_gets_its_token_and_stale_jobs_are_refused(redis_client):
    import rq

    from celery_leader.fencing.rq import fence_key
    from celery_leader.integrations.rq.config import stamp

    client, keys = redis_client
    election = "rq-" + uuid.uuid4().hex[:8]
    log = "fence-test:" + uuid.uuid4().hex[:8]
    keys += [log, fence_key(election)]
    assert client.get(fence_key(election)) is None
    queue = rq.Queue("fencing-" + uuid.uuid4().hex[:8], connection=client)

    class Term:
        name = election
        identity = "scheduler-a"

        def __init__(self, token):
            self.token = token

    jobs = [
        queue.enqueue(rq_jobs.append, log, "t5", meta=stamp(None, Term(5), time.time())),
        queue.enqueue(rq_jobs.append, log, "t6", meta=stamp(None, Term(6), time.time())),
        queue.enqueue(rq_jobs.append, log, "t5 late", meta=stamp(None, Term(5), time.time())),
        queue.enqueue(rq_jobs.append, log, "by hand"),
        queue.enqueue(rq_jobs.token_of),
        queue.enqueue(rq_jobs.token_of, meta=stamp(None, Term(9), time.time())),
    ]
    worker = rq.SimpleWorker([queue], connection=client)
    worker.work(burst=True)
    for job in jobs:
        job.refresh()
    states = [job.get_status() for job in jobs]
    assert states == ["finished", "finished", "failed", "failed", "finished", "finished"], states
    assert "StaleTokenError" in jobs[2].latest_result().exc_string
    assert "InvalidTokenError" in jobs[3].latest_result().exc_string
    assert [jobs[4].return_value(), jobs[5].return_value()] == [None, 9]
    assert [v.decode() for v in client.lrange(log, 0, -1)] == ["t5", "t6"]
    assert int(client.get(fence_key(election))) == 6  # token_of does not refuse_stale: no mark
    queue.delete(delete_jobs=True)



def test_rq_job_with_a_garbled_token_is_refused_not_rounded(redis_client):
    """job.meta altered or written by someone else: 7.9, True, "abc", -1 are no tokens (none rounds to 7 or 1)."""
    import rq

    from celery_leader.fencing.rq import fence_key
    from celery_leader.integrations.rq.config import META_ELECTION, META_TOKEN

    client, keys = redis_client
    election = "rq-" + uuid.uuid4().hex[:8]
    log = "fence-test:" + uuid.uuid4().hex[:8]
    keys += [log, fence_key(election)]
    queue = rq.Queue("fencing-" + uuid.uuid4().hex[:8], connection=client)
    garbled = [7.9, True, "abc", -1, "1e3", [5]]
    jobs = [queue.enqueue(rq_jobs.append, log, repr(bad), meta={META_TOKEN: bad, META_ELECTION: election})
            for bad in garbled]
    jobs.append(queue.enqueue(rq_jobs.token_of, meta={META_TOKEN: 7.9, META_ELECTION: election}))
    jobs.append(queue.enqueue(rq_jobs.token_of, meta={META_TOKEN: "8", META_ELECTION: election}))  # decimal text
    worker = rq.SimpleWorker([queue], connection=client)
    worker.work(burst=True)
    for job in jobs:
        job.refresh()
    assert [job.get_status() for job in jobs[:-1]] == ["failed"] * (len(garbled) + 1)
    for job in jobs[:-1]:
        assert "InvalidTokenError" in job.latest_result().exc_string
    assert jobs[-1].return_value() == 8
    assert client.lrange(log, 0, -1) == []
    assert client.get(fence_key(election)) is None
    queue.delete(delete_jobs=True)

def test_errors_are_exported():
    assert issubclass(InvalidTokenError, ValueError) and issubclass(StaleTokenError, Exception)
