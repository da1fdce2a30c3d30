"""Real `celery worker` subprocesses for the orchestration tests and the benchmark.

with WorkerSet(env) as workers:
    workers.start("controller")
    gpu = workers.start("gpu")
    gpu.kill()                    # SIGKILL, as a crashed machine would
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0


def worker_env(database_name: str, redis_url: str, **extra: str) -> dict:
    """The environment a worker needs to see the test database and the test broker."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database_name}",
        REDIS_URL=redis_url,
        DJANGO_SETTINGS_MODULE="webapp.test_settings",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def use_broker(url: str) -> None:
    """Point this process's Celery app at `url`, dropping connections made before."""
    from webapp.celery import app

    app.conf.broker_url = url
    app._pool = None  # the connections of the former URL are left to the garbage collector
    app.amqp._producer_pool = None
    app.set_current()
    app.set_default()


def flush_redis(url: str) -> None:
    redis.Redis.from_url(url).flushdb()


class Worker:
    def __init__(self, queue: str, env: dict, name: str, extra: list[str], loglevel: str = "INFO"):
        self.queue, self.name = queue, name
        self.log = Path(tempfile.mkstemp(prefix=f"celery-{name}-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-n", f"{name}@%h"]
        cmd += ["--pool=solo", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle", *extra]
        self._file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._file, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.output()[-3000:]}")
            if b" ready." in self.log.read_bytes():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready after {timeout}s: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, the task in flight is lost with the process."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._file.close()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown: the task in flight finishes), SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._file.close()


class WorkerSet:
    """Started workers, all stopped (killed) on exit whatever happened."""

    def __init__(self, env: dict, loglevel: str = "INFO"):
        self.env, self.loglevel = env, loglevel
        self.workers: list[Worker] = []
        self.count = 0

    def start(self, queue: str, *extra: str, wait: bool = True) -> Worker:
        self.count += 1
        worker = Worker(queue, self.env, f"{queue}{self.count}", list(extra), self.loglevel)
        self.workers.append(worker)
        return worker.wait_ready() if wait else worker

    def stop_all(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            worker.stop(timeout)

    def logs(self) -> str:
        return "\n".join(f"===== {w.name} =====\n{w.output()[-4000:]}" for w in self.workers)

    def __enter__(self) -> WorkerSet:
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            worker.kill()
