"""Does the dashboard stay fast on a big search? A search of 20,000 architectures (with
their child runs and ~100,000 stored live events) seeded into a database of its own,
served by a real daphne process; then

  * page and API response times (p50/p95) over real HTTP, logged in as a member, and
  * websocket delivery latency: `--clients` browsers-to-be (the `websockets` package, with
    the session cookie and a same-host Origin) on /ws/searches/<id>/, while a publisher
    process publishes `--rate` events per second for `--seconds` seconds with
    webapp.live.events.publish. Latency = the client's receipt time minus the time the
    publisher called publish(), per client per event; lost and duplicated events are counted.

    .venv/bin/python bench/dashboard.py
    .venv/bin/python bench/dashboard.py --architectures 2000 --clients 10 --seconds 5 --keep-db
    .venv/bin/python bench/dashboard.py --reuse-db --keep-db --layer pubsub    # another channel layer
    .venv/bin/python bench/dashboard.py --reuse-db --keep-db --load-path '/searches/{search}/chart.json'
        # ... while one more browser loads the chart over and over: does it hold up live delivery?

The database is `nasnet_bench_dashboard` on the local PostgreSQL (dropped and created anew,
migrated, seeded; dropped at the end unless --keep-db; --reuse-db takes a kept one as it
is) and Redis database 9 (flushed). Daphne runs with DEBUG off and the project's settings
otherwise. Goals (issue #5): every page under 1 s, delivery p95 under 200 ms.
Numbers from a shared machine are noisy: run it twice before believing a regression.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import copy
import http.client
import json
import math
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "nasnet_bench_dashboard"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
USERNAME, PASSWORD = "bench-dash", "bench-dashboard-pw-1"
PAGE_GOAL_MS, DELIVERY_P95_GOAL_MS = 1000.0, 200.0
EPOCHS = 3  # per child, as in the default spec
BATCH = 2000  # rows per bulk_create


# -- helpers ------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process so far (Linux /proc); this process with pid None."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(url: str) -> float:
    """The Redis server's CPU time so far (shared by everything on this Redis)."""
    import redis

    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --layer: the project's settings with another channel layer, from a settings module written
# to a temporary folder. "redis": the project's own (channels_redis core) as configured.
LAYER_SETTINGS = {
    # Redis Pub/Sub: one message per process per group_send, fanned out to the local consumers
    "pubsub": """
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}], "prefix": "nasnet-live"},  # noqa: F405
    }
}
""",
}


def bench_env(args) -> dict:
    """The environment of every process of the bench (this one, daphne, the publisher).
    --layer other than redis: the project's settings with another channel layer (LAYER_SETTINGS)."""
    settings, path = "webapp.settings", str(ROOT)
    if args.settings:  # a settings module of one's own, on PYTHONPATH
        settings, path = args.settings, os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    elif args.layer in LAYER_SETTINGS:
        folder = Path(tempfile.mkdtemp(prefix="bench-dashboard-settings-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        text = "from webapp.settings import *  # noqa: F403\n" + LAYER_SETTINGS[args.layer]
        (folder / "bench_dashboard_settings.py").write_text(text)
        settings, path = "bench_dashboard_settings", f"{folder}{os.pathsep}{ROOT}"
        sys.path.insert(0, str(folder))
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.db}",
        "REDIS_URL": args.redis,
        "DJANGO_SETTINGS_MODULE": settings,
        "DJANGO_DEBUG": "1" if args.debug else "0",
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY", secrets.token_urlsafe(48)),
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "NAS_LOG_LEVEL": "WARNING",
        "PYTHONPATH": path,
    }


