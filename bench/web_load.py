"""Does the web tier scale out? The production web server, started with the command line and
the environment of docker/compose.yaml's `web` service (on 127.0.0.1 and a free port, DEBUG
off), once per process count; then `--clients` concurrent clients for `--seconds` seconds
each round.

Every client holds one websocket open on its search's live channel (/ws/searches/<id>/,
logged in by session cookie, with a same-host Origin) and loops, without pause, over

  * GET /api/searches, /api/searches/<id>, /api/searches/<id>/architectures (API token),
  * GET /searches/<id> (the HTML page) and /searches/<id>/chart.json (session cookie),

cycling through the searches. Meanwhile this process publishes `--rate` live events per
second to every search (webapp.live.events.publish, as a worker does), and every client must
receive each event of its search. Reported per round: requests/s, latency p50/p95/p99/max
over all requests (and per endpoint), errors (a status outside 2xx/3xx, a failed request, a
websocket refused or dropped, an event not delivered), event delivery latency, the CPU the
server, this process and everything else used; then the ratio of each round to the first.

    .venv/bin/python bench/web_load.py                          # 1 process, then 2
    .venv/bin/python bench/web_load.py --processes 1,2,4 --seconds 30 --json
    .venv/bin/python bench/web_load.py --processes 2 --set DATABASE_POOL_SIZE=0   # without the pool

The load comes from one asyncio process (aiohttp) so that it takes little of the machine it
measures. The database is its own (`nasweb`, created and migrated when missing; or --db),
Redis database 13 (or --redis). A team, a user with an API token and --searches PPO
searches of --children architectures, child runs with rewards and controller updates are
created anew each run. Goal (issue #12): p95 under 300 ms with 50 clients and no errors.
On a shared machine the numbers move with everything else that runs: look at the load
average and the "other" CPU it prints, and run it twice before believing a change.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
USERNAME, PASSWORD, TEAM = "bench-web", "bench-web-load-pw-1", "bench-web"
P95_GOAL_MS = 300.0
EPOCHS = 3  # per child
UPDATE_EVERY = 20  # PPO's minibatch: one controller update per 20 finished children
REQUEST_TIMEOUT = 60.0  # s: a request slower than this is an error, not a latency
# s after the last publish for the last events to arrive; later is lost. An overloaded
# process delays events too: a consumer rechecks access (a query) between them, and its
# queries wait for the one thread that runs the process's requests.
GRACE = 15.0


# -- helpers ------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- database and data --------------------------------------------------------------------------
def prepare_database(name: str, env: dict) -> None:
    """Create `name` when missing, then migrate it (nothing to do when it is up to date)."""
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)


def seed(n_searches: int, n_children: int) -> dict:
    """The bench team and user (made anew: searches, tokens), an API token, and `n_searches`
    running PPO searches of `n_children` architectures with child runs, rewards, a strategy
    checkpoint and the controller updates the chart reads. Returns the ids, the token and the last event seqs."""
    from types import SimpleNamespace

    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import transaction

    from nas_engine.genotype import Genotype
    from nas_engine.space import SearchSpace
    from nas_engine.spec import validate_spec
    from nas_engine.strategies.base import checkpoint_bytes
    from webapp.accounts.models import ROLE_OWNER, ApiToken, Membership, Team
    from webapp.live import events as live
    from webapp.live.models import SearchEvent, SearchEventCounter
    from webapp.searches import models as m

    rng = random.Random(0)
    team, _ = Team.objects.get_or_create(name=TEAM)
    user = User.objects.filter(username=USERNAME).first() or User.objects.create_user(USERNAME)
    user.set_password(PASSWORD)
    user.save()
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": ROLE_OWNER})
    m.Search.objects.filter(team=team).delete()
    ApiToken.objects.filter(user=user).delete()
    _, token = ApiToken.issue(user, name="bench-web", days=1)

    spec_data = {
        "dataset": "digits",
        "strategy": "ppo",
        "child": {"epochs": EPOCHS},
        "budget": {"children": n_children * 2, "parallel": 8},
    }
    parsed = validate_spec(spec_data, data_root=settings.NAS_DATA_ROOT)
    spec = parsed.to_dict()
    # The strategy's state, where a search row still holds it (a column read with the row:
    # ~0.7 MB for PPO); stored apart from the row, no page or API answer reads it.
    in_row = "checkpoint" in {f.name for f in m.Search._meta.concrete_fields}
    row_state = {"checkpoint": checkpoint_bytes(parsed.make_strategy())} if in_row else {}
    space = SearchSpace.from_dict(spec.get("space"))
    sizes = space.decision_sizes()
    searches, last_seq = [], {}
    with transaction.atomic():
        for s in range(n_searches):
            search = m.Search.objects.create(
                team=team,
                owner=user,
                name=f"bench web {s}",
                spec=spec,
                status=m.RUNNING,
                children_total=n_children * 2,
                **row_state,
            )
            archs, runs = [], []
            for i in range(n_children):
                genotype = Genotype.from_decisions(space, [rng.randrange(k) for k in sizes])
                running = i >= n_children - 8  # the last `parallel` children still train
                reward = None if running else min(0.99, max(0.05, rng.gauss(0.6 + 0.3 * i / n_children, 0.05)))
                archs.append(
                    m.Architecture(
                        search=search,
                        sample_index=i,
                        genotype=genotype.to_dict(),
                        canonical_hash=genotype.canonical_hash(),
                        params=rng.randrange(20_000, 400_000),
                        mult_adds=rng.randrange(2_000_000, 80_000_000),
                        reward=reward,
                        told=not running,
                    )
                )
            m.Architecture.objects.bulk_create(archs)
            for arch in archs:
                done = arch.reward is not None
                epochs = [
                    {"epoch": e, "epochs": EPOCHS, "val_acc": round((arch.reward or 0.3) * (0.8 + 0.2 * e / EPOCHS), 4)}
                    for e in range(1, (EPOCHS if done else 1) + 1)
                ]
                runs.append(
                    m.ChildRun(
                        architecture=arch,
                        status=m.RUN_SUCCEEDED if done else m.RUN_RUNNING,
                        attempt=1,
                        worker="gpu0@bench",
                        epochs=epochs,
                        reward=arch.reward,
                        wall_time=12.5 if done else None,
                    )
                )
            m.ChildRun.objects.bulk_create(runs)
            rewarded = [a for a in archs if a.reward is not None]
            best = max(rewarded, key=lambda a: a.reward)
            search.children_sampled, search.children_done = n_children, len(rewarded)
            search.best_reward, search.best_architecture = best.reward, best
            search.save()
            events = [live.sampled(a) for a in archs]
            for k in range(len(rewarded) // UPDATE_EVERY):
                stats = SimpleNamespace(
                    step=k + 1,
                    loss=rng.gauss(0, 0.1),
                    entropy=rng.uniform(1, 2.5),
                    mean_reward=0.7,
                    baseline=0.7,
                    approx_kl=0.001,
                    clip_fraction=0.1,
                    policy=[[round(rng.random(), 4) for _ in range(size)] for size in sizes],
                )
                events.append(live.controller(stats, (k + 1) * UPDATE_EVERY))
            SearchEvent.objects.bulk_create(
                SearchEvent(search=search, seq=seq, type=type_, payload=payload)
                for seq, (type_, payload) in enumerate(events, start=1)
            )
            SearchEventCounter.objects.create(search=search, last_seq=len(events))
            searches.append(search.id)
            last_seq[search.id] = len(events)
    running = {
        sid: list(
            m.ChildRun.objects.filter(architecture__search_id=sid, status=m.RUN_RUNNING).select_related("architecture")
        )
        for sid in searches
    }
    return {"searches": searches, "token": token, "last_seq": last_seq, "running": running}


# -- the server ---------------------------------------------------------------------------------
def compose_web_service() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["web"]


def compose_web_command() -> list[str]:
    command = compose_web_service()["command"]
    return list(command) if isinstance(command, list) else command.split()


def compose_web_environment() -> dict[str, str]:
    """What compose's web service sets in its environment besides where the database and Redis
    are (the bench's own): DATABASE_POOL_SIZE."""
    own = {k: str(v) for k, v in (compose_web_service().get("environment") or {}).items()}
    own = {k: v for k, v in own.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    if any("${" in v for v in own.values()):
        raise SystemExit(f"compose's web environment uses a variable the bench does not set: {own}")
    return own


def server_command(port: int, processes: int) -> list[str]:
    """compose's web command with its process count, on 127.0.0.1:`port`: every other option
    as production runs it. The executable is this virtualenv's."""

    def interpolate(word: str) -> str:
        # ${WEB_CONCURRENCY:-2} -> processes; any other variable would need a value of the bench's.
        word = re.sub(r"\$\{WEB_CONCURRENCY(?::-[^}]*)?\}", str(processes), word)
        if "${" in word:
            raise SystemExit(f"compose's web command uses a variable the bench does not set: {word}")
        return word

    argv = [interpolate(w) for w in compose_web_command()]
    out = []
    for word in argv:
        if word.startswith("--host="):
            word = "--host=127.0.0.1"
        elif word.startswith("--port="):
            word = f"--port={port}"
        out.append(word)
    if not any(w.startswith("--host=") for w in out) or not any(w.startswith("--port=") for w in out):
        raise SystemExit(f"compose's web command has no --host=/--port= to point at 127.0.0.1: {argv}")
    exe = Path(sys.executable).parent / out[0]
    if exe.exists():
        out[0] = str(exe)
    return out


class Server:
    """The web command on a free port, its output in a log file."""

    def __init__(self, env: dict, processes: int, overrides: dict[str, str]):
        self.own_env = {**compose_web_environment(), **overrides}
        self.env, self.processes = {**env, **self.own_env}, processes
        self.port = free_port()
        self.command = server_command(self.port, processes)
        self.log = Path(tempfile.mkstemp(prefix=f"bench-web-{processes}p-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        self._file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the web server exited: {self.output()[-3000:]}")
            # Every process has loaded the application (uvicorn logs this after the import),
            # and one of them answers.
            started = self.output().count("Started server process")
            if started >= self.processes and self.healthy():
                return
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the web server was not ready after {timeout:.0f} s: {self.output()[-3000:]}")

    def healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/healthz", headers={"Host": "127.0.0.1"})
            return conn.getresponse().status == 200
        except OSError:
            return False

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def cpu(self) -> float:
        return sum(process_cpu(pid) for pid in self.pids())

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "_file", None) is not None:
            self._file.close()


def login(port: int) -> str:
    """Log in through the login form as a browser does; the session cookie."""
    cookies: dict[str, str] = {}

    def request(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = dict(headers or {})
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            for key, morsel in SimpleCookie(header).items():
                cookies[key] = morsel.value
        return response.status, data

    _, html = request("GET", "/accounts/login/")
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1).decode()
    body = urllib.parse.urlencode(
        {"username": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/"}
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{port}"}
    status, _ = request("POST", "/accounts/login/", body, headers)
    if status != 302 or "sessionid" not in cookies:
        raise RuntimeError(f"login failed: HTTP {status}")
    return cookies["sessionid"]


# -- the load -----------------------------------------------------------------------------------
def endpoints(search_id: int) -> list[tuple[str, str, str]]:
    """(name, path, credentials) of one pass of a client's loop."""
    return [
        ("api searches", "/api/searches", "token"),
        ("api search", f"/api/searches/{search_id}", "token"),
        ("api architectures", f"/api/searches/{search_id}/architectures", "token"),
        ("search page", f"/searches/{search_id}", "session"),
        ("chart.json", f"/searches/{search_id}/chart.json", "session"),
    ]


class Round:
    """What the clients saw in one round."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.ws_received: dict[int, dict[int, float]] = {}  # per client: seq -> receipt time
        self.recording = False
        self.over = False

    def error(self, what: str, always: bool = False) -> None:
        """Requests count while the clock runs; a websocket that fails counts until the round is over."""
        if self.recording or (always and not self.over):
            self.errors[what] = self.errors.get(what, 0) + 1


async def watch(session, url: str, headers: dict, after: int, received: dict, ready: asyncio.Event, rnd: Round):
    """One client's websocket: catch up after `after`, then note every event's receipt."""
    import aiohttp

    try:
        # The request timeout is the handshake's; the socket itself lives as long as the round.
        async with asyncio.timeout(REQUEST_TIMEOUT):
            ws = await session.ws_connect(
                url, headers=headers, heartbeat=None, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=10.0)
            )
        async with ws:
            await ws.send_json({"type": "catch_up", "after": after})
            ready.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    received[json.loads(msg.data)["seq"]] = time.time()
                elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    break
            rnd.error(f"websocket closed by the server ({ws.close_code})", always=True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the socket is the error counted
        rnd.error(f"websocket: {type(exc).__name__}: {str(exc)[:80]}", always=True)
    finally:
        ready.set()


async def client(i: int, port: int, info: dict, session_id: str, rnd: Round, stop: asyncio.Event, ws_ready):
    import aiohttp

    searches = info["searches"]
    mine = searches[i % len(searches)]
    base = f"http://127.0.0.1:{port}"
    creds = {
        "token": {"Authorization": f"Bearer {info['token']}"},
        "session": {"Cookie": f"sessionid={session_id}"},
    }
    connector = aiohttp.TCPConnector(limit=2)  # one keep-alive connection for requests, one websocket
    timeout = aiohttp.ClientTimeout(total=None)  # per request (REQUEST_TIMEOUT) and per handshake
    received: dict[int, float] = {}
    rnd.ws_received[i] = received
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        ws_headers = {**creds["session"], "Origin": base}
        url = f"ws://127.0.0.1:{port}/ws/searches/{mine}/"
        watcher = asyncio.create_task(watch(session, url, ws_headers, info["last_seq"][mine], received, ws_ready, rnd))
        try:
            await requests(i, base, searches, creds, session, rnd, stop)
            await watcher  # the socket stays open until the round is over (run_round cancels)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def requests(i: int, base: str, searches: list[int], creds: dict, session, rnd: Round, stop: asyncio.Event):
    """One client's loop over the endpoints until `stop`, each request after the last."""
    import aiohttp

    limit = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    n = i
    while not stop.is_set():
        sid = searches[n % len(searches)]
        n += 1
        for name, path, cred in endpoints(sid):
            if stop.is_set():
                break
            t0 = time.perf_counter()
            try:
                async with session.get(
                    base + path, headers=creds[cred], allow_redirects=False, timeout=limit
                ) as response:
                    await response.read()
                    status = response.status
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a request that failed is an error, whatever failed
                rnd.error(f"{name}: {type(exc).__name__}")
                continue
            if rnd.recording:
                rnd.latencies.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
            if not 200 <= status < 400:
                rnd.error(f"{name}: HTTP {status}")


def publisher(info: dict, rate: float, stop: threading.Event, published: dict) -> None:
    """`rate` child.progress events per second per search, as a gpu worker publishes them;
    published[search] = [(seq, time of the publish call)]."""
    from django.db import connection

    from webapp.live import events as live

    try:
        i, start = 0, time.monotonic()
        while not stop.is_set():
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            for sid in info["searches"]:
                runs = info["running"][sid]
                run = runs[i % len(runs)]
                t0 = time.time()
                (message,) = live.publish(sid, *live.progress(run, run.architecture.sample_index))
                published.setdefault(sid, []).append((message["seq"], t0))
            i += 1
    finally:
        connection.close()


async def warm_up(port: int, info: dict, session_id: str, processes: int) -> None:
    """Every endpoint served by every process before the clock starts: a process's first
    search page costs seconds (parsing a stored spec builds its strategy, and PPO's optimizer
    imports torch._dynamo on first use), which is start-up, not load. Each request on a
    connection of its own, so that the kernel spreads them over the processes: with 6 per
    process and endpoint, a given process gets none with a chance under e**-6 (0.25 %)."""
    import aiohttp

    creds = {
        "token": {"Authorization": f"Bearer {info['token']}"},
        "session": {"Cookie": f"sessionid={session_id}"},
    }
    gate = asyncio.Semaphore(2 * processes)

    async def get(session, path: str, cred: str) -> None:
        async with gate, session.get(path, headers=creds[cred], allow_redirects=False) as response:
            await response.read()

    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{port}", connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        calls = [
            get(session, path, cred) for _, path, cred in endpoints(info["searches"][0]) for _ in range(6 * processes)
        ]
        await asyncio.gather(*calls)


async def run_round(port: int, info: dict, session_id: str, args, server: Server) -> dict:
    rnd = Round()
    t = time.perf_counter()
    await warm_up(port, info, session_id, server.processes)
    warm_s = time.perf_counter() - t
    stop = asyncio.Event()
    ready = [asyncio.Event() for _ in range(args.clients)]
    tasks = [asyncio.create_task(client(i, port, info, session_id, rnd, stop, ready[i])) for i in range(args.clients)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 120)
    await asyncio.sleep(args.warmup)  # every process serves a few passes before the clock starts
    published: dict[int, list] = {}
    pub_stop = threading.Event()
    pub = threading.Thread(target=publisher, args=(info, args.rate, pub_stop, published), daemon=True)
    load0, busy0, server0, me0 = loadavg(), machine_busy(), server.cpu(), process_cpu(os.getpid())
    t0 = time.perf_counter()
    rnd.recording = True
    pub.start()
    await asyncio.sleep(args.seconds)
    rnd.recording = False
    wall = time.perf_counter() - t0
    pub_stop.set()
    busy1, server1, me1 = machine_busy(), server.cpu(), process_cpu(os.getpid())
    await asyncio.to_thread(pub.join, 30)
    stop.set()
    searches = info["searches"]
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(
        not {seq for seq, _ in published.get(searches[i % len(searches)], [])} <= received.keys()
        for i, received in rnd.ws_received.items()
    ):
        await asyncio.sleep(0.2)  # the last events reach the sockets
    rnd.over = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    lost, delivery = 0, []
    for i, received in rnd.ws_received.items():
        for seq, sent in published.get(searches[i % len(searches)], []):
            if seq in received:
                delivery.append(1000 * (received[seq] - sent))
            else:
                lost += 1
    if lost:
        rnd.errors[f"websocket: events not delivered within {GRACE:.0f} s"] = lost
    everything = [x for values in rnd.latencies.values() for x in values]
    server_cores = (server1 - server0) / wall
    me_cores = (me1 - me0) / wall
    busy_cores = (busy1 - busy0) / wall
    return {
        "processes": server.processes,
        "warm_up_s": round(warm_s, 1),
        "command": " ".join(
            [f"{k}={v}" for k, v in server.own_env.items()]
            + [Path(server.command[0]).name if i == 0 else w for i, w in enumerate(server.command)]
        ),
        "clients": args.clients,
        "seconds": round(wall, 2),
        "requests": len(everything),
        "requests_per_s": round(len(everything) / wall, 1),
        "p50_ms": round(pct(everything, 50), 1),
        "p95_ms": round(pct(everything, 95), 1),
        "p99_ms": round(pct(everything, 99), 1),
        "max_ms": round(max(everything, default=math.nan), 1),
        "errors": sum(rnd.errors.values()),
        "error_kinds": rnd.errors,
        "endpoints": {
            name: {"requests": len(v), "p50_ms": round(pct(v, 50), 1), "p95_ms": round(pct(v, 95), 1)}
            for name, v in rnd.latencies.items()
        },
        "events_published": sum(len(v) for v in published.values()),
        "events_expected": len(delivery) + lost,
        "events_delivered": len(delivery),
        "delivery_p50_ms": round(pct(delivery, 50), 1),
        "delivery_p95_ms": round(pct(delivery, 95), 1),
        "cpu_cores": {
            "server": round(server_cores, 2),
            "load_generator": round(me_cores, 2),
            "other": round(busy_cores - server_cores - me_cores, 2),  # PostgreSQL, Redis, anything else
            "machine": round(busy_cores, 2),
        },
        # Less sensitive to other load on the machine than requests/s: what one request costs.
        "server_cpu_ms_per_request": round(1000 * server_cores * wall / len(everything), 1) if everything else None,
        "load_average_before": load0,
        "load_average_after": loadavg(),
    }


# -- report -------------------------------------------------------------------------------------
def print_round(r: dict) -> None:
    print(f"\n{r['processes']} process{'es' if r['processes'] > 1 else ''}: {r['command']}")
    print(f"  warm-up (every endpoint on every process) {r['warm_up_s']:.1f} s")
    print(
        f"  {r['requests']} requests in {r['seconds']:.1f} s = {r['requests_per_s']:.1f}/s   "
        f"p50 {r['p50_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms"
    )
    print(f"  errors {r['errors']}" + "".join(f"\n    {n:5d}  {kind}" for kind, n in r["error_kinds"].items()))
    print(
        f"  websockets: {r['events_delivered']} of {r['events_expected']} events delivered "
        f"({r['events_published']} published), delivery p50 {r['delivery_p50_ms']:.1f} ms "
        f"p95 {r['delivery_p95_ms']:.1f} ms"
    )
    cpu = r["cpu_cores"]
    print(
        f"  CPU (cores): server {cpu['server']:.2f}, load generator {cpu['load_generator']:.2f}, "
        f"other (PostgreSQL, Redis, anything else) {cpu['other']:.2f}, machine {cpu['machine']:.2f} of {os.cpu_count()}"
    )
    print(f"  server CPU per request {r['server_cpu_ms_per_request']} ms")
    print(f"  load average before {r['load_average_before']}, after {r['load_average_after']}")
    print(f"  {'endpoint':<20} {'requests':>9} {'p50 ms':>9} {'p95 ms':>9}")
    for name, e in r["endpoints"].items():
        print(f"  {name:<20} {e['requests']:>9} {e['p50_ms']:>9.1f} {e['p95_ms']:>9.1f}")


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def summary(rounds: list[dict]) -> dict:
    first = rounds[0]
    out = {"ratios": {}, "goal": {}}
    for r in rounds[1:]:
        key = f"{r['processes']}_vs_{first['processes']}"
        out["ratios"][key] = {
            "requests_per_s": ratio(r["requests_per_s"], first["requests_per_s"]),
            "p95": ratio(r["p95_ms"], first["p95_ms"]),
        }
    for r in rounds:
        out["goal"][str(r["processes"])] = r["p95_ms"] < P95_GOAL_MS and r["errors"] == 0
    return out


# -- main ---------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2", help="web processes per round, comma-separated (default 1,2)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the clock starts")
    parser.add_argument("--rate", type=float, default=1.0, help="live events published per second per search")
    parser.add_argument("--searches", type=int, default=3)
    parser.add_argument("--children", type=int, default=300, help="architectures per search")
    parser.add_argument("--db", default="nasweb")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable of the server besides compose's (e.g. DATABASE_POOL_SIZE=0); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--keep-logs", action="store_true", help="keep the web server's logs (printed paths)")
    args = parser.parse_args()
    counts = [int(x) for x in args.processes.split(",") if x.strip()]
    if any("=" not in item for item in args.set):
        parser.error("--set: NAME=VALUE")
    overrides = dict(item.split("=", 1) for item in args.set)
    if not counts or min(counts) < 1 or args.clients < 1 or args.seconds <= 0 or args.rate <= 0:
        parser.error("--processes: positive counts; --clients, --seconds, --rate: positive")
    say = (lambda *a, **k: None) if args.json else print

    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.db}",
        "REDIS_URL": args.redis,
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "NAS_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    say(f"load average {loadavg()} ({os.cpu_count()} cores)")
    t = time.perf_counter()
    prepare_database(args.db, env)
    import django

    django.setup()
    info = seed(args.searches, args.children)
    from django.db import connection

    connection.close()  # no connection held while measuring (the publisher opens its own)
    say(
        f"database {args.db}: {args.searches} searches x {args.children} architectures seeded "
        f"in {time.perf_counter() - t:.1f} s; Redis {args.redis}"
    )
    say(f"{args.clients} clients, {args.seconds:.0f} s per round after {args.warmup:.0f} s of warm-up")

    rounds, logs = [], []
    for processes in counts:
        server = Server(env, processes, overrides)
        try:
            t = time.perf_counter()
            server.start()
            say(f"\nstarted {processes} process(es) in {time.perf_counter() - t:.1f} s (port {server.port})")
            session_id = login(server.port)
            result = asyncio.run(run_round(server.port, info, session_id, args, server))
        finally:
            server.stop()
        failed = "Traceback" in server.output()
        if args.keep_logs or failed:
            logs.append(str(server.log))
        else:
            server.log.unlink()
        result["server_tracebacks"] = failed
        rounds.append(result)
        if not args.json:
            print_round(result)
            if failed:
                print(f"  the server logged a traceback: {server.log}")
    report = {"rounds": rounds, **summary(rounds), "cores": os.cpu_count(), "logs": logs}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, ratio in report["ratios"].items():
            a, b = key.split("_vs_")
            print(f"\n{a} processes vs {b}: requests/s x{ratio['requests_per_s']}, p95 x{ratio['p95']}")
        for processes, met in report["goal"].items():
            print(f"goal p95 < {P95_GOAL_MS:.0f} ms, no errors, {processes} process(es): {'met' if met else 'MISSED'}")
        for path in logs:
            print(f"server log: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
