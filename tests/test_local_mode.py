"""Local mode end to end: `python3 local.py` in a temporary copy, with no Redis and no
PostgreSQL reachable, records rewards, shows them live over the websocket, stops cleanly
on Ctrl-C, and resumes the same search when run again.

The copy gets its own `.venv` that borrows this one's interpreter and site-packages (and
the install stamp local.py writes), so nothing is installed. Where we may (root), the
whole run happens in a fresh network namespace (`unshare -n`): only its own loopback,
so the machine's Redis and PostgreSQL cannot be reached even by accident. The driver
below runs inside it and prints a JSON report that the test checks:

    python tests/test_local_mode.py DRIVE COPY PORT     # what the test runs (in the namespace)
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHILDREN = 12  # more than one session trains: the second run has work left to resume


# -- the driver (runs inside the namespace) --------------------------------------------------
class Session:
    """A logged-in browser: cookies, CSRF, JSON API, the search's websocket."""

    def __init__(self, base: str, username: str, password: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(f"{base}/accounts/login/", timeout=30).read()
        form = {"username": username, "password": password, "csrfmiddlewaretoken": self.cookie("csrftoken")}
        request = urllib.request.Request(
            f"{base}/accounts/login/", data=urllib.parse.urlencode(form).encode(), headers={"Referer": base + "/"}
        )
        self.opener.open(request, timeout=30).read()
        assert self.cookie("sessionid"), "login failed"

    def cookie(self, name: str) -> str:
        return next((c.value for c in self.jar if c.name == name), "")

    def get(self, path: str) -> dict:
        with self.opener.open(f"{self.base}{path}", timeout=30) as response:
            return json.loads(response.read())

    def websocket(self, search_id: int):
        from websockets.sync.client import connect

        url = self.base.replace("http://", "ws://") + f"/ws/searches/{search_id}/"
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.jar)
        return connect(url, origin=self.base, additional_headers={"Cookie": cookies}, open_timeout=30)


def start(copy: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "local.py", "--port", str(port), "--children", str(CHILDREN), "--no-browser"]
    return subprocess.Popen(
        cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )


def read_until(proc: subprocess.Popen, pattern: str, lines: list[str], timeout: float = 180) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("local.py ended early:\n" + "".join(lines))
        lines.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "".join(lines))


def stop(proc: subprocess.Popen, lines: list[str], timeout: float = 60) -> tuple[int, float]:
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    rest, _ = proc.communicate(timeout=timeout)
    lines.append(rest)
    return proc.returncode, time.monotonic() - began