# -- database -----------------------------------------------------------------------------------
def database_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(name: str, env: dict) -> float:
    import psycopg

    t0 = time.perf_counter()
    drop_database(name)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def seed(n: int, seed_value: int = 0) -> dict:
    """A team, a member, and one running search of `n` architectures, their child runs and
    their live events, with bulk_create. Returns ids and timings."""
    from django.contrib.auth.models import User
    from django.db import transaction

    from nas_engine.genotype import Genotype
    from nas_engine.space import SearchSpace
    from nas_engine.spec import validate_spec
    from webapp.accounts.models import ROLE_OWNER, Membership, Team
    from webapp.live import events as live
    from webapp.live.models import SearchEvent, SearchEventCounter
    from webapp.searches import models as m

    rng = random.Random(seed_value)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    team = Team.objects.create(name="bench-dashboard")
    user = User.objects.create_user(USERNAME, password=PASSWORD)
    Membership.objects.create(user=user, team=team, role=ROLE_OWNER)
    for i in range(3):  # a few more searches for the index page
        m.Search.objects.create(
            team=team, owner=user, name=f"earlier {i}", spec={}, status=m.FINISHED, children_total=10
        )
    spec_data = {
        "dataset": "digits",
        "strategy": "ppo",
        "child": {"epochs": EPOCHS},
        "budget": {"children": n, "parallel": 32},
    }
    from django.conf import settings

    spec = validate_spec(spec_data, data_root=settings.NAS_DATA_ROOT).to_dict()
    search = m.Search.objects.create(
        team=team, owner=user, name=f"bench {n} architectures", spec=spec, status=m.RUNNING, children_total=n
    )

    # architectures: genotypes from random decisions, rewards on a rising learning curve
    t = time.perf_counter()
    space = SearchSpace.from_dict(spec.get("space"))
    sizes = space.decision_sizes()
    running = set(range(max(0, n - 32), n))  # the last `parallel` children still train
    archs, outcomes = [], []
    for i in range(n):
        genotype = Genotype.from_decisions(space, [rng.randrange(k) for k in sizes])
        if i in running:
            status, reward = m.RUN_RUNNING, None
        elif rng.random() < 0.03:
            status, reward = m.RUN_FAILED, None
        else:
            status = m.RUN_REUSED if rng.random() < 0.02 else m.RUN_SUCCEEDED
            curve = 0.55 + 0.35 * (1 - math.exp(-i / max(1, n / 4)))
            reward = min(0.999, max(0.05, rng.gauss(curve, 0.04)))
        outcomes.append((status, reward))
        archs.append(
            m.Architecture(
                search=search,
                sample_index=i,
                genotype=genotype.to_dict(),
                canonical_hash=genotype.canonical_hash(),
                params=rng.randrange(20_000, 400_000),
                mult_adds=rng.randrange(2_000_000, 80_000_000),
                reward=reward,
                told=status not in m.RUN_ACTIVE,
            )
        )
    timings["genotypes"] = time.perf_counter() - t
    t = time.perf_counter()
    with transaction.atomic():
        m.Architecture.objects.bulk_create(archs, batch_size=BATCH)
    timings["architectures"] = time.perf_counter() - t

    t = time.perf_counter()
    runs, epoch_lists = [], []
    for arch, (status, reward) in zip(archs, outcomes):
        epochs = []
        n_epochs = EPOCHS if status in (m.RUN_SUCCEEDED, m.RUN_REUSED) else rng.randrange(0, EPOCHS)
        for e in range(1, n_epochs + 1):
            val = (reward or 0.3) * (0.7 + 0.3 * e / EPOCHS)
            epochs.append(
                {
                    "epoch": e,
                    "epochs": EPOCHS,
                    "train_loss": round(2.3 * math.exp(-e / 2) + rng.random() * 0.1, 4),
                    "train_acc": round(min(1.0, val + 0.02), 4),
                    "val_loss": round(2.3 * math.exp(-e / 2.5) + rng.random() * 0.1, 4),
                    "val_acc": round(val, 4),
                    "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * e / EPOCHS)),
                    "seconds": round(rng.uniform(2, 6), 2),
                }
            )
        epoch_lists.append(epochs)
        runs.append(
            m.ChildRun(
                architecture=arch,
                status=status,
                attempt=1,
                worker="gpu1@bench",
                epochs=epochs,
                reward=reward,
                wall_time=sum(e["seconds"] for e in epochs) or None,
                error="diverged: loss is nan" if status == m.RUN_FAILED else "",
            )
        )
    with transaction.atomic():
        m.ChildRun.objects.bulk_create(runs, batch_size=BATCH)
    timings["child runs"] = time.perf_counter() - t

    # live events as the advance and the child runs write them
    t = time.perf_counter()
    rewarded = [(a.reward, a) for a in archs if a.reward is not None]
    best = max(rewarded, key=lambda x: x[0])[1]
    done = sum(1 for s, _ in outcomes if s not in m.RUN_ACTIVE)
    failed = sum(1 for s, _ in outcomes if s == m.RUN_FAILED)
    reused = sum(1 for s, _ in outcomes if s == m.RUN_REUSED)
    search.children_sampled, search.children_done = n, done
    search.children_failed, search.children_reused = failed, reused
    search.best_reward, search.best_architecture = best.reward, best
    search.save()
    events: list[tuple[str, dict]] = []
    finished_count = 0
    for arch, run, (status, reward), epochs in zip(archs, runs, outcomes, epoch_lists):
        events.append(live.sampled(arch))
        for e in range(1, len(epochs) + 1):  # the run as each heartbeat left it
            training = run_as(run, status=m.RUN_RUNNING, epochs=epochs[:e], reward=None, wall_time=None, error="")
            events.append(live.progress(training, arch.sample_index))
        if status in m.RUN_ACTIVE:
            continue
        events.append(live.finished(run, arch.sample_index))
        finished_count += 1
        if finished_count % 20 == 0:  # PPO's minibatch of 20
            probs = [[round(rng.random(), 4) for _ in range(k)] for k in sizes]
            stats = SimpleNamespace(
                step=finished_count // 20,
                loss=rng.gauss(0, 0.1),
                entropy=rng.uniform(1, 2.5),
                mean_reward=reward or 0.0,
                baseline=0.7,
                approx_kl=rng.random() * 0.01,
                clip_fraction=rng.random() * 0.2,
                policy=probs,
            )
            events.append(live.controller(stats, arch.sample_index))
        if finished_count % 100 == 0:
            then = {"children_done": finished_count, "children_sampled": arch.sample_index}
            events.append((live.STATUS, {"search": {**live.status(search)[1]["search"], **then}}))
    rows = [
        SearchEvent(search=search, seq=seq, type=type_, payload=payload)
        for seq, (type_, payload) in enumerate(events, start=1)
    ]
    with transaction.atomic():
        SearchEvent.objects.bulk_create(rows, batch_size=BATCH)
        SearchEventCounter.objects.create(search=search, last_seq=len(rows))
    timings["events"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return {
        "search": search.id,
        "architecture": best.id,
        "events": len(rows),
        "running": [a.id for a in archs if a.sample_index in running],
        "timings": timings,
    }


def run_as(run, **fields):
    """A copy of a ChildRun row with other field values: the run at an earlier moment."""
    earlier = copy.copy(run)
    for key, value in fields.items():
        setattr(earlier, key, value)
    return earlier


def existing(n: int) -> dict:
    from webapp.live.models import SearchEventCounter
    from webapp.searches import models as m

    search = m.Search.objects.get(owner__username=USERNAME, children_total=n)
    running = m.Architecture.objects.filter(search=search, runs__status=m.RUN_RUNNING).values_list("id", flat=True)
    counter = SearchEventCounter.objects.get(search=search)
    return {
        "search": search.id,
        "architecture": search.best_architecture_id,
        "events": counter.last_seq,
        "running": list(running),
        "timings": {},
    }


class Browser:
    """Cookies by hand over one keep-alive connection (the bench reads every Set-Cookie)."""

    def __init__(self, port: int):
        self.port, self.cookies = port, {}
        self.origin = f"http://127.0.0.1:{port}"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        for header in response.headers.get_all("Set-Cookie") or []:
            for key, morsel in SimpleCookie(header).items():
                self.cookies[key] = morsel.value
        return response.status, data

    def login(self, username: str, password: str) -> None:
        status, html = self.request("GET", "/accounts/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1).decode()
        body = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/"}
        ).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin}
        status, _ = self.request("POST", "/accounts/login/", body, headers)
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"login failed: HTTP {status}")


