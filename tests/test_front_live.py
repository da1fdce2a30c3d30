"""The live search pages: chart.json (reduced on the server), cells.svg, the DOM contract
the browser code and the browser tests rely on, and the index sparkline."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.test_front_helpers import SPEC, make_architecture, make_search
from webapp.front import charts
from webapp.live import events as live
from webapp.searches import models as m


# -- charts.py: pure functions ---------------------------------------------------------------
def test_downsample_caps_the_count_and_keeps_the_best_and_the_worst():
    points = [(i, ((i * 7919) % 1000) / 1000) for i in range(20000)]
    points[12345] = (12345, 0.999999)
    points[777] = (777, -1.0)
    shown = charts.downsample(points, 2000)
    assert len(shown) <= 2000
    assert (12345, 0.999999) in shown and (777, -1.0) in shown
    assert [p[0] for p in shown] == sorted(p[0] for p in shown)  # still in x order
    assert charts.downsample(points[:50], 2000) == points[:50]


def test_thin_keeps_the_last_item_and_caps_the_count():
    items = list(range(10001))
    thinned = charts.thin(items, 2000)
    assert len(thinned) <= 2000 and thinned[0] == 0 and thinned[-1] == 10000
    assert charts.thin(items[:10], 2000) == items[:10]


def test_running_best_is_its_change_points():
    points = [(0, 0.5), (1, 0.4), (2, 0.6), (3, 0.6), (4, 0.55), (7, 0.9), (8, 0.1)]
    assert charts.running_best(points) == [(0, 0.5), (2, 0.6), (7, 0.9)]


def test_moving_average_is_a_trailing_mean():
    points = [(i, float(v)) for i, v in enumerate([1, 2, 3, 4, 5])]
    assert charts.moving_average(points, 2) == [(0, 1.0), (1, 1.5), (2, 2.5), (3, 3.5), (4, 4.5)]
    assert charts.moving_average(points, 10)[-1] == (4, 3.0)


def test_policy_labels_follow_the_controllers_decisions():
    from nas_engine.space import SearchSpace

    space = SearchSpace()
    labels, options = charts.policy_labels(space)
    assert len(labels) == len(options) == 50 == len(space.decision_sizes())
    assert labels[:5] == ["normal b1 in1", "normal b1 in2", "normal b1 op1", "normal b1 op2", "normal b1 comb"]
    assert labels[25] == "reduce b1 in1" and labels[-1] == "reduce b5 comb"
    assert [len(o) for o in options] == space.decision_sizes()
    assert options[5] == ["h0", "h1", "b1"] and options[2][0] == "identity" and options[4] == ["add", "concat"]


def test_best_so_far_buckets_carry_the_best_forward():
    assert charts.best_so_far_buckets([(2, 0.5), (3, 0.4), (5, 0.7), (6, None)]) == [0.5, 0.5, 0.5, 0.7]
    assert charts.best_so_far_buckets([]) == []


def test_sparkline_is_numbers_only_svg():
    svg = charts.sparkline_svg([0.5, 0.6, 0.6, 0.8])
    assert svg.startswith('<svg class="spark"') and "<polyline" in svg
    assert charts.sparkline_svg([]) == ""
    assert "<polyline" in charts.sparkline_svg([0.5])  # one value: a flat line


# -- chart.json ------------------------------------------------------------------------------
@pytest.fixture
def search(personas):
    search = make_search(personas.alpha, personas.owner, name="alpha digits", children=10)
    for i, reward in enumerate([0.5, 0.4, None, 0.7, 0.6]):
        status = m.RUN_FAILED if reward is None else m.RUN_SUCCEEDED
        make_architecture(search, i, reward=reward, run_status=status)
    make_architecture(search, 5, reward=None, run_status=m.RUN_RUNNING)
    return search


def chart(client, search):
    response = client.get(f"/searches/{search.id}/chart.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    return response.json()


def test_chart_json_holds_rewards_running_best_and_moving_average(client, personas, search):
    client.force_login(personas.member)
    data = chart(client, search)
    r = data["rewards"]
    assert r["total"] == 4
    assert (r["x"], r["y"]) == ([0, 1, 3, 4], [0.5, 0.4, 0.7, 0.6])  # the failed child is left out
    assert (r["best"]["x"], r["best"]["y"]) == ([0, 3], [0.5, 0.7])
    ma = r["moving_average"]
    assert ma["window"] == 5 and ma["x"] == [0, 1, 3, 4]
    assert ma["y"] == pytest.approx([0.5, 0.45, 1.6 / 3, 0.55])
    assert ma["tail"] == [0.5, 0.4, 0.7, 0.6]
    assert sorted(r["recent"]) == sorted(search.architectures.filter(reward__isnull=False).values_list("id", flat=True))
    assert data["last_seq"] == 0  # no event yet
    assert data["status"]["best_architecture"] == search.best_architecture_id
    assert data["status"]["best_reward"] == 0.7 and data["best_sample_index"] == 3
    assert [c["sample_index"] for c in data["children"]] == [5, 4, 3, 2, 1, 0]
    running = data["children"][0]
    assert running["status"] == "running" and running["epoch"] == 0 and running["epochs"] == 1
    assert data["children"][1]["epoch"] == 2 and data["children"][1]["epochs"] == 2


def test_chart_json_last_seq_and_controller_history(client, personas, search):
    policy = [[0.25, 0.75]] + [[1.0]] * 49
    for step in range(3):
        stats = SimpleNamespace(
            step=step, loss=0.1 * step, entropy=3.0 - step, mean_reward=0.5, baseline=0.25 * step,
            approx_kl=0.01, clip_fraction=0.0, policy=policy if step == 2 else [[0.5, 0.5]],
        )  # fmt: skip
        live.publish(search.id, *live.controller(stats, step))
    live.publish(search.id, *live.status(search))
    client.force_login(personas.owner)
    data = chart(client, search)
    assert data["last_seq"] == 4
    # the page's first status is what a search.status event carries (one applyStatus for both)
    assert data["status"] == live.status(m.Search.objects.get(pk=search.pk))[1]["search"]
    assert "spec" not in data["status"] and data["status"]["owner"] == personas.owner.username
    assert data["rl"] is True
    ctl = data["controller"]
    assert ctl["step"] == [0, 1, 2] and ctl["entropy"] == [3.0, 2.0, 1.0] and ctl["baseline"] == [0.0, 0.25, 0.5]
    assert "policy" not in ctl
    assert data["policy"]["step"] == 2 and data["policy"]["probs"] == policy
    assert data["policy"]["labels"][2] == "normal b1 op1" and len(data["policy"]["options"]) == 50


def test_chart_json_of_a_non_rl_search_has_no_controller(client, personas):
    spec = {**SPEC, "strategy": {"name": "random", "settings": {}}}
    search = m.Search.objects.create(
        team=personas.alpha, owner=personas.owner, name="random", spec=spec, status=m.RUNNING, children_total=4
    )
    client.force_login(personas.owner)
    data = chart(client, search)
    assert data["rl"] is False and data["controller"] is None and data["policy"] is None
    assert data["rewards"]["x"] == [] and data["rewards"]["best"]["x"] == []
    assert 'id="controller-chart"' not in client.get(f"/searches/{search.id}").content.decode()


def test_chart_json_downsamples_a_large_search_and_keeps_its_best(client, personas):
    n = 5000
    search = make_search(personas.alpha, personas.owner, children=n)
    genotype = make_architecture(search, 0).genotype  # no reward: not on the chart
    archs = m.Architecture.objects.bulk_create(
        m.Architecture(search=search, sample_index=i, genotype=genotype, canonical_hash=f"h{i}", told=True,
                       reward=0.3 + ((i * 37) % 100) / 1000)
        for i in range(1, n)
    )  # fmt: skip
    archs[3210].reward = 0.97
    m.ChildRun.objects.bulk_create(
        m.ChildRun(architecture=a, status=m.RUN_SUCCEEDED, attempt=1, reward=a.reward) for a in archs
    )
    client.force_login(personas.owner)
    with CaptureQueriesContext(connection) as queries:
        data = chart(client, search)
    r = data["rewards"]
    assert r["total"] == n - 1
    assert 0 < len(r["x"]) <= charts.MAX_POINTS and len(r["x"]) == len(r["y"])
    assert 0.97 in r["y"] and r["x"][r["y"].index(0.97)] == archs[3210].sample_index
    assert r["best"]["y"][-1] == 0.97 and len(r["best"]["x"]) < 50  # change points only
    assert len(r["moving_average"]["x"]) <= charts.MAX_POINTS
    assert r["moving_average"]["x"][-1] == n - 1
    assert len(r["recent"]) == 200
    assert len(queries) < 20  # not one query per architecture


def test_chart_json_plots_stopped_children_apart_from_the_rewards(client, personas):
    """A stopped child's rung value is no reward: not among the rewards, the running best or
    the moving average, but a series of its own; the children table gets it as rung_value."""
    from tests.test_front_helpers import ES_SPEC, make_child

    search = make_search(personas.alpha, personas.owner, children=10)
    search.spec = ES_SPEC
    search.save()
    make_child(search, 0, m.RUN_SUCCEEDED, done=9, value=0.6, reward=0.6)
    stopped = make_child(search, 1, m.RUN_STOPPED, done=1, value=0.35)
    make_child(search, 2, m.RUN_STOPPED, done=3, value=0.7)  # above the best: still not a reward
    waiting = make_child(search, 3, m.RUN_WAITING, done=1)
    make_child(search, 4, m.RUN_SUCCEEDED, done=9, value=0.5, reward=0.5)
    client.force_login(personas.member)
    r = chart(client, search)["rewards"]
    assert (r["x"], r["y"]) == ([0, 4], [0.6, 0.5]) and r["total"] == 2
    assert (r["best"]["x"], r["best"]["y"]) == ([0], [0.6])
    assert r["moving_average"]["tail"] == [0.6, 0.5]
    assert r["stopped"] == {"total": 2, "x": [1, 2], "y": [0.35, 0.7]}
    assert stopped.id in r["recent"]  # a late child.finished event is not plotted twice
    children = {c["sample_index"]: c for c in chart(client, search)["children"]}
    assert children[1] | {"architecture": 0} == {
        "architecture": 0, "sample_index": 1, "status": "stopped", "epoch": 1, "epochs": 9, "reward": None,
        "rung_value": 0.35, "reused_from": None, "params": stopped.params, "mult_adds": stopped.mult_adds,
    }  # fmt: skip
    assert (children[3]["status"], children[3]["epoch"], children[3]["rung_value"]) == ("waiting", 1, None)
    assert children[3]["architecture"] == waiting.id
    assert (children[0]["reward"], children[0]["rung_value"], children[0]["epoch"]) == (0.6, None, 9)


def test_chart_json_children_name_where_a_reused_reward_was_measured(client, personas):
    from tests.test_front_helpers import make_child

    origin_search = make_search(personas.alpha, personas.owner, name="origin", status=m.FINISHED)
    origin = make_child(origin_search, 5, m.RUN_SUCCEEDED, done=1, value=0.8, reward=0.8)
    search = make_search(personas.alpha, personas.owner)
    own = make_child(search, 0, m.RUN_SUCCEEDED, done=1, value=0.8, reward=0.8)
    make_child(search, 1, m.RUN_REUSED, value=0.8, reward=0.8, reused_from=origin)
    make_child(search, 2, m.RUN_REUSED, value=0.8, reward=0.8, reused_from=own)
    client.force_login(personas.member)
    children = {c["sample_index"]: c for c in chart(client, search)["children"]}
    assert children[1]["reused_from"] == {
        "architecture": origin.id,
        "sample_index": 5,
        "search": origin_search.id,
        "search_name": "origin",
    }
    assert children[2]["reused_from"] == {
        "architecture": own.id,
        "sample_index": 0,
        "search": search.id,
        "search_name": None,
    }
    assert children[0]["reused_from"] is None and children[1]["reward"] == 0.8


@pytest.mark.django_db(transaction=True)
def test_chart_json_reads_one_snapshot_outside_a_transaction(personas, client):
    """Outside the test transaction the view runs its own REPEATABLE READ transaction."""
    p = personas
    search = make_search(p.alpha, p.owner)
    make_architecture(search, 0, reward=0.61)
    live.publish(search.id, *live.status(search))
    client.force_login(p.owner)
    data = chart(client, search)
    assert data["last_seq"] == 1 and data["rewards"]["y"] == [0.61]


def test_chart_json_is_hidden_from_outsiders_and_anonymous(client, personas, search):
    response = client.get(f"/searches/{search.id}/chart.json")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    client.force_login(personas.outsider)
    assert client.get(f"/searches/{search.id}/chart.json").status_code == 404
    client.force_login(personas.staff)
    assert client.get(f"/searches/{search.id}/chart.json").status_code == 200


# -- cells.svg -------------------------------------------------------------------------------
def test_cells_svg_is_an_svg_document_for_the_team_only(client, personas, search):
    arch = search.best_architecture
    url = f"/architectures/{arch.id}/cells.svg"
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    client.force_login(personas.outsider)
    assert client.get(url).status_code == 404
    client.force_login(personas.member)
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("image/svg+xml")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response["Content-Security-Policy"]
    body = response.content.decode()
    assert body.lstrip().startswith(("<svg", "<?xml")) and body.rstrip().endswith("</svg>")
    assert "<script" not in body.lower()
    assert client.get("/architectures/999999/cells.svg").status_code == 404


def test_cells_svg_of_a_genotype_that_does_not_parse_is_404(client, personas, search):
    arch = make_architecture(search, 9)
    m.Architecture.objects.filter(pk=arch.pk).update(genotype={"normal": "<script>alert(1)</script>"})
    client.force_login(personas.owner)
    response = client.get(f"/architectures/{arch.id}/cells.svg")
    assert response.status_code == 404 and b"<script>alert" not in response.content


# -- the DOM contract of the live search page ------------------------------------------------
def test_search_page_has_the_live_dom_contract(client, personas, search):
    client.force_login(personas.member)
    body = client.get(f"/searches/{search.id}").content.decode()
    assert re.search(r'<div id="reward-chart"[^>]* data-points="0"', body)
    best = search.best_architecture
    match = re.search(r'<div id="best-cells"[^>]*data-architecture="(\d+)"[^>]*>\s*<svg', body)
    assert match and int(match.group(1)) == best.id
    assert re.search(r'id="live-state"[^>]*>connecting…<', body)
    assert 'id="search-status"' in body and 'data-search-status="running"' in body
    assert '<table id="children">' in body
    for arch in search.architectures.all():
        assert f'<tr data-architecture="{arch.id}">' in body
    assert "2/2" in body and "0/1" in body  # epoch progress of a finished and a running child
    assert 'data-action="cancel"' in body and 'data-action="resume" disabled' in body
    assert 'id="controller-chart"' in body and 'id="policy-heatmap"' in body  # PPO
    assert "/static/vendor/plotly/plotly.min.js" in body and "/static/front/search_live.js" in body
    assert "cdn" not in body.lower()
    config = json.loads(re.search(r'<script id="live-config" type="application/json">(.*?)</script>', body).group(1))
    assert config["chart_url"] == f"/searches/{search.id}/chart.json"
    assert config["ws_path"] == f"/ws/searches/{search.id}/"
    assert config["transitions"]["resume"] == ["paused"] and config["rl"] is True and config["live_table"] is True


def test_search_page_without_a_best_has_an_empty_best_cells(client, personas):
    search = make_search(personas.alpha, personas.owner)
    client.force_login(personas.owner)
    body = client.get(f"/searches/{search.id}").content.decode()
    assert re.search(r'<div id="best-cells" class="svg-box">', body) and "No reward yet." in body
    assert "Nothing sampled yet." in body


def test_search_page_escapes_user_text(client, personas):
    evil = '<img src=x onerror="alert(1)">' + "n" * 300
    personas.alpha.name = evil[:100]
    personas.alpha.save()
    search = make_search(personas.alpha, personas.owner, name=evil[:200])
    make_architecture(search, 0, reward=0.5)
    client.force_login(personas.owner)
    for url in (f"/searches/{search.id}", "/"):
        body = client.get(url).content.decode()
        assert "<img src=x" not in body and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in body
    response = client.get(f"/searches/{search.id}/chart.json")
    data = response.content.decode()
    assert "<img" not in data and "\\u003cimg" in data  # the name is in the status, escaped
    assert response.json()["status"]["name"] == evil[:200]  # the same text once parsed


# -- the index: sparkline and live rows ------------------------------------------------------
def test_index_draws_a_sparkline_per_search_with_one_query_for_all(client, personas):
    searches = []
    for k in range(3):
        s = make_search(personas.alpha, personas.owner, name=f"s{k}", children=60)
        for i, reward in enumerate([0.2, 0.5, 0.4, 0.8]):
            make_architecture(s, i * 15, reward=reward + k / 100)
        searches.append(s)
    finished = make_search(personas.alpha, personas.owner, name="done", status=m.FINISHED)
    client.force_login(personas.member)
    body = client.get("/").content.decode()
    assert body.count('<svg class="spark"') == 3
    row = re.search(rf'<tr data-search="{searches[0].id}" data-live="1">(.*?)</tr>', body, re.S).group(1)
    points = re.search(r'points="([^"]+)"', row).group(1).split()
    ys = [float(p.split(",")[1]) for p in points]
    assert ys == sorted(ys, reverse=True)  # best so far never falls (SVG y grows downwards)
    assert len(points) == 45 * charts.SPARK_BUCKETS // 60 + 1  # buckets 0 to 22 (index 45 of 60)
    assert f'<tr data-search="{finished.id}">' in body  # ended: no live socket
    assert "/static/front/index_live.js" in body
    with CaptureQueriesContext(connection) as few:
        client.get("/")
    for k in range(3, 8):
        s = make_search(personas.alpha, personas.owner, name=f"s{k}")
        make_architecture(s, 0, reward=0.3)
    with CaptureQueriesContext(connection) as many:
        client.get("/")
    assert len(many) == len(few)
