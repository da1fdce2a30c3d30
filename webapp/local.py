"""Local mode: the whole service on one machine, on embedded defaults, in one command.

    python3 local.py                          # from the repository root (sets up .venv first)
    .venv/bin/python -m webapp.local --port 8001 --children 40
    .venv/bin/python -m webapp.local --data-root ../shared/datasets   # CIFAR-10 folder data

What it does, in order (ARCHITECTURE.md, "Local mode"):
1. NAS_LOCAL=1: webapp.settings keeps its state under NAS_LOCAL_DIR (default `.local/`):
   SQLite (WAL, IMMEDIATE transactions) unless DATABASE_URL is set, kombu's file-system
   broker and the event relay unless REDIS_URL is set.
2. migrate; the team "demo" and its owner "demo" (staff), whose generated password is
   kept in NAS_LOCAL_DIR/credentials.json and printed at every start.
3. Resumes what a previous session left: child runs claimed by local worker processes
   that no longer exist get their lease expired at once, and the reaper runs now (with
   the embedded broker, whose queue the previous session owned, every waiting run of an
   unfinished search is dispatched again), instead of waiting NAS_LEASE_SECONDS.
4. Starts the production processes, each in its own session: daphne (webapp.asgi), the
   controller Celery worker with beat embedded (the reaper) and the gpu-queue workers
   (one per GPU, or one on the CPU), as `python -m workers` plans them. Their output
   goes to NAS_LOCAL_DIR/logs/ (--verbose: to this terminal).
5. Submits the demo search through webapp.searches.services.submit_search when the demo
   team has none yet (running again resumes the one it has), prints the URL to watch
   it live and a line whenever its counters move.
6. Ctrl-C / SIGTERM: SIGTERM to every server (a Celery worker finishes its current task),
   SIGKILL to every process group after --stop-timeout seconds, exit status 0; a child run
   cut short that way is requeued at the next start (3.). A child process that dies on
   its own stops everything with status 1.
"""

from __future__ import annotations

import argparse
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
import webbrowser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_TEAM = DEMO_USER = "demo"
DEMO_NAME = "demo search"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 local.py",
        description="Run NASNet Studio locally: web server, workers and a demo search.",
        epilog="local.py alone also takes --skip-install (use .venv as it is). DATABASE_URL and REDIS_URL, "
        "when set, replace the embedded SQLite database and file broker; NAS_* settings apply as usual.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the web server listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="a data root holding CIFAR-10 (an ImageFolder such as cifar10-jpeg/train, or torchvision's "
        "cifar10/): the demo search runs on it instead of the digits data set",
    )
    parser.add_argument("--dataset", help="the data set under --data-root to search on (default: found)")
    parser.add_argument(
        "--children", type=int, default=20, help="children of the demo search, when it is submitted (default 20)"
    )
    parser.add_argument("--parallel", type=int, default=2, help="its children in flight at once (default 2)")
    parser.add_argument("--gpus", help="comma-separated GPU ids for gpu-queue workers (default: all, or the CPU)")
    parser.add_argument("--state-dir", type=Path, help="where local state lives (default: .local/)")
    parser.add_argument("--stop-timeout", type=float, default=15.0, help="seconds to wait for a clean stop")
    parser.add_argument("--no-browser", action="store_true", help="do not open the search page in a browser")
    parser.add_argument("--verbose", action="store_true", help="show the servers' output here, not only in logs")
    args = parser.parse_args(argv)
    if args.children < 1 or args.parallel < 1:
        parser.error("--children and --parallel must be at least 1")
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    return args


def say(line: str) -> None:
    print(f"[local] {line}", flush=True)


# -- environment and Django ----------------------------------------------------------------
def configure(args: argparse.Namespace) -> Path:
    """Environment for this process and every child; returns the state directory."""
    state = (args.state_dir or Path(os.environ.get("NAS_LOCAL_DIR") or ROOT / ".local")).resolve()
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


def embedded_broker() -> bool:
    from django.conf import settings

    return settings.NAS_EMBEDDED_BROKER


def describe_backends() -> None:
    from django.conf import settings

    db = settings.DATABASES["default"]
    where = db["NAME"] if db["ENGINE"].endswith("sqlite3") else f"{db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}"
    broker = f"files under {settings.NAS_LOCAL_DIR / 'broker'}" if settings.NAS_EMBEDDED_BROKER else "Redis"
    say(f"database: {where}; broker: {broker}; live events: {settings.NAS_CHANNEL_LAYER}")


