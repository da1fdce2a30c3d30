"""docker/ and the operations docs, checked without a Docker engine.

The compose file and the env file parse; every command a container runs (service commands,
healthchecks, the images' CMDs) exists in the code with those options; every variable they
set is read by the code, and every variable the code reads is documented in env.example and
in docs/operations.md with its true default; volumes are declared and mounted where the
settings point; each GPU service reserves its own device; the images build from files that
exist, on the project's Python, with requirements.txt's torch pin; the web healthcheck
passes and fails when it should. Migrations run once, in a one-off service that everything
using the schema waits for; the web service runs several server processes, and its command
line, started here, serves pages and websockets from each of them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
# Services that run our code are the ones built from this repository.
OURS = sorted(name for name, s in SERVICES.items() if "build" in s)
DOCKERFILES = {"docker/Dockerfile": DOCKER / "Dockerfile", "docker/Dockerfile.cuda": DOCKER / "Dockerfile.cuda"}
CUDA_DOCKERFILE = "docker/Dockerfile.cuda"

# Read by docker compose itself (interpolation, profiles), never by the application.
COMPOSE_ONLY = {"COMPOSE_PROFILES", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "WEB_BIND"}
COMPOSE_ONLY |= {"DATA_VOLUME", "ARTIFACTS_VOLUME"}
# Read by the web server program (uvicorn, when the image's CMD runs it) and by compose for the
# web service's command; never by the application.
SERVER_VARS = {"WEB_CONCURRENCY"}
# Read by the code but set by the code for itself (python -m workers pins each gpu-queue worker
# with CUDA_VISIBLE_DEVICES): nothing to document.
NOT_A_SETTING = {"DJANGO_SETTINGS_MODULE", "CUDA_VISIBLE_DEVICES"}
# Commented lines of env.example that show an example or the images' value, not the code's default.
NOT_THE_CODE_DEFAULT = {"DATABASE_URL", "REDIS_URL", "NAS_DATA_ROOT", "NAS_ARTIFACTS_ROOT", "NAS_CACHE_DIR"}
NOT_THE_CODE_DEFAULT |= {"DJANGO_STATIC_ROOT", "NAS_LOCAL_DIR"}
# Image variables for Python, pip and the NVIDIA Container Toolkit.
RUNTIME_VARS = re.compile(r"^(PYTHON[A-Z_]*|PIP_[A-Z_]+|NVIDIA_[A-Z_]+)$")

READ_PATTERNS = [
    re.compile(r"\benv_(?:str|bool|int|float|list|dir|url)\(\s*\"([A-Z][A-Z0-9_]*)\""),
    re.compile(r"\bos\.environ\.(?:get|setdefault|pop)\(\s*\"([A-Z][A-Z0-9_]*)\""),
    re.compile(r"\bos\.environ\[\s*\"([A-Z][A-Z0-9_]*)\"\s*\]"),
    re.compile(r"\bos\.getenv\(\s*\"([A-Z][A-Z0-9_]*)\""),
]


def variables_read_by_code() -> set[str]:
    """Every environment variable the application reads (tests' own settings excepted)."""
    files = [ROOT / "manage.py"]
    for package in ("webapp", "workers", "nas_engine"):
        files += [p for p in (ROOT / package).rglob("*.py") if p.name != "test_settings.py"]
    names: set[str] = set()
    for path in files:
        text = path.read_text()
        for pattern in READ_PATTERNS:
            names.update(pattern.findall(text))
    return names


READ = variables_read_by_code()


def env_example() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, active): "NAME=value" lines are active, "# NAME=value" lines show a default."""
    out = {}
    for line in (DOCKER / "env.example").read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            assert match[2] not in out, f"env.example names {match[2]} twice"
            out[match[2]] = (match[3], match[1] is None)
    return out


EXAMPLE = env_example()


def interpolate(text: str, env: dict[str, str]) -> str:
    """docker compose's ${NAME}, ${NAME:-default}, ${NAME:?message} (nested), and $$ -> $."""
    pattern = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?:(:-|:\?)((?:[^{}]|\{[^{}]*\})*))?\}")
    while True:
        new = pattern.sub(lambda m: _one(m, env), text)
        if new == text:
            return new.replace("$$", "$")
        text = new


def _one(m: re.Match, env: dict[str, str]) -> str:
    name, op, arg = m[1], m[2], m[3]
    value = env.get(name, "")
    if value:
        return value
    if op == ":?":
        raise ValueError(f"{name}: {arg}")
    return arg or ""


