"""nas_engine is pure Python + PyTorch: it must never import the web or queue layers."""

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "nas_engine"
FORBIDDEN = ("django", "celery", "channels", "rest_framework", "webapp", "workers")


def test_no_engine_module_imports_django_celery_or_channels():
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_whole_engine_loads_no_web_module():
    code = (
        "import sys, pkgutil, importlib, nas_engine\n"
        "for m in pkgutil.walk_packages(nas_engine.__path__, 'nas_engine.'):\n"
        "    if m.name != 'nas_engine.__main__': importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(bad); assert not bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
