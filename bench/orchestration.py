"""How fast does the distributed search loop turn? A synthetic-objective search through
the real broker (Redis), the real database (PostgreSQL) and real `celery worker`
processes: one controller-queue worker and `--gpu-workers` gpu-queue workers.

    .venv/bin/python bench/orchestration.py                   # 20,000 children, random
    .venv/bin/python bench/orchestration.py --children 2000 --strategy ppo
    .venv/bin/python bench/orchestration.py --children 2000 --baseline e87668c   # old code, then this

The database is its own (`nasbench`, created afresh and migrated; or DATABASE_URL)
and Redis database 14 (flushed). Reports children per second, the CPU seconds the worker
processes spent per child (controller and gpu-queue workers, read from /proc), the CPU the
PostgreSQL processes spent, the wall time, and the size of the database and of its
searches table.

`--baseline REV` measures the code of a git revision first (a worktree under /tmp, its own
database `nasbench_<rev>`), then this checkout, in one run, and prints the ratios: the
machine's load is shared by both. `--code DIR` measures the code in DIR (what --baseline
runs); `--json` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE  # the code measured: this checkout, or --code DIR


def prepare_database(url: str | None, name: str = "nasbench") -> str:
    """Create `name` afresh and migrate it, unless a DATABASE_URL is given; return the URL.
    Afresh: the table sizes reported are this run's, not earlier runs' dead rows."""
    import psycopg

    if url is None:
        url = f"postgres://postgres@127.0.0.1:5432/{name}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "webapp.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    return url


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (/proc, Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, 0.0)
        todo += children.get(current, [])
    return total


def postgres_cpu_seconds() -> float:
    """CPU seconds of every postgres process on this machine (its backends do the queries)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=20000)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--gpu-workers", type=int, default=2, help="gpu-queue worker processes")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--baseline", metavar="REV", help="measure this git revision first, then this checkout")
    parser.add_argument("--code", type=Path, help="measure the code in this directory (a checkout)")
    parser.add_argument("--database", default="nasbench", help="database name (created and migrated)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.baseline:
        return compare(args)
    global ROOT
    ROOT = (args.code or HERE).resolve()
    sys.path.insert(0, str(ROOT))
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


def compare(args) -> int:
    """The baseline revision's code, then this checkout's, each in a subprocess of this script."""
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=HERE, check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"nasbench-{rev}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=HERE, check=True)
    common = [f"--children={args.children}", f"--parallel={args.parallel}", f"--strategy={args.strategy}"]
    common += [f"--gpu-workers={args.gpu_workers}", f"--redis={args.redis}", f"--timeout={args.timeout}", "--json"]
    results = {}
    for label, code, database in ((rev, tree, f"nasbench_{rev}"), ("this checkout", HERE, "nasbench")):
        print(f"== {label} ({code})", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, *common, f"--code={code}", f"--database={database}"],
            # From inside the tree measured: the project is also installed in editable mode,
            # whose finder would otherwise hand this checkout's modules to the baseline.
            cwd=code,
            env={**os.environ, "PYTHONPATH": str(code)},
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])
    old, new = results[rev], results["this checkout"]
    ratios = {
        key: old[key] / new[key]
        for key in (
            "worker_cpu_ms_per_child",
            "controller_cpu_ms_per_child",
            "gpu_cpu_ms_per_child",
            "postgres_cpu_ms_per_child",
        )
        if new[key]
    }
    ratios["children_per_s"] = new["children_per_s"] / old["children_per_s"]
    if args.json:
        print(json.dumps({"baseline": {"rev": rev, **old}, "current": new, "improvement": ratios}))
        return 0
    for label, result in results.items():
        print(f"\n== {label}")
        report(result)
    print("\n== improvement (baseline / this checkout; children/s: this / baseline)")
    for key, value in ratios.items():
        print(f"  {key:30s} {value:5.2f}x")
    return 0


def report(r: dict) -> None:
    print(f"children          {r['children']} ({r['reused']} reused, {r['failed']} failed)")
    print(f"strategy          {r['strategy']}, parallel {r['parallel']}, 1 controller + {r['gpu_workers']} gpu workers")
    load = f"load average {r['load_before']:.1f} before, {r['load_after']:.1f} after"
    print(f"wall time         {r['wall_s']:.1f} s ({load})")
    print(f"children/s        {r['children_per_s']:.1f}")
    parts = (
        f"controller {r['controller_cpu_ms_per_child']:.2f} ms, gpu-queue workers {r['gpu_cpu_ms_per_child']:.2f} ms"
    )
    print(f"worker CPU/child  {r['worker_cpu_ms_per_child']:.2f} ms ({parts}); ", end="")
    print(f"PostgreSQL {r['postgres_cpu_ms_per_child']:.2f} ms")
    print(f"best reward       {r['best_reward']:.4f}")
    print(f"database size     {r['database_mib']:.1f} MiB ({r['database']})")
    print(f"searches table    {r['searches_table_mib']:.1f} MiB (with its TOAST, indexes and checkpoint pieces)")


def measure(args) -> dict:
    url = prepare_database(os.environ.get("DATABASE_URL"), args.database)
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
        cpu_before = {w.name: cpu_seconds(w.proc.pid) for w in started}
        load_before = os.getloadavg()[0]
        pg_before = postgres_cpu_seconds()
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
                print(f"  {elapsed:7.1f} s  {search.children_done:6d} children", file=sys.stderr, flush=True)
                last = search.children_done
            if elapsed > args.timeout:
                print(workers.logs(), file=sys.stderr)
                raise SystemExit(f"timed out: {search.to_dict()}")
        wall = time.perf_counter() - t0
        cpu = {w.name: cpu_seconds(w.proc.pid) - cpu_before[w.name] for w in started}
        pg_cpu = postgres_cpu_seconds() - pg_before
    if search.status != m.FINISHED:
        raise SystemExit(f"search ended {search.status}: {search.error}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        size = cursor.fetchone()[0]
        # The searches table and, where the checkpoint is kept in pieces, their table.
        cursor.execute(
            "SELECT pg_total_relation_size(%s) + "
            "COALESCE(pg_total_relation_size(to_regclass('searches_strategycheckpointpart')), 0)",
            [m.Search._meta.db_table],
        )
        searches_size = cursor.fetchone()[0]
    n = search.children_done
    controller_cpu = sum(v for k, v in cpu.items() if k.startswith("controller"))
    gpu_cpu = sum(v for k, v in cpu.items() if k.startswith("gpu"))
    return {
        "children": n,
        "reused": search.children_reused,
        "failed": search.children_failed,
        "strategy": args.strategy,
        "parallel": args.parallel,
        "gpu_workers": args.gpu_workers,
        "wall_s": wall,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "children_per_s": n / wall,
        "worker_cpu_ms_per_child": 1000 * (controller_cpu + gpu_cpu) / n,
        "controller_cpu_ms_per_child": 1000 * controller_cpu / n,
        "gpu_cpu_ms_per_child": 1000 * gpu_cpu / n,
        "postgres_cpu_ms_per_child": 1000 * pg_cpu / n,
        "best_reward": search.best_reward,
        "database": connection.settings_dict["NAME"],
        "database_mib": size / 2**20,
        "searches_table_mib": searches_size / 2**20,
    }


if __name__ == "__main__":
    sys.exit(main())