def example_env() -> dict[str, str]:
    """The active lines of env.example, with the secrets it leaves blank filled in."""
    env = {name: value for name, (value, active) in EXAMPLE.items() if active}
    env.update(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        POSTGRES_PASSWORD=secrets.token_hex(24),
        REDIS_PASSWORD=secrets.token_hex(24),
    )
    return env


def container_env(service: str, env: dict[str, str]) -> dict[str, str]:
    """What a container of `service` gets: the env_file (docker/.env), then `environment:`."""
    out = {k: v for k, v in env.items()}
    for key, value in (SERVICES[service].get("environment") or {}).items():
        out[key] = interpolate(str(value), env)
    return out


def as_argv(command) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def segments(argv: list[str]) -> list[list[str]]:
    """The programs a command runs: `sh -c "a && exec b"` is [a, b]; anything else is itself."""
    if argv[:2] == ["sh", "-c"]:
        out = []
        for part in argv[2].split("&&"):
            words = shlex.split(part)
            out.append(words[1:] if words[:1] == ["exec"] else words)
        return out
    return [argv]


def shell_program(line: str) -> list[str]:
    """The first program of a CMD-SHELL line, up to a pipe or a redirection."""
    words = shlex.split(line)
    for i, word in enumerate(words):
        if word in ("|", ">", "2>", "&&", ";") or word.startswith(">"):
            return words[:i]
    return words


def run_workers_dry(args: list[str], capsys) -> str:
    from workers.__main__ import main

    role, rest = args[0], args[1:]
    capsys.readouterr()
    try:
        code = main([role, "--dry-run", *rest])
    except SystemExit as exc:  # argparse refused the arguments
        pytest.fail(f"python -m workers {' '.join(args)}: refused ({exc})")
    assert code == 0
    return capsys.readouterr().out


def check_program(argv: list[str], capsys) -> str:
    """Fail unless `argv` names something this repository provides with those options."""
    if argv[:3] == ["python", "-m", "workers"]:
        return run_workers_dry(argv[3:], capsys)
    if argv[:2] == ["python", "manage.py"]:
        from django.core.management import get_commands, load_command_class

        name, rest = argv[2], argv[3:]
        commands = get_commands()
        assert name in commands, f"manage.py has no command {name!r}"
        load_command_class(commands[name], name).create_parser("manage.py", name).parse_args(rest)
        return name
    if argv[:1] == ["daphne"]:
        import importlib

        from daphne.cli import CommandLineInterface

        args = CommandLineInterface().parser.parse_args(argv[1:])
        module, _, attr = args.application.partition(":")
        assert hasattr(importlib.import_module(module), attr), f"{args.application} does not exist"
        return args.application
    if argv[:1] == ["uvicorn"]:
        return uvicorn_options(argv)["app"]
    if argv[:1] == ["celery"]:
        assert argv[1:3] == ["-A", "workers"], argv
        from workers import app

        assert app.main == "nasnet"
        return "celery"
    if argv[:1] == ["python"] and argv[1].endswith(".py"):
        path = Path(argv[1])
        local = ROOT / path.relative_to("/app") if path.is_absolute() else ROOT / path
        assert local.is_file(), f"{argv[1]}: no such file in the repository (the image copies it to /app)"
        return str(local)
    pytest.fail(f"unknown program in a container command: {argv}")


def uvicorn_options(argv: list[str]) -> dict:
    """uvicorn's own parsing of `argv` (nothing is started). Fails unless the application and
    every implementation the options name (event loop, HTTP, websockets) import here."""
    import importlib

    from uvicorn.config import HTTP_PROTOCOLS, LOOP_FACTORIES, WS_PROTOCOLS
    from uvicorn.importer import import_from_string
    from uvicorn.main import main

    assert argv[0] == "uvicorn", argv
    try:
        params = main.make_context("uvicorn", list(argv[1:])).params
    except Exception as exc:  # noqa: BLE001 - click's usage errors, whatever their class
        pytest.fail(f"uvicorn refuses {argv[1:]}: {exc}")
    module, _, attr = params["app"].partition(":")
    assert hasattr(importlib.import_module(module), attr), f"{params['app']} does not exist"
    for table, name in ((LOOP_FACTORIES, "loop"), (HTTP_PROTOCOLS, "http"), (WS_PROTOCOLS, "ws")):
        assert table.get(params[name]), f"--{name}={params[name]}: not an implementation uvicorn has"
        import_from_string(table[params[name]])  # ImportError: its package is not installed
    return params


def command_of(service: str, env: dict[str, str] | None = None) -> list[str]:
    """A service's command as compose runs it: ${...} filled from `env` (default: nothing set,
    so compose's defaults)."""
    return [interpolate(word, env or {}) for word in as_argv(SERVICES[service]["command"])]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile_instructions(path):
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def volume_source(entry: str) -> tuple[str, str, bool]:
    """(source, target, read_only) of a short-syntax volume, interpolated with compose defaults."""
    parts = interpolate(entry, {}).split(":")
    return parts[0], parts[1], parts[2:] == ["ro"]


