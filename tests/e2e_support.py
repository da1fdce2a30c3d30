"""Helpers of the end-to-end browser test (tests/test_e2e_browser.py): a real daphne
process serving webapp.asgi against the test database, and headless Chromium.

    with Daphne(env) as server:          # env: tests.celery_worker.worker_env(...)
        server.url("/searches/new")

Chromium is Debian's (/usr/bin/chromium, `apt-get install chromium`) driven by the
playwright package; playwright's own browser downloads are never used.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("NAS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts" / "e2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daphne_command(port: int, quiet: bool = False, profile: str | None = None) -> list[str]:
    """`quiet`: no access log. `profile`: run under cProfile, stats written to that file
    when daphne exits (SIGTERM stops it cleanly)."""
    exe = Path(sys.executable).parent / "daphne"
    if profile:
        base = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "daphne"]
    else:
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "daphne"]
    verbosity = ["-v", "0"] if quiet else []
    return [*base, "-b", "127.0.0.1", "-p", str(port), *verbosity, "webapp.asgi:application"]


class Daphne:
    """daphne webapp.asgi:application on a free port; its output goes to a log file.
    Used by the browser test and by bench/dashboard.py (`quiet`, `profile`: daphne_command)."""

    def __init__(
        self,
        env: dict,
        ready_timeout: float = 60.0,
        quiet: bool = False,
        profile: str | None = None,
        log_prefix: str = "e2e-daphne-",
    ):
        self.env, self.ready_timeout = env, ready_timeout
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = daphne_command(self.port, quiet, profile)
        self.log = Path(tempfile.mkstemp(prefix=log_prefix, suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> Daphne:
        self._file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=self._file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.output()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/accounts/login/")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"daphne not ready after {self.ready_timeout}s: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __enter__(self) -> Daphne:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def chromium_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} missing (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (requirements-dev.txt)"
    return None


# Opens a websocket from the page and says what became of it.
WEBSOCKET_PROBE = """
(path) => new Promise((resolve) => {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + path);
  const seen = {opened: false, error: false, code: null, events: 0};
  ws.onopen = () => { seen.opened = true; setTimeout(() => ws.close(), 300); };
  ws.onmessage = () => { seen.events += 1; };
  ws.onerror = () => { seen.error = true; };
  ws.onclose = (e) => { seen.code = e.code; resolve(seen); };
  setTimeout(() => resolve({...seen, timeout: true}), 10000);
})
"""

# Records every value #reward-chart's data-points takes, from now on, in window.__e2e.
WATCH_CHART = """
() => {
  const chart = document.getElementById("reward-chart");
  const best = document.getElementById("best-cells");
  window.__e2e = {
    marker: Math.random(),
    points: [chart ? chart.getAttribute("data-points") : null],
    bestAtStart: best ? !!best.querySelector("svg") : null,
    live: [],
  };
  if (chart) new MutationObserver(() => window.__e2e.points.push(chart.getAttribute("data-points")))
    .observe(chart, {attributes: true, attributeFilter: ["data-points"]});
  const state = document.getElementById("live-state");
  if (state) new MutationObserver(() => window.__e2e.live.push(state.textContent.trim()))
    .observe(state, {childList: true, characterData: true, subtree: true});
  return window.__e2e.marker;
}
"""