class PageLoad:
    """--load-path: one more logged-in browser that GETs a page over and over while the
    websockets run (do page loads hold up live delivery?)."""

    def __init__(self, port: int, cookies: dict, path: str):
        import threading

        self.browser = Browser(port)
        self.browser.cookies = dict(cookies)
        self.path, self.times = path, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            t0 = time.perf_counter()
            self.browser.request("GET", self.path)
            self.times.append(1000 * (time.perf_counter() - t0))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)
        print(
            f"\nconcurrent page load {self.path}: {len(self.times)} requests, "
            f"p50 {pct(self.times, 50):.1f} ms  p95 {pct(self.times, 95):.1f} ms"
        )


def time_pages(browser: Browser, paths: list[str], n: int) -> list[dict]:
    rows = []
    for path in paths:
        status, data = browser.request("GET", path)  # warm-up, and whether it exists
        if status != 200:
            rows.append({"path": path, "status": status, "skipped": True})
            continue
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            status, data = browser.request("GET", path)
            times.append(1000 * (time.perf_counter() - t0))
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
        rows.append({"path": path, "status": status, "p50": pct(times, 50), "p95": pct(times, 95), "bytes": len(data)})
    return rows


# -- websockets ---------------------------------------------------------------------------------
async def client(url: str, origin: str, cookie: str, after: int, received: list, ready: asyncio.Event, stop):
    from websockets.asyncio.client import connect

    async with connect(url, origin=origin, additional_headers={"Cookie": cookie}, max_queue=None) as ws:
        await ws.send(json.dumps({"type": "catch_up", "after": after}))
        ready.set()
        while True:
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                return
            now = time.time()
            received.append((json.loads(recv.result())["seq"], now))