# -- compose: services and their commands --------------------------------------------------------
def test_compose_parses_with_every_service_the_deployment_needs():
    assert {"postgres", "redis", "migrate", "web", "controller", "beat", "gpu0", "gpu1", "cpu-worker"} <= set(SERVICES)
    assert set(OURS) == {"migrate", "web", "controller", "beat", "gpu0", "gpu1", "cpu-worker"}
    for name in OURS:
        assert SERVICES[name]["env_file"] == [{"path": ".env", "required": True}], name
        assert SERVICES[name]["build"]["context"] == "..", name
        assert SERVICES[name]["build"]["dockerfile"] in DOCKERFILES, name
        assert "command" in SERVICES[name], f"{name}: no command"


@pytest.mark.parametrize("service", OURS)
def test_every_service_command_exists_in_the_code(service, capsys):
    for argv in segments(command_of(service)):
        check_program(argv, capsys)


def migrates(service: str) -> bool:
    return any(argv[:3] == ["python", "manage.py", "migrate"] for argv in segments(command_of(service)))


def test_migrations_run_once_in_a_one_off_service(capsys):
    migrate = SERVICES["migrate"]
    steps = segments(command_of("migrate"))
    assert [check_program(argv, capsys) for argv in steps] == ["migrate"]
    assert "--noinput" in steps[0]
    # It runs to completion once per `up` and stays down: no restart, no health to report,
    # nothing to publish, and only one of it, however the web tier is scaled.
    assert migrate["restart"] == "no"
    assert "healthcheck" not in migrate and "ports" not in migrate
    assert migrate.get("deploy", {}).get("replicas", 1) == 1
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert [name for name in OURS if migrates(name)] == ["migrate"], "only the migrate service migrates"


def test_everything_that_uses_the_schema_waits_for_the_migrations():
    healthy, migrated = {"condition": "service_healthy"}, {"condition": "service_completed_successfully"}
    for name in OURS:
        if name == "migrate":
            continue
        # Not the web service: the workers need a migrated database, not a web server, and
        # waiting for web's health would hold them up for its start_period.
        assert SERVICES[name]["depends_on"] == {"postgres": healthy, "redis": healthy, "migrate": migrated}, name


def test_the_web_service_serves_the_asgi_application_in_web_concurrency_processes(capsys):
    (argv,) = segments(command_of("web"))
    assert check_program(argv, capsys) == "webapp.asgi:application"
    options = uvicorn_options(argv)
    shown, active = EXAMPLE["WEB_CONCURRENCY"]
    assert not active and options["workers"] == int(shown) >= 2, "env.example shows compose's default"
    assert uvicorn_options(command_of("web", {"WEB_CONCURRENCY": "5"}))["workers"] == 5
    assert options["host"] == "0.0.0.0"
    port = str(options["port"])
    assert [p.rsplit(":", 1)[1] for p in SERVICES["web"]["ports"]] == [port]
    assert f":{port}/" in SERVICES["web"]["healthcheck"]["test"][-1]
    # The client's address and scheme are the socket's, as under daphne: only Django, with
    # DJANGO_BEHIND_PROXY, decides whether to believe X-Forwarded-* (and whose).
    assert options["proxy_headers"] is False
    # Django has no lifespan handler (Channels' router refuses the scope).
    assert options["lifespan"] == "off"


def test_uvicorn_takes_its_process_count_from_web_concurrency(monkeypatch):
    from uvicorn.config import Config

    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert Config("webapp.asgi:application").workers == 3
    monkeypatch.delenv("WEB_CONCURRENCY")
    assert Config("webapp.asgi:application").workers == 1


def test_the_image_runs_the_web_server_as_the_web_service_does():
    """The CMD is compose's web command without --workers (uvicorn reads WEB_CONCURRENCY)."""
    instructions = dockerfile_instructions(DOCKERFILES["docker/Dockerfile"])
    (cmd,) = [json.loads(args) for instruction, args in instructions if instruction == "CMD"]
    image, service = uvicorn_options(cmd), uvicorn_options(command_of("web"))
    assert not any(word.startswith("--workers") for word in cmd)
    assert {k: v for k, v in image.items() if k != "workers"} == {k: v for k, v in service.items() if k != "workers"}


# -- the web service's command, running ----------------------------------------------------------
def child_processes(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError):
            continue  # gone meanwhile
    return out