def leftovers(copy: Path) -> list[str]:
    """Processes still running in the copy (every server and worker runs there)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") == str(copy):
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            continue
    return out


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def drive(copy: Path, port: int) -> dict:
    report: dict = {"redis_reachable": reachable(6379), "postgres_reachable": reachable(5432)}
    lines: list[str] = []
    proc = None
    try:
        # First session: a fresh state, the demo search submitted, rewards recorded.
        began = time.monotonic()
        proc = start(copy, port)
        search_id = int(read_until(proc, r"submitted search (\d+)", lines).group(1))
        user, password = read_until(proc, r"log in as (\S+) / (\S+)", lines).groups()
        url = read_until(proc, r"watch the search live at (\S+)", lines).group(1)
        report.update(search=search_id, url=url, web_up_s=round(time.monotonic() - began, 1))
        browser = Session(f"http://127.0.0.1:{port}", user, password)
        with browser.opener.open(url, timeout=30) as page:  # the page the URL names
            report["page"] = (page.status, f"/ws/searches/{search_id}/" in page.read().decode())
        with browser.websocket(search_id) as ws:
            connected = time.monotonic()
            ws.send(json.dumps({"type": "catch_up", "after": 0}))
            seen, rewards, reward_at = [], [], []
            deadline = time.monotonic() + 240
            while len(rewards) < 2 and time.monotonic() < deadline:
                event = json.loads(ws.recv(timeout=deadline - time.monotonic()))
                seen.append(event)
                if event["type"] == "child.finished" and event.get("reward") is not None:
                    rewards.append(event["reward"])
                    reward_at.append(round(time.monotonic() - connected, 1))
        report.update(
            first_reward_s=round(time.monotonic() - began, 1),
            ws_events=len(seen),
            ws_types=sorted({e["type"] for e in seen}),
            ws_seqs_consecutive=[e["seq"] for e in seen] == list(range(1, len(seen) + 1)),
            ws_rewards=rewards,
            ws_reward_after_connect_s=reward_at,  # seconds after the catch-up: relayed live
        )
        report["api_first"] = {
            k: browser.get(f"/api/searches/{search_id}")[k] for k in ("children_done", "best_reward")
        }
        report["exit_first"], report["stop_first_s"] = stop(proc, lines)
        report["leftovers_first"] = leftovers(copy)
        done_before = sqlite_done(copy, search_id)
        report["done_after_first"] = done_before

        # Second session: the same search goes on where it was.
        proc = start(copy, port)
        report["resumed"] = int(read_until(proc, r"resuming search (\d+)", lines).group(1))
        read_until(proc, r"watch the search live at", lines)
        browser = Session(f"http://127.0.0.1:{port}", user, password)  # the same password works
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = browser.get(f"/api/searches/{report['resumed']}")["children_done"]
            if done > done_before or done == CHILDREN:
                break
            time.sleep(1)
        report["done_second"] = done
        report["searches"] = browser.get("/api/searches")["count"]
        report["exit_second"], report["stop_second_s"] = stop(proc, lines)
        report["leftovers_second"] = leftovers(copy)
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        if proc is not None and proc.poll() is None:
            stop(proc, lines)
    report["output"] = "".join(lines)[-6000:]
    return report


def sqlite_done(copy: Path, search_id: int) -> int:
    import sqlite3

    with sqlite3.connect(copy / ".local" / "db.sqlite3") as db:
        return db.execute("SELECT children_done FROM searches_search WHERE id = ?", (search_id,)).fetchone()[0]


# -- the test ---------------------------------------------------------------------------------
def make_copy(dest: Path) -> None:
    """The working tree's files (what a clone would have, plus uncommitted work), a .venv
    that borrows ours, and the stamp that says it is installed."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    venv, ours = dest / ".venv", Path(sys.prefix)
    (venv / "bin").mkdir(parents=True)
    shutil.copy2(ours / "pyvenv.cfg", venv / "pyvenv.cfg")
    for name in ("python", "python3"):
        (venv / "bin" / name).symlink_to(ours / "bin" / name)
    (venv / "lib").symlink_to(ours / "lib")
    sys.path.insert(0, str(dest))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("local_launcher", dest / "local.py")
        launcher = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(launcher)
        (venv / "nasnet-install.stamp").write_text(launcher.wanted_stamp() + "\n")
    finally:
        sys.path.remove(str(dest))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated() -> list[str]:
    """A network namespace with only a loopback, where we may make one."""
    if shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return []


@pytest.mark.slow
def test_local_mode_runs_resumes_and_stops_cleanly(tmp_path):
    copy = tmp_path / "clone"
    copy.mkdir()
    make_copy(copy)
    namespace = isolated()
    cmd = [*namespace, sys.executable, str(Path(__file__).resolve()), "DRIVE", str(copy), str(free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    done = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in report.items() if k != "output"}, indent=1))
    assert "error" not in report, report["error"] + "\n" + report["output"]
    if namespace:
        assert not report["redis_reachable"] and not report["postgres_reachable"]
    # the first session: rewards recorded, seen live over the websocket, stopped cleanly
    assert len(report["ws_rewards"]) >= 2 and report["ws_seqs_consecutive"]
    assert report["ws_reward_after_connect_s"][-1] > 1  # not from the catch-up: live, through the relay
    assert {"architecture.sampled", "child.finished", "search.status"} <= set(report["ws_types"])
    # (children_done counts the results the controller has been told: it may lag a little)
    assert report["api_first"]["children_done"] >= 1 and report["api_first"]["best_reward"] is not None
    assert report["page"][0] == 200
    assert report["exit_first"] == 0 and report["leftovers_first"] == []
    # the second session: the same search, nothing lost, no second demo search
    assert report["resumed"] == report["search"]
    assert report["done_second"] >= report["done_after_first"] >= report["api_first"]["children_done"]
    assert report["done_second"] > report["done_after_first"] or report["done_second"] == CHILDREN
    assert report["searches"] == 1
    assert report["exit_second"] == 0 and report["leftovers_second"] == []
    assert (copy / ".local" / "db.sqlite3").exists() and not (copy / "db.sqlite3").exists()