def recover() -> dict:
    """Take back what a killed earlier session left half done, then run the reaper once."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from webapp.searches import models as m
    from workers import orchestrator

    now = timezone.now()
    host = socket.gethostname()
    dead = []
    for run_id, worker in m.ChildRun.objects.filter(status=m.RUN_RUNNING, worker__startswith=f"{host}:").values_list(
        "id", "worker"
    ):
        pid = worker.rsplit(":", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            dead.append(run_id)
    with transaction.atomic():
        m.ChildRun.objects.filter(id__in=dead, status=m.RUN_RUNNING).update(lease_expires_at=now - timedelta(seconds=1))
        if embedded_broker():
            # This session owns the file broker: drop what the last one left in it and let
            # the reaper dispatch every waiting run again (dispatched_at NULL = "lost").
            from django.conf import settings

            for sub in ("queue", "processed"):
                for path in (settings.NAS_LOCAL_DIR / "broker" / sub).glob("*.msg"):
                    path.unlink(missing_ok=True)
            m.ChildRun.objects.filter(
                status=m.RUN_QUEUED, architecture__search__status__in=(m.QUEUED, m.RUNNING, m.PAUSED)
            ).update(dispatched_at=None)
    result = orchestrator.reap()
    if embedded_broker():
        # The advances the dropped messages asked for: one each (an advance with nothing
        # to do returns at once), so a result that arrived last time is told now.
        for search_id in m.Search.objects.filter(status__in=(m.QUEUED, m.RUNNING, m.CANCELLING)).values_list(
            "id", flat=True
        ):
            if search_id not in result["kicked"]:
                orchestrator.send(orchestrator.TASK_ADVANCE, search_id)
                result["kicked"].append(search_id)
        result["kicked"].sort()
    parts = [
        f"{len(result['requeued'])} interrupted child runs requeued" if result["requeued"] else "",
        f"{len(result['redispatched'])} waiting child runs dispatched again" if result["redispatched"] else "",
        f"searches {', '.join(map(str, result['kicked']))} advanced" if result["kicked"] else "",
    ]
    if any(parts):
        say("resuming: " + "; ".join(p for p in parts if p))
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the demo search --------------------------------------------------------------------------
def demo_spec(args: argparse.Namespace) -> dict:
    """The "CPU smoke test" preset (digits, tiny PPO-trained children), with this budget;
    with --data-root, the same on CIFAR-10 folder data (a subset, so a CPU copes)."""
    from webapp.front.presets import preset_spec

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
    say(f"submitted search {search.id}: {search.spec['dataset']['name']}, {search.children_total} children, PPO")
    return search


# -- child processes ----------------------------------------------------------------------------
def plan(args: argparse.Namespace, state: Path) -> list[tuple[str, list[str], dict]]:
    from workers.__main__ import commands, parse_args

    gpus = ["--gpus", args.gpus] if args.gpus else []
    quiet = ["--", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    out = [
        (
            "web",
            [sys.executable, "-m", "daphne", "-b", args.host, "-p", str(args.port), "webapp.asgi:application"],
            {},
        )
    ]
    for cmd, env in commands(parse_args(["controller", *quiet])):
        # beat inside the controller worker: the reaper, with its schedule in the state dir
        out.append(("controller", [*cmd, "-B", "-s", str(state / "celerybeat-schedule")], env))
    for i, (cmd, env) in enumerate(commands(parse_args(["gpu", *gpus, *quiet]))):
        out.append((f"gpu{i}" if env.get("CUDA_VISIBLE_DEVICES") else "cpu", cmd, env))
    return out


class Children:
    def __init__(self, state: Path, verbose: bool):
        self.logs = state / "logs"
        self.logs.mkdir(exist_ok=True)
        self.verbose = verbose
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict) -> None:
        out = None if self.verbose else open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only us; we stop them in order
        )
        if out:
            out.close()

    def dead(self) -> list[tuple[str, int]]:
        return [(name, p.returncode) for name, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout: float) -> None:
        for proc in self.procs.values():
            # The main process only: a Celery worker then shuts down warm (its pool finishes
            # the task at hand, so a child being trained is not lost); SIGTERM to the whole
            # group would kill the pool process mid-task.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {timeout:.0f}s: killed")
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)  # stragglers in the group (pool processes)
            proc.wait()

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        if self.verbose or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # its own session: the group id is its pid


def wait_for_port(host: str, port: int, children: Children, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not children.dead():
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def prune_processed(state: Path, older_than: float = 60.0) -> None:
    """The file broker keeps taken messages (moving them is what makes taking atomic)."""
    now = time.time()
    for path in (state / "broker" / "processed").glob("*.msg"):
        try:
            if now - path.stat().st_mtime > older_than:
                path.unlink()
        except OSError:
            pass


class Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise Stop


def watch(search_id: int, children: Children, state: Path) -> int:
    """Print the search's progress until a signal (0) or a dead child process (1)."""
    from django.db import close_old_connections

    from webapp.searches import models as m

    last = None
    ticks = 0
    while True:
        time.sleep(1.0)
        ticks += 1
        dead = children.dead()
        if dead:
            for name, code in dead:
                say(f"{name} exited with status {code}; last lines of its log:\n{children.tail(name)}")
            return 1
        if ticks % 2:
            continue
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
        if ticks % 60 == 0:
            prune_processed(state)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = configure(args)
    lock = take_lock(state)  # noqa: F841 - held until exit
    if not port_free(args.host, args.port):
        raise SystemExit(f"error: --port: {args.host}:{args.port} is in use; choose another with --port")
    # From here Ctrl-C / SIGTERM raise Stop: during the set-up (an interrupted migration
    # rolls back) as well as later, and whatever was started is stopped.
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    children = Children(state, args.verbose)
    code = 0
    try:
        import django

        django.setup()
        describe_backends()
        creds = credentials(state)
        prepare_database(creds)
        recover()  # before submitting: it empties the file broker's queue
        search = demo_search(args, creds)
        for name, cmd, env in plan(args, state):
            children.start(name, cmd, env)
        say(f"started {', '.join(children.procs)} (logs in {children.logs})")
        if not wait_for_port(args.host, args.port, children):
            say(f"the web server did not come up; last lines of its log:\n{children.tail('web')}")
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
            code = watch(search.id, children, state)
    except Stop:
        say("stopping")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop(args.stop_timeout)
    say("stopped" if code == 0 else "stopped after an error")
    return code


if __name__ == "__main__":
    sys.exit(main())