def socket_holder(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of `pids` holds the server's end of the connection 127.0.0.1:client_port ->
    server_port (Linux /proc: the socket's inode, then the process with a descriptor on it)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if (local, remote) == (server_port, client_port):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


class Session:
    """Cookies by hand (they are Secure with DEBUG off) over plain HTTP to 127.0.0.1."""

    def __init__(self, port: int):
        self.port, self.cookies = port, {}

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        import http.client
        import urllib.parse
        from http.cookies import SimpleCookie

        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        for header in response.headers.get_all("Set-Cookie") or []:
            self.cookies.update({k: m.value for k, m in SimpleCookie(header).items()})
        return response.status, text

    def login(self, username: str, password: str, headers: dict | None = None) -> int:
        _, html = self.request("GET", "/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)[1]
        form = {"username": username, "password": password, "csrfmiddlewaretoken": token}
        return self.request("POST", "/accounts/login/", form, headers)[0]


def web_service_environment() -> dict[str, str]:
    """What the web service's `environment:` sets beyond where the database and Redis are."""
    own = {k: interpolate(str(v), {}) for k, v in SERVICES["web"]["environment"].items()}
    return {k: v for k, v in own.items() if k not in ("DATABASE_URL", "REDIS_URL")}


@pytest.mark.django_db(transaction=True)
def test_the_web_command_serves_pages_and_websockets_from_each_of_its_processes(personas, settings):
    """compose's web command itself, with 2 processes and the web service's environment (its
    database pool), on the test database: the login form, a page, and websockets held by both
    processes, each getting an event that another process (this one, as a worker would)
    publishes. X-Forwarded-* sent by a client on 127.0.0.1 change nothing without
    DJANGO_BEHIND_PROXY: neither the address login throttling counts nor the scheme (a request
    taken for HTTPS would fail CSRF's Referer check)."""
    from axes.models import AccessAttempt
    from django.db import connection
    from websockets.sync.client import connect

    from nas_engine.spec import validate_spec
    from tests.celery_worker import worker_env
    from tests.e2e_support import free_port
    from webapp.live import events as live
    from webapp.searches import models as m

    spec = validate_spec({"dataset": "digits"}, data_root=settings.NAS_DATA_ROOT).to_dict()
    search = m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="served", spec=spec, status=m.RUNNING, children_total=4
    )
    processes, port = 2, free_port()
    argv = command_of("web", {"WEB_CONCURRENCY": str(processes)})
    argv = [f"--port={port}" if w.startswith("--port=") else w for w in argv]
    argv = ["--host=127.0.0.1" if w.startswith("--host=") else w for w in argv]
    argv[0] = str(Path(sys.executable).parent / argv[0])
    env = worker_env(
        connection.settings_dict["NAME"],
        settings.REDIS_URL,  # this process publishes on the channel layer the server listens to
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_SECURE_SSL_REDIRECT="0",
        DJANGO_BEHIND_PROXY="0",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        NAS_LOG_LEVEL="WARNING",
        **web_service_environment(),
    )
    log = Path(tempfile.mkstemp(prefix="web-command-", suffix=".log")[1])
    with open(log, "wb") as out:
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        # Every process has imported the application (uvicorn says so after the import), and
        # the port answers.
        if log.read_text().count("Started server process") < processes:
            return False
        try:
            return Session(port).request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    sockets, workers, stack = [], [], contextlib.ExitStack()
    try:
        deadline = time.monotonic() + 180
        while not ready():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        # Its processes that serve (multiprocessing's spawn), not the resource tracker.
        workers = [
            pid for pid in child_processes(server.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == processes, (workers, log.read_text()[-3000:])

        spoofed = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        browser = Session(port)
        assert browser.login("owner", "wrong-password", spoofed) == 200  # the form again, not 403
        assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == ["127.0.0.1"]
        assert browser.login("owner", "pw-owner-123", spoofed) == 302
        status, html = browser.request("GET", f"/searches/{search.id}")
        assert status == 200 and "served" in html

        holders = set()
        url, origin = f"ws://127.0.0.1:{port}/ws/searches/{search.id}/", f"http://127.0.0.1:{port}"
        cookie = {"Cookie": f"sessionid={browser.cookies['sessionid']}"}
        while len(holders) < processes and len(sockets) < 24:  # the kernel picks the process
            ws = stack.enter_context(connect(url, origin=origin, additional_headers=cookie, open_timeout=30))
            sockets.append(ws)
            ws.send(json.dumps({"type": "catch_up", "after": 0}))
            holders.add(socket_holder(workers, port, ws.local_address[1]))
        assert holders == set(workers), f"{len(sockets)} websockets, held by {holders} of {workers}"

        (message,) = live.publish(search.id, *live.status(search))
        for ws in sockets:
            assert json.loads(ws.recv(timeout=15))["seq"] == message["seq"]
    finally:
        stack.close()
        server.terminate()
        server.wait(30)
    assert server.returncode == 0 and not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    log.unlink()


def test_worker_roles_cover_the_queues_and_beat_runs_exactly_once():
    roles = {}
    for name in OURS:
        argv = as_argv(SERVICES[name]["command"])
        if argv[:3] == ["python", "-m", "workers"]:
            roles[name] = argv[3]
    assert roles == {
        "controller": "controller",
        "beat": "beat",
        "gpu0": "gpu",
        "gpu1": "gpu",
        "cpu-worker": "gpu",
    }
    assert "deploy" not in SERVICES["beat"] or SERVICES["beat"]["deploy"].get("replicas", 1) == 1
    # The two kinds of gpu-queue worker are alternatives, chosen by profile.
    assert SERVICES["cpu-worker"]["profiles"] == ["cpu"]
    assert SERVICES["gpu0"]["profiles"] == SERVICES["gpu1"]["profiles"] == ["gpu"]
    assert EXAMPLE["COMPOSE_PROFILES"][0] in ("cpu", "gpu")


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_the_images_default_commands_exist_in_the_code(path, capsys):
    instructions = dockerfile_instructions(DOCKERFILES[path])
    cmds = [json.loads(args) for instruction, args in instructions if instruction == "CMD"]
    assert len(cmds) == 1, f"{path}: one CMD, in JSON form"
    check_program(cmds[0], capsys)


# -- GPUs ----------------------------------------------------------------------------------------
def test_each_gpu_service_reserves_its_own_gpu_and_the_cpu_services_none(capsys):
    seen = set()
    for name in OURS:
        service = SERVICES[name]
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if service["build"]["dockerfile"] != CUDA_DOCKERFILE:
            assert not devices, f"{name}: the CPU image reserves no GPU"
            continue
        assert len(devices) == 1, name
        device = devices[0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert "count" not in device, f"{name}: device_ids, not count"
        assert len(device["device_ids"]) == 1, f"{name}: one GPU per worker service"
        (gpu,) = device["device_ids"]
        assert name == f"gpu{gpu}", f"{name} reserves GPU {gpu}"
        assert gpu not in seen, f"GPU {gpu} reserved twice"
        seen.add(gpu)
        # The container sees only its reserved GPU, as device 0.
        out = run_workers_dry(as_argv(service["command"])[3:], capsys)
        lines = out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("CUDA_VISIBLE_DEVICES=0 "), out
        assert " -Q gpu " in lines[0] and "--concurrency=1" in lines[0]
    assert seen == {"0", "1"}


def test_the_cpu_worker_consumes_the_gpu_queue_without_a_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = run_workers_dry(as_argv(SERVICES["cpu-worker"]["command"])[3:], capsys)
    lines = out.strip().splitlines()
    assert len(lines) == 1 and " -Q gpu " in lines[0] and "-n cpu@%h" in lines[0], out


# -- healthchecks --------------------------------------------------------------------------------
def test_postgres_redis_and_web_have_healthchecks():
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"][-1]
    redis = SERVICES["redis"]["healthcheck"]["test"][-1]
    assert "redis-cli ping" in redis
    # redis-cli authenticates with REDISCLI_AUTH: the server requires the password.
    assert SERVICES["redis"]["environment"]["REDISCLI_AUTH"] == "${REDIS_PASSWORD}"
    assert "--requirepass" in SERVICES["redis"]["command"]
    assert SERVICES["web"]["healthcheck"]["test"][0] == "CMD"


@pytest.mark.parametrize("service", [name for name in OURS if "healthcheck" in SERVICES[name]])
def test_healthcheck_commands_exist_and_ping_the_workers_own_node_name(service, capsys):
    test = SERVICES[service]["healthcheck"]["test"]
    argv = test[1:] if test[0] == "CMD" else shell_program(test[1])
    assert test[0] in ("CMD", "CMD-SHELL")
    check_program(argv, capsys)
    if argv[0] == "celery":
        assert argv[3:5] == ["inspect", "ping"], argv
        destination = interpolate(argv[argv.index("--destination") + 1], {})
        out = run_workers_dry(as_argv(SERVICES[service]["command"])[3:], capsys)
        names = re.findall(r" -n (\S+)", out)
        assert names == [destination.replace("$HOSTNAME", "%h")], (names, destination)


@pytest.mark.django_db
def test_the_web_healthcheck_url_needs_no_login(client):
    from django.urls import resolve

    url = SERVICES["web"]["healthcheck"]["test"][-1]
    path = "/" + url.split("/", 3)[3]
    assert resolve(path).url_name == "healthz"
    response = client.get(path, headers={"host": "localhost"})
    assert response.status_code == 200


class _Stub(http.server.BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, dict]] = {}
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Stub.seen.append(dict(self.headers))
        status, headers = _Stub.answers[self.path]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.seen.clear()
    _Stub.answers = {
        "/ok": (200, {}),
        "/https": (301, {"Location": "https://example.com/ok"}),
        "/elsewhere": (302, {"Location": "http://example.com/login"}),
        "/badhost": (400, {}),
        "/error": (500, {}),
    }
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "path, healthy", [("/ok", True), ("/https", True), ("/elsewhere", False), ("/badhost", False), ("/error", False)]
)
def test_the_web_healthcheck_script_passes_on_200_or_the_https_redirect_only(stub_server, path, healthy):
    env = {**os.environ, "DJANGO_ALLOWED_HOSTS": ".example.com, other.example.org"}
    result = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), stub_server + path],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode == 0) is healthy, result.stdout + result.stderr
    assert result.stdout.strip(), "says why in one line"
    headers = {k.lower(): v for k, v in _Stub.seen[-1].items()}
    assert headers["host"] == "example.com"
    assert headers["x-forwarded-proto"] == "https"