async def websocket_run(args, port: int, cookie: str, search_id: int, after: int, env: dict) -> dict:
    url, origin = f"ws://127.0.0.1:{port}/ws/searches/{search_id}/", f"http://127.0.0.1:{port}"
    publisher = subprocess.Popen(
        [sys.executable, __file__, "--publisher", str(search_id), "--rate", str(args.rate)]
        + ["--seconds", str(args.seconds), "--architectures", str(args.architectures)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stop = asyncio.get_running_loop().create_future()
    received = [[] for _ in range(args.clients)]
    ready = [asyncio.Event() for _ in range(args.clients)]
    t0 = time.perf_counter()
    tasks = [
        asyncio.ensure_future(client(url, origin, cookie, after, received[i], ready[i], stop))
        for i in range(args.clients)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 60)
    connect_s = time.perf_counter() - t0
    await asyncio.sleep(0.5)  # the catch-up requests are answered (nothing to send)
    line = await asyncio.to_thread(publisher.stdout.readline)
    if line.strip() != "ready":
        raise RuntimeError(f"publisher: {line!r}")
    cpu0 = {"daphne": cpu_seconds(args.daphne_pid), "clients": cpu_seconds(), "publisher": cpu_seconds(publisher.pid)}
    cpu0["redis"] = redis_cpu_seconds(args.redis)
    wall0 = time.perf_counter()
    publisher.stdin.write("go\n")
    publisher.stdin.flush()
    out = await asyncio.to_thread(publisher.stdout.read)
    cpu1 = {"daphne": cpu_seconds(args.daphne_pid), "clients": cpu_seconds(), "publisher": cpu_seconds(publisher.pid)}
    cpu1["redis"] = redis_cpu_seconds(args.redis)
    wall = time.perf_counter() - wall0
    publisher.wait(30)
    published = json.loads(out)
    wanted = {seq for seq, *_ in published}
    deadline = time.monotonic() + args.grace  # stragglers: until every client has every event, or the grace ends
    while time.monotonic() < deadline and any(
        not wanted <= {seq for seq, _ in r} for r, t in zip(received, tasks) if not t.done()
    ):
        await asyncio.sleep(0.1)
    stop.set_result(None)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    cpu = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0}
    cpu["wall"] = wall
    return {"connect_s": connect_s, "published": published, "received": received, "errors": errors, "cpu": cpu}


def publisher_main(args) -> int:
    """A separate process (its own database connection and channel-layer connection), like a worker."""
    import django

    django.setup()
    from django.db import connection
    from django.db.models import F

    from webapp.live import events as live
    from webapp.searches import models as m

    search_id = args.publisher
    runs = list(
        m.ChildRun.objects.filter(architecture__search_id=search_id)
        .annotate(sample_index=F("architecture__sample_index"))
        .order_by("-architecture__sample_index")[:32]
    )
    sizes = len(m.Search.objects.get(pk=search_id).spec.get("space", {}).get("ops", [])) or 13
    connection.ensure_connection()
    rng = random.Random(1)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    total = int(args.rate * args.seconds)
    start = time.time()
    published = []
    for i in range(total):
        due = start + i / args.rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        run = runs[i % len(runs)]
        index = run.sample_index
        if i % 50 == 49:  # a controller update now and then (about 3 kB)
            stats = SimpleNamespace(
                step=i,
                loss=0.01,
                entropy=1.5,
                mean_reward=0.8,
                baseline=0.79,
                approx_kl=0.001,
                clip_fraction=0.1,
                policy=[[round(rng.random(), 4) for _ in range(sizes)] for _ in range(50)],
            )
            event = live.controller(stats, index)
        elif i % 10 == 9:
            event = live.finished(run_as(run, status=m.RUN_SUCCEEDED, reward=rng.random(), wall_time=12.5), index)
        else:
            epoch = {"epoch": 1 + i % EPOCHS, "epochs": EPOCHS, "val_acc": rng.random(), "train_loss": rng.random()}
            event = live.progress(run_as(run, status=m.RUN_RUNNING, epochs=[*run.epochs, epoch]), index)
        t0 = time.time()
        messages = live.publish(search_id, *event)
        published.append([messages[0]["seq"], t0, time.time(), due])
    print(json.dumps(published), flush=True)
    return 0


# -- main ---------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=50, help="concurrent websocket clients")
    parser.add_argument("--rate", type=float, default=50.0, help="events published per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the publisher publishes")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per path")
    parser.add_argument("--grace", type=float, default=15.0, help="wait at most this long for late events (then: lost)")
    parser.add_argument("--db", default=DB_NAME)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database at the end")
    parser.add_argument("--reuse-db", action="store_true", help="use a kept, seeded bench database as it is")
    parser.add_argument(
        "--layer",
        choices=["redis", *LAYER_SETTINGS],
        default="redis",
        help="the channel layer: the project's (channels_redis core) or channels_redis' Pub/Sub layer",
    )
    parser.add_argument("--settings", metavar="MODULE", help="DJANGO_SETTINGS_MODULE of all processes (not --layer)")
    parser.add_argument(
        "--load-path",
        metavar="PATH",
        help="GET this path in a loop while the websockets run ({search}: the search id), e.g. /searches/{search}",
    )
    parser.add_argument("--profile-daphne", metavar="FILE", help="run daphne under cProfile, stats to FILE")
    parser.add_argument("--debug", action="store_true", help="run daphne with DJANGO_DEBUG=1")
    parser.add_argument("--publisher", type=int, help=argparse.SUPPRESS)  # internal: the publisher process
    args = parser.parse_args()
    if args.publisher is not None:
        return publisher_main(args)

    env = bench_env(args)
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    reuse = args.reuse_db and database_exists(args.db)
    if not reuse:
        migrate_s = create_database(args.db, env)
        print(f"database          {args.db} created and migrated in {migrate_s:.1f} s")
    import django

    django.setup()
    import redis

    redis.Redis.from_url(args.redis).flushdb()
    if reuse:
        info = existing(args.architectures)
        print(f"database          {args.db} reused: search {info['search']}, {info['events']} events")
    else:
        info = seed(args.architectures)
        t = info["timings"]
        print(
            f"seeded            {args.architectures} architectures + child runs, {info['events']} events in "
            f"{t['total']:.1f} s (genotypes {t['genotypes']:.1f} s, architectures {t['architectures']:.1f} s, "
            f"child runs {t['child runs']:.1f} s, events {t['events']:.1f} s)"
        )
    from django.db import connection

    connection.close()  # the bench holds no connection while measuring
    from tests.e2e_support import Daphne  # the browser test's launcher

    daphne = Daphne(env, quiet=True, profile=args.profile_daphne, log_prefix="bench-dashboard-daphne-")
    try:
        daphne.start()
        browser = Browser(daphne.port)
        browser.login(USERNAME, PASSWORD)
        sid, aid = info["search"], info["architecture"]
        paths = [
            "/",
            f"/searches/{sid}",
            f"/searches/{sid}?page=400",
            f"/searches/{sid}/chart.json",
            f"/architectures/{aid}",
            f"/architectures/{aid}/cells.svg",
            "/leaderboard",
            f"/api/searches/{sid}",
            f"/api/searches/{sid}/architectures?page=200",
        ]
        rows = time_pages(browser, paths, args.requests)
        failed = False
        print(f"\nHTTP, {args.requests} sequential requests per path after one warm-up (keep-alive, logged in)")
        print(f"{'path':<44} {'p50 ms':>8} {'p95 ms':>8} {'bytes':>10}")
        for row in rows:
            if row.get("skipped"):
                print(f"{row['path']:<44} skipped: HTTP {row['status']}")
                failed = True
            else:
                print(f"{row['path']:<44} {row['p50']:8.1f} {row['p95']:8.1f} {row['bytes']:10d}")

        cookie = f"sessionid={browser.cookies['sessionid']}"
        args.daphne_pid = daphne.proc.pid
        loader = PageLoad(daphne.port, browser.cookies, args.load_path.format(search=sid)) if args.load_path else None
        try:
            ws = asyncio.run(websocket_run(args, daphne.port, cookie, sid, info["events"], env))
        finally:
            if loader:
                loader.stop()
    finally:
        daphne.stop()
    if failed:
        print(f"\n(skipped paths: daphne's log, with any traceback, is {daphne.log})")
    else:
        daphne.log.unlink()
    report_websockets(args, ws)
    timed = [r for r in rows if not r.get("skipped")]
    worst = max(timed, key=lambda r: r["p95"])
    print("\ngoals")
    print(
        f"  page p95 < {PAGE_GOAL_MS:.0f} ms: worst {worst['p95']:.1f} ms ({worst['path']}), "
        f"{worst['p95'] / PAGE_GOAL_MS:.2f} of the goal -> {'met' if worst['p95'] < PAGE_GOAL_MS else 'MISSED'}"
    )
    p95 = ws["p95_ms"]
    print(
        f"  delivery p95 < {DELIVERY_P95_GOAL_MS:.0f} ms: {p95:.1f} ms, {p95 / DELIVERY_P95_GOAL_MS:.2f} of the goal "
        f"-> {'met' if p95 < DELIVERY_P95_GOAL_MS and not ws['lost'] else 'MISSED'}"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep_db:
        drop_database(args.db)
    return 0


def report_websockets(args, ws: dict) -> None:
    published = {seq: (t0, t1, due) for seq, t0, t1, due in ws["published"]}
    first_receipt: dict[int, float] = {}
    last_receipt: dict[int, float] = {}
    latencies, lost, dups, foreign = [], 0, 0, 0
    per_client_p95 = []
    for received in ws["received"]:
        seen: dict[int, float] = {}
        mine = []
        for seq, t in received:
            if seq not in published:
                foreign += 1
                continue
            if seq in seen:
                dups += 1
                continue
            seen[seq] = t
            first_receipt[seq] = min(t, first_receipt.get(seq, t))
            last_receipt[seq] = max(t, last_receipt.get(seq, t))
            mine.append(1000 * (t - published[seq][0]))
        lost += len(published) - len(seen)
        latencies += mine
        if mine:
            per_client_p95.append(pct(mine, 95))
    calls = [1000 * (t1 - t0) for t0, t1, _ in published.values()]
    lag = [1000 * (t0 - due) for t0, _, due in published.values()]
    span = max(t1 for _, t1, _ in published.values()) - min(t0 for t0, _, _ in published.values())
    ws["p95_ms"], ws["lost"] = pct(latencies, 95), lost
    print(f"\nwebsockets, {args.layer} layer: {args.clients} clients, {len(published)} published in {span:.1f} s")
    print(f"  connect + catch-up request, all clients   {ws['connect_s']:.2f} s")
    print(f"  publish() call (store + send)   p50 {pct(calls, 50):6.1f} ms  p95 {pct(calls, 95):6.1f} ms")
    print(f"  publisher behind schedule       p50 {pct(lag, 50):6.1f} ms  p95 {pct(lag, 95):6.1f} ms")
    print(
        f"  delivery publish -> receipt     p50 {pct(latencies, 50):6.1f} ms  p95 {pct(latencies, 95):6.1f} ms  "
        f"p99 {pct(latencies, 99):6.1f} ms  max {max(latencies, default=math.nan):6.1f} ms"
    )
    print(
        f"  per-client p95                  best {min(per_client_p95, default=math.nan):6.1f} ms  "
        f"median {statistics.median(per_client_p95 or [math.nan]):6.1f} ms  "
        f"worst {max(per_client_p95, default=math.nan):6.1f} ms"
    )
    first = [1000 * (first_receipt[q] - published[q][0]) for q in first_receipt]
    spread = [1000 * (last_receipt[q] - first_receipt[q]) for q in first_receipt]
    print(f"  first client's receipt          p50 {pct(first, 50):6.1f} ms  p95 {pct(first, 95):6.1f} ms")
    print(f"  first -> last client (fan-out)  p50 {pct(spread, 50):6.1f} ms  p95 {pct(spread, 95):6.1f} ms")
    cpu = ws["cpu"]
    print(
        f"  CPU while publishing (cores)    daphne {cpu['daphne']:.2f}  clients (this process) {cpu['clients']:.2f}  "
        f"publisher {cpu['publisher']:.2f}  Redis server {cpu['redis']:.2f} (shared)"
    )
    if latencies:
        per_message = 1e6 * cpu["daphne"] * cpu["wall"] / len(latencies)
        print(f"  daphne CPU per delivered message {per_message:.0f} us")
    print(f"  received {len(latencies)} of {len(published) * args.clients} (events x clients)")
    print(f"  lost {lost}, duplicates {dups}, unexpected {foreign}, client errors {len(ws['errors'])}")
    for error in ws["errors"][:3]:
        print(f"    {type(error).__name__}: {error}")


if __name__ == "__main__":
    sys.exit(main())
