"""How fast does the distributed search loop turn? A synthetic-objective search through
the real broker (Redis), the real database (PostgreSQL) and real `celery worker`
processes: one controller-queue worker and `--gpu-workers` gpu-queue workers.

    .venv/bin/python bench/orchestration.py                   # 20,000 children, random
    .venv/bin/python bench/orchestration.py --children 2000 --strategy ppo

The database is its own (`nasbench`, created and migrated when missing; or DATABASE_URL)
and Redis database 14 (flushed). Reports children per second, the per-child overhead
(wall time x worker processes / children, so it includes everything a child costs),
the wall time and the database size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare_database(url: str | None) -> str:
    """Create and migrate `nasbench` unless a DATABASE_URL is given; return the URL."""
    import psycopg

    if url is None:
        url = "postgres://postgres@127.0.0.1:5432/nasbench"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'nasbench'").fetchone():
                conn.execute("CREATE DATABASE nasbench")
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "webapp.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=20000)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--gpu-workers", type=int, default=2, help="gpu-queue worker processes")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()

    url = prepare_database(os.environ.get("DATABASE_URL"))
    os.environ.update(DATABASE_URL=url, REDIS_URL=args.redis, DJANGO_SETTINGS_MODULE="webapp.settings")
    os.environ.setdefault("NAS_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection

    from tests.celery_worker import WorkerSet, flush_redis, worker_env
    from webapp import dispatch
    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.searches import models as m
    from webapp.searches.services import submit_search

    flush_redis(args.redis)
    user, _ = User.objects.get_or_create(username="bench")
    m.Search.objects.filter(owner=user).delete()
    team, _ = Team.objects.get_or_create(name="bench")
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": ROLE_OWNER})
    env = worker_env(
        connection.settings_dict["NAME"],
        args.redis,
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="webapp.settings",
        NAS_LOG_LEVEL=os.environ["NAS_LOG_LEVEL"],
    )
    with WorkerSet(env) as workers:
        started = [workers.start("controller", wait=False)]
        started += [workers.start("gpu", wait=False) for _ in range(args.gpu_workers)]
        for worker in started:
            worker.wait_ready()
        dispatch.ensure_queues()
        spec = {
            "dataset": "digits",
            "objective": "synthetic",
            "strategy": args.strategy,
            "budget": {"children": args.children, "parallel": args.parallel},
        }
        t0 = time.perf_counter()
        search = submit_search(user=user, team=team, name="bench", spec_data=spec)
        last = -1
        while not search.is_done:
            time.sleep(1.0)
            search.refresh_from_db()
            elapsed = time.perf_counter() - t0
            if search.children_done // 1000 != last // 1000:
                print(f"  {elapsed:7.1f} s  {search.children_done:6d} children", flush=True)
                last = search.children_done
            if elapsed > args.timeout:
                print(workers.logs())
                raise SystemExit(f"timed out: {search.to_dict()}")
        wall = time.perf_counter() - t0
    if search.status != m.FINISHED:
        raise SystemExit(f"search ended {search.status}: {search.error}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        size = cursor.fetchone()[0]
    processes = 1 + args.gpu_workers
    print(
        f"children          {search.children_done} ({search.children_reused} reused, {search.children_failed} failed)"
    )
    print(f"strategy          {args.strategy}, parallel {args.parallel}, 1 controller + {args.gpu_workers} gpu workers")
    print(f"wall time         {wall:.1f} s")
    print(f"children/s        {search.children_done / wall:.1f}")
    print(
        f"per-child         {1000 * wall / search.children_done:.2f} ms wall, "
        f"{1000 * wall * processes / search.children_done:.2f} ms of worker-process time"
    )
    print(f"best reward       {search.best_reward:.4f}")
    print(f"database size     {size / 2**20:.1f} MiB ({connection.settings_dict['NAME']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