def test_the_web_healthcheck_script_fails_when_nothing_answers():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), f"http://127.0.0.1:{port}/accounts/login/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "ConnectionRefusedError" in result.stdout


@pytest.mark.parametrize(
    "allowed, host",
    [(None, "localhost"), ("*", "localhost"), ("nas.example.com,x", "nas.example.com"), ("[::1]", "[::1]")],
)
def test_the_healthcheck_sends_a_host_django_accepts(allowed, host):
    sys.path.insert(0, str(DOCKER))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(DOCKER))
    assert healthcheck.host_header(allowed) == host


# -- environment variables -----------------------------------------------------------------------
def test_the_scan_finds_what_the_code_reads():
    # Guards the regular expressions: names read through each style of access.
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "NAS_LEASE_SECONDS", "NAS_WORKER_DB_REUSE_MAX"} <= READ
    assert {"NAS_DATA_ROOT", "NAS_CACHE_DIR", "DJANGO_SETTINGS_MODULE"} <= READ


def test_every_variable_env_example_sets_is_read_by_the_code_or_by_compose():
    unknown = set(EXAMPLE) - READ - COMPOSE_ONLY - SERVER_VARS
    assert not unknown, f"env.example sets variables nothing reads: {sorted(unknown)}"
    assert not (COMPOSE_ONLY & READ), "a compose-only variable is read by the code: move it"
    assert not (SERVER_VARS & READ), "a web server variable is read by the code: move it"
    assert set(EXAMPLE) >= SERVER_VARS
    text = (DOCKER / "compose.yaml").read_text()
    for name in SERVER_VARS:
        assert "${" + name in " ".join(as_argv(SERVICES["web"]["command"])), f"the web command ignores {name}"
        assert text.count("${" + name) == 1, f"{name} is for the web service only"