# -- local.py's set-up step -----------------------------------------------------------------------
def test_local_py_installs_once_and_again_only_when_the_requirements_change(tmp_path, monkeypatch):
    import importlib.util

    for name in ("local.py", "requirements.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    spec = importlib.util.spec_from_file_location("local_launcher_under_test", tmp_path / "local.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd[1:4])
        if cmd[2] == "venv":  # what `python -m venv` leaves behind
            (Path(cmd[3]) / "bin").mkdir(parents=True)
            (Path(cmd[3]) / "bin" / "python").touch()

    monkeypatch.setattr(launcher.subprocess, "run", fake_run)
    python = launcher.ensure_venv(skip_install=False)
    assert python == tmp_path / ".venv" / "bin" / "python"
    assert calls == [["-m", "venv", str(tmp_path / ".venv")], ["-m", "pip", "install"]]
    assert launcher.ensure_venv(skip_install=False) == python and len(calls) == 2  # the stamp matches
    (tmp_path / "requirements.txt").write_text((tmp_path / "requirements.txt").read_text() + "extra==1\n")
    launcher.ensure_venv(skip_install=False)
    assert calls[-1] == ["-m", "pip", "install"] and len(calls) == 3
    launcher.ensure_venv(skip_install=True)  # --skip-install: never pip
    assert len(calls) == 3


# -- the event relay, on its own (webapp/live/relay.py; the test database) -----------------------
@pytest.fixture
def relay_layer(settings):
    settings.NAS_EVENT_RELAY = True
    settings.NAS_EVENT_RELAY_INTERVAL = 0.05
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "webapp.live.relay.RelayChannelLayer"}}
    from channels.layers import get_channel_layer

    return get_channel_layer()


@pytest.mark.django_db(transaction=True)
def test_the_relay_sends_stored_events_once_in_order_and_stops_when_nobody_watches(relay_layer, personas):
    from asgiref.sync import async_to_sync, sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.conf import settings
    from django.test import Client

    from webapp.asgi import application
    from webapp.live import events as live
    from webapp.searches import models as m

    search = m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="relay", spec={}, status=m.RUNNING, children_total=5
    )
    client = Client()
    client.force_login(personas.member)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver"), (b"cookie", cookie.encode())]

    def progress(i):
        return live.progress(1, i, {"epoch": i, "epochs": 9, "val_acc": 0.5, "train_loss": 1.0})

    publish = sync_to_async(live.publish_many)

    @async_to_sync
    async def scenario():
        await publish(search.id, [progress(1)])  # before anyone watches: the catch-up's
        ws = WebsocketCommunicator(application, f"/ws/searches/{search.id}/", headers=headers)
        assert (await ws.connect(timeout=5))[0]
        await ws.send_json_to({"type": "catch_up", "after": 0})
        assert (await ws.receive_json_from(timeout=5))["seq"] == 1
        # Published here, as a worker publishes elsewhere: the direct send is dropped by
        # the layer, and the relay delivers each event once, from the rows, in order.
        await publish(search.id, [progress(2), progress(3)])
        await publish(search.id, [progress(4)])
        got = [(await ws.receive_json_from(timeout=5))["seq"] for _ in range(3)]
        assert got == [2, 3, 4]
        assert await ws.receive_nothing(timeout=0.3)
        relay = relay_layer.relay
        assert relay.watchers == {search.id: 1}
        await ws.disconnect()
        await asyncio.sleep(0.2)
        assert relay.watchers == {} and relay.task.done()

    scenario()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "DRIVE":
    print(json.dumps(drive(Path(sys.argv[2]), int(sys.argv[3]))), flush=True)
