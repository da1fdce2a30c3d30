#!/usr/bin/env python3
"""Local mode in one command, from a fresh clone with nothing but Python 3.11+:

    python3 local.py [--port 8000] [--children 20] [--data-root DIR] [--no-browser] ...

Checks the options first (`--help` and a bad option answer before anything is installed),
creates `.venv` if it is missing, installs requirements.txt and this project into it when
they changed since the last install (a stamp in .venv records what was installed), then
runs `.venv/bin/python -m workers.local` with the same options: an embedded Valkey server,
migrate, a demo team and user (credentials printed), the web server and the workers, a
demo search, its URL. Ctrl-C stops everything; running it again resumes. DATABASE_URL /
REDIS_URL, when set, are used instead of the embedded SQLite database and Valkey server.

Standard library only: it runs before anything is installed. The options live in
workers/local_options.py, loaded here by its path (importing the `workers` package would
need Celery).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "nasnet-install.stamp"
INSTALLED_FROM = ("requirements.txt", "pyproject.toml")
OPTIONS = ROOT / "workers" / "local_options.py"


def say(line: str) -> None:
    print(f"[local] {line}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def wanted_stamp() -> str:
    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for name in INSTALLED_FROM:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    return digest.hexdigest()


def load_options():
    """workers/local_options.py, by path: standard library only, no package imported."""
    spec = importlib.util.spec_from_file_location("nasnet_local_options", OPTIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_venv(skip_install: bool) -> Path:
    python = venv_python()
    if not python.exists():
        if skip_install:
            raise SystemExit(f"error: --skip-install: {python} does not exist")
        say(f"creating the virtual environment {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    want = wanted_stamp()
    have = STAMP.read_text().strip() if STAMP.exists() else ""
    if have != want and not skip_install:
        say("installing the requirements into .venv (the first time takes a few minutes)")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(ROOT / "requirements.txt"), "-e", str(ROOT)], check=True)
        STAMP.write_text(want + "\n")
    return python


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs under whatever python3 is
        print(f"error: Python 3.11 or newer is needed, this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    argv = sys.argv[1:]
    args = load_options().parse_args(argv)  # --help and bad options end here, status 0 / 2
    # Folders named relative to where the user is: absolute before changing to the repository.
    for flag, path in (("--data-root", args.data_root), ("--state-dir", args.state_dir)):
        if path is not None:
            argv += [flag, str(path.expanduser().resolve())]
    try:
        python = ensure_venv(args.skip_install)
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(map(str, exc.cmd))} failed with status {exc.returncode}", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    # exec: Ctrl-C and SIGTERM go straight to workers.local, which stops its processes.
    os.execv(str(python), [str(python), "-m", "workers.local", *argv])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