def test_every_variable_the_code_reads_is_documented_in_env_example():
    missing = {name for name in READ - NOT_A_SETTING - set(EXAMPLE) if not RUNTIME_VARS.match(name)}
    assert not missing, f"read by the code, missing from docker/env.example: {sorted(missing)}"


def test_every_compose_only_variable_is_used_by_compose():
    text = (DOCKER / "compose.yaml").read_text()
    for name in COMPOSE_ONLY - {"COMPOSE_PROFILES"}:
        assert "${" + name in text, f"{name} is documented as a compose variable but compose.yaml never uses it"
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert referenced <= set(EXAMPLE), f"compose.yaml uses undocumented variables: {sorted(referenced - set(EXAMPLE))}"


@pytest.mark.parametrize("service", OURS)
def test_every_variable_a_service_sets_is_read_by_the_code(service):
    names = set(SERVICES[service].get("environment") or {})
    assert names <= READ, f"{service} sets variables the code never reads: {sorted(names - READ)}"


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_every_variable_an_image_sets_is_read_by_the_code_or_the_runtime(path):
    names = set(dockerfile_env(DOCKERFILES[path]))
    unknown = {n for n in names if n not in READ and not RUNTIME_VARS.match(n)}
    assert not unknown, f"{path} sets variables nothing reads: {sorted(unknown)}"


