"""Imports go one way: nas_engine <- webapp <- workers (tests/import_graph.py builds the graph).

- nas_engine is pure Python + PyTorch: it imports none of django, celery, channels, the
  web app or the workers;
- the web app never imports the workers (it sends tasks by name through webapp.dispatch);
- no two modules import each other, directly or round a longer loop, counting imports
  inside functions too.
"""

import subprocess
import sys

from tests import import_graph


def test_the_graph_sees_every_package_and_real_edges():
    edges, external = import_graph.graph()
    assert {"nas_engine.cli", "webapp.dispatch", "workers.advance"} <= set(edges)
    assert "webapp.dispatch" in edges["workers.advance"]  # a known edge: the graph is not empty
    assert "torch" in external["nas_engine.network"]


def test_no_module_imports_against_the_layering():
    edges, external = import_graph.graph()
    assert import_graph.upward(edges, external) == []


def test_no_import_cycles():
    edges, _ = import_graph.graph()
    assert import_graph.cycles(edges) == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """The checker itself, on a tiny tree of its own: it must fail when it should."""
    for package, body in {
        "nas_engine": {"a.py": "from nas_engine import b\nimport django\n", "b.py": "import nas_engine.a\n"},
        "webapp": {"v.py": "def f():\n    from workers import t\n"},
        "workers": {"t.py": "from webapp import v\n"},
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        for name, text in body.items():
            (tmp_path / package / name).write_text(text)
    edges, external = import_graph.graph(tmp_path)
    assert import_graph.cycles(edges) == [["nas_engine.a", "nas_engine.b"], ["webapp.v", "workers.t"]]
    assert import_graph.upward(edges, external) == ["nas_engine.a -> django", "webapp.v -> workers.t"]


FORBIDDEN_IN_ENGINE = ("django", "celery", "channels", "rest_framework", "webapp", "workers")


def test_importing_the_whole_engine_loads_no_web_module():
    code = (
        "import sys, pkgutil, importlib, nas_engine\n"
        "for m in pkgutil.walk_packages(nas_engine.__path__, 'nas_engine.'):\n"
        "    if m.name != 'nas_engine.__main__': importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_ENGINE!r}]\n"
        "print(bad); assert not bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_whole_web_app_loads_no_worker_module():
    """At run time too: every webapp module imported after django.setup(), and still no
    `workers` module in the process (the web server never loads the task code or torch's
    training loop through it)."""
    code = (
        "import os, sys, pkgutil, importlib, django\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'webapp.test_settings'\n"
        "django.setup()\n"
        "import webapp\n"
        "for m in pkgutil.walk_packages(webapp.__path__, 'webapp.'):\n"
        "    if '.migrations' not in m.name: importlib.import_module(m.name)\n"
        "from webapp import dispatch\n"
        "dispatch.app.tasks  # finalizing the app must not import its task module either\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'workers']\n"
        "print(bad); assert not bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
