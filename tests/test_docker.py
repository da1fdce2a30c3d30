"""docker/ and the operations docs, checked without a Docker engine.

The compose file and the env file parse; every command a container runs (service commands,
healthchecks, the images' CMDs) exists in the code with those options; every variable they
set is read by the code, and every variable the code reads is documented in env.example and
in docs/operations.md with its true default; volumes are declared and mounted where the
settings point; each GPU service reserves its own device; the images build from files that
exist, on the project's Python, with requirements.txt's torch pin; the web healthcheck
passes and fails when it should.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
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
    assert {"postgres", "redis", "web", "controller", "beat", "gpu0", "gpu1", "cpu-worker"} <= set(SERVICES)
    assert set(OURS) == {"web", "controller", "beat", "gpu0", "gpu1", "cpu-worker"}
    for name in OURS:
        assert SERVICES[name]["env_file"] == [{"path": ".env", "required": True}], name
        assert SERVICES[name]["build"]["context"] == "..", name
        assert SERVICES[name]["build"]["dockerfile"] in DOCKERFILES, name
        assert "command" in SERVICES[name], f"{name}: no command"


@pytest.mark.parametrize("service", OURS)
def test_every_service_command_exists_in_the_code(service, capsys):
    for argv in segments(as_argv(SERVICES[service]["command"])):
        check_program(argv, capsys)


def test_the_web_service_migrates_then_serves_the_asgi_application(capsys):
    steps = segments(as_argv(SERVICES["web"]["command"]))
    assert [check_program(argv, capsys) for argv in steps] == ["migrate", "webapp.asgi:application"]
    assert "--noinput" in steps[0]
    daphne = steps[1]
    assert daphne[daphne.index("-b") + 1] == "0.0.0.0"
    port = daphne[daphne.index("-p") + 1]
    assert [p.rsplit(":", 1)[1] for p in SERVICES["web"]["ports"]] == [port]
    assert f":{port}/" in SERVICES["web"]["healthcheck"]["test"][-1]


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
def test_postgres_redis_and_web_have_healthchecks_and_the_workers_wait_for_them():
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"][-1]
    redis = SERVICES["redis"]["healthcheck"]["test"][-1]
    assert "redis-cli ping" in redis
    # redis-cli authenticates with REDISCLI_AUTH: the server requires the password.
    assert SERVICES["redis"]["environment"]["REDISCLI_AUTH"] == "${REDIS_PASSWORD}"
    assert "--requirepass" in SERVICES["redis"]["command"]
    assert SERVICES["web"]["healthcheck"]["test"][0] == "CMD"
    healthy = {"condition": "service_healthy"}
    assert SERVICES["web"]["depends_on"] == {"postgres": healthy, "redis": healthy}
    for name in OURS:
        if name != "web":
            assert SERVICES[name]["depends_on"] == {"postgres": healthy, "redis": healthy, "web": healthy}, name


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
    unknown = set(EXAMPLE) - READ - COMPOSE_ONLY
    assert not unknown, f"env.example sets variables nothing reads: {sorted(unknown)}"
    assert not (COMPOSE_ONLY & READ), "a compose-only variable is read by the code: move it"


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
    missing = {name for name in READ - NOT_A_SETTING if not RUNTIME_VARS.match(name)} | COMPOSE_ONLY
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


def test_env_example_defaults_are_the_code_defaults():
    """Uncommenting a "# NAME=default" line of env.example changes no setting."""
    env = container_env("web", example_env())
    app_env = {k: v for k, v in env.items() if k in READ}
    shown = {k: v for k, (v, active) in EXAMPLE.items() if not active and k in READ}
    defaults = {k: v for k, v in shown.items() if k not in NOT_THE_CODE_DEFAULT}
    assert defaults, "env.example shows no defaults"
    assert load_settings(app_env) == load_settings({**app_env, **defaults})


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
    assert mounts("beat") == {}


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