def test_every_documented_setting_is_in_the_operations_table():
    doc = (ROOT / "docs" / "operations.md").read_text()
    # The first cell of a table row may name several variables: | `NAS_LEASE_SECONDS` / `NAS_MAX_ATTEMPTS` |
    first_cells = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `")]
    rows = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}
    missing = {name for name in READ - NOT_A_SETTING if not RUNTIME_VARS.match(name)} | COMPOSE_ONLY | SERVER_VARS
    missing -= rows
    assert not missing, f"docs/operations.md has no table row for {sorted(missing)}"


SETTINGS_DUMP = """
import json, re
import webapp.settings as s
# Object addresses differ between runs: drop them.
print(json.dumps({k: re.sub(r" at 0x[0-9a-f]+", "", repr(getattr(s, k))) for k in dir(s) if k.isupper()}))
"""


def load_settings(env: dict[str, str]) -> dict[str, str]:
    ours = ("DJANGO_", "DATABASE_", "NAS_", "REDIS_", "CELERY_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS_DUMP],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("service", ["web", "controller"])
def test_env_example_defaults_are_the_code_defaults(service):
    """Uncommenting a "# NAME=default" line of env.example changes no setting of a container
    (but for the variables its service's `environment:` sets, which win over docker/.env)."""
    env = container_env(service, example_env())
    app_env = {k: v for k, v in env.items() if k in READ}
    shown = {k: v for k, (v, active) in EXAMPLE.items() if not active and k in READ}
    own = set(SERVICES[service].get("environment") or {})
    defaults = {k: v for k, v in shown.items() if k not in NOT_THE_CODE_DEFAULT and k not in own}
    assert defaults, "env.example shows no defaults"
    assert load_settings(app_env) == load_settings({**app_env, **defaults})


def test_the_web_service_pools_its_database_connections_and_no_other_service_does():
    size = int(SERVICES["web"]["environment"]["DATABASE_POOL_SIZE"])
    assert size * int(EXAMPLE["WEB_CONCURRENCY"][0]) <= 50, "half of PostgreSQL's max_connections at most"
    pools = {}
    for name in OURS:
        databases = load_settings(container_env(name, example_env()))["DATABASES"]
        pools[name] = f"'pool': {{'min_size': 1, 'max_size': {size}," in databases
        # Django refuses a pool beside persistent connections; the pool keeps them instead.
        assert not pools[name] or "'CONN_MAX_AGE': 0" in databases, databases
    assert pools == {name: name == "web" for name in OURS}
    # The workers keep persistent connections of their own (workers/__init__.py); even a
    # DATABASE_CONN_MAX_AGE in docker/.env does not stop the web service's pool.
    databases = load_settings({**container_env("web", example_env()), "DATABASE_CONN_MAX_AGE": "600"})["DATABASES"]
    assert "'pool'" in databases and "'CONN_MAX_AGE': 0" in databases


def test_the_compose_environment_passes_the_deploy_checks():
    env = container_env("web", example_env())
    assert env["DATABASE_URL"] == f"postgres://nasnet:{env['POSTGRES_PASSWORD']}@postgres:5432/nasnet"
    assert env["REDIS_URL"] == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "NAS_", "REDIS_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**base, **env, "DJANGO_SETTINGS_MODULE": "webapp.settings"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_blank_secrets_of_env_example_stop_compose_or_the_app():
    env = {name: value for name, (value, active) in EXAMPLE.items() if active}
    assert env["DJANGO_SECRET_KEY"] == "" and env["DJANGO_DEBUG"] == "0"  # settings refuse to start
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"], env)
    with pytest.raises(ValueError, match="REDIS_PASSWORD"):
        interpolate(" ".join(SERVICES["redis"]["command"]), env)


# -- volumes -------------------------------------------------------------------------------------
def test_volumes_are_declared_and_mounted_where_the_settings_point():
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for entry in service.get("volumes", []):
            source, target, _ = volume_source(entry)
            assert "/" not in source, f"{name}: bind mounts only through DATA_VOLUME / ARTIFACTS_VOLUME"
            assert source in declared, f"{name} mounts undeclared volume {source}"
            used.add(source)
    assert used == declared, f"declared but unused: {sorted(declared - used)}"
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]

    for path in DOCKERFILES.values():
        env = dockerfile_env(path)
        roots = (env["NAS_DATA_ROOT"], env["NAS_ARTIFACTS_ROOT"], env["NAS_CACHE_DIR"])
        assert roots == ("/data", "/artifacts", "/cache")

    def mounts(name):
        return {volume_source(e)[1]: volume_source(e)[2] for e in SERVICES[name].get("volumes", [])}

    # target -> read-only?
    assert mounts("web") == {"/data": True, "/artifacts": True}  # validates data set names, serves bundles
    for name in ("controller", "gpu0", "gpu1", "cpu-worker"):
        # data read-only; bundles and the decoded cache written
        assert mounts(name) == {"/data": True, "/artifacts": False, "/cache": False}, name
    assert mounts("beat") == mounts("migrate") == {}


def test_the_data_and_artifacts_volumes_can_be_host_folders():
    entry = SERVICES["gpu0"]["volumes"][0]
    assert interpolate(entry, {"DATA_VOLUME": "/srv/datasets"}) == "/srv/datasets:/data:ro"
    entry = SERVICES["gpu0"]["volumes"][1]
    assert interpolate(entry, {"ARTIFACTS_VOLUME": "/mnt/nfs/nasnet"}) == "/mnt/nfs/nasnet:/artifacts"


# -- images --------------------------------------------------------------------------------------
def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line.strip())
        if match:
            pins[match[1].lower()] = match[3]
    return pins


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_the_images_use_the_projects_python_and_copy_files_that_exist(path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = pyproject["tool"]["ruff"]["target-version"]  # "py311"
    minor = f"{target[2]}.{target[3:]}"
    assert pyproject["project"]["requires-python"] == f">={minor}"
    instructions = dockerfile_instructions(DOCKERFILES[path])
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    assert froms == [f"python:{minor}-slim-bookworm"], froms
    copies = [shlex.split(args) for instruction, args in instructions if instruction == "COPY"]
    assert copies, path
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{path}: COPY {source}: not in the repository"
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{path}: runs as a non-root user"
    run = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert "pip install -r requirements.txt" in run
    for directory in ("/data", "/artifacts", "/cache"):
        assert directory in run, f"{path}: creates the mount point {directory} for the non-root user"


def test_the_cuda_image_installs_the_torch_of_requirements_txt():
    pins = requirement_pins()
    assert {"torch", "torchvision"} <= set(pins)
    for path in DOCKERFILES.values():
        text = path.read_text()
        for package, version in re.findall(r"\b(torch|torchvision)==([0-9][^\s'\"]*)", text):
            assert version == pins[package], f"{path.name} pins {package}=={version}, requirements.txt {pins[package]}"
    cuda = " ".join(a for i, a in dockerfile_instructions(DOCKERFILES[CUDA_DOCKERFILE]) if i == "RUN")
    assert "--index-url" not in cuda and "download.pytorch.org" not in cuda, "the CUDA build comes from PyPI"


def test_the_cpu_image_takes_the_torch_pins_from_requirements_txt():
    run = " ".join(a for i, a in dockerfile_instructions(DOCKERFILES["docker/Dockerfile"]) if i == "RUN")
    match = re.search(r"grep -E '([^']+)' requirements\.txt", run)
    assert match and "download.pytorch.org/whl/cpu" in run
    picked = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if re.search(match[1], line)]
    pins = requirement_pins()
    assert picked == [f"torch=={pins['torch']}", f"torchvision=={pins['torchvision']}"]


def test_the_web_image_collects_static_files_where_whitenoise_serves_them():
    run = [a for i, a in dockerfile_instructions(DOCKERFILES["docker/Dockerfile"]) if i == "RUN"]
    assert any("manage.py collectstatic --noinput" in a for a in run)
    from django.conf import settings

    assert "whitenoise.middleware.WhiteNoiseMiddleware" in settings.MIDDLEWARE
    assert "DJANGO_STATIC_ROOT" not in dockerfile_env(DOCKERFILES["docker/Dockerfile"])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, enough for our patterns: globs, '**/', '!' exceptions."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        globs = [pattern]
        if pattern.startswith("**/"):
            globs.append(pattern[3:])
        if any(fnmatch.fnmatchcase(prefix, g) for prefix in prefixes for g in globs):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_need_and_drops_secrets_and_state():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["requirements.txt", "manage.py", "docker/healthcheck.py", "webapp/settings.py", "workers/__main__.py"]
    needed += ["nas_engine/data.py", "templates/base.html", "webapp/front/static", "pyproject.toml"]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not dockerignored(path, patterns), f".dockerignore drops {path}"
    dropped = ["docker/.env", ".env", ".git/config", ".venv/bin/python", "data/cifar10", "artifacts/jobs/1"]
    dropped += [".cache/datasets/x.pt", "db.sqlite3", "webapp/__pycache__/settings.cpython-311.pyc", "staticfiles/x"]
    dropped += ["celerybeat-schedule", "runs/search.pt"]
    for path in dropped:
        assert dockerignored(path, patterns), f".dockerignore should drop {path}"
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


@pytest.mark.django_db
def test_healthz_reports_the_database_and_the_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_healthz_is_503_naming_the_broker_when_it_is_down(client):
    from webapp.celery import app

    old = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        response = client.get("/healthz")
    finally:
        app.conf.broker_url = old
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok" and body["broker"] != "ok"
