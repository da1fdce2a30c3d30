"""The command line: `python -m nas_engine ...`.

One test runs the real entry point in a subprocess; the rest call the same `main(argv)`
in-process (saving a PyTorch import per call) and capture what a terminal would show.
"""

import contextlib
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from nas_engine.cells import NASNET_A
from nas_engine.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help exits 0, a usage error exits 2
            code = exc.code
    return Result(code, out.getvalue(), err.getvalue())


def test_the_module_entry_point_runs_and_fails_like_a_cli():
    ok = subprocess.run([sys.executable, "-m", "nas_engine", "cells"], capture_output=True, text=True)
    assert ok.returncode == 0 and "nasnet_a" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "nas_engine", "describe", "--cell", "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --cell")


def test_every_command_has_help():
    for command in ["cells", "describe", "render", "train", "search"]:
        result = run(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout


def test_a_usage_error_exits_2():
    assert run("describe", "--macro", "mobile").returncode == 2
    assert run("frobnicate").returncode == 2


def test_cells_lists_the_published_cells_and_prints_them_as_json():
    assert "nasnet_a" in run("cells").stdout
    rows = json.loads(run("cells", "--json").stdout)
    assert {r["name"] for r in rows} == {"nasnet_a", "amoebanet_a", "enas"}
    assert rows[0]["genotype"] == NASNET_A.to_dict()


def test_describe_prints_the_paper_figures_as_json():
    result = run("describe", "--macro", "imagenet", "--n-at-p", "4@1056", "--json")
    data = json.loads(result.stdout)
    assert data["params"] == 5_289_978
    assert abs(data["mult_adds"] - 564e6) / 564e6 < 0.03
    large = run(
        "describe", "--macro", "imagenet", "--repeats", "6", "--penultimate-filters", "4032",
        "--stem-multiplier", "3", "--image-size", "331", "--json",
    )  # fmt: skip
    assert json.loads(large.stdout)["params"] == 88_753_150


def test_describe_accepts_a_genotype_file(tmp_path):
    path = tmp_path / "cell.json"
    path.write_text(NASNET_A.to_json(indent=2))
    data = json.loads(run("describe", "--genotype", str(path), "--repeats", "6", "--filters", "32", "--json").stdout)
    assert data["penultimate_filters"] == 768
    assert abs(data["params"] - 3.3e6) / 3.3e6 < 0.03


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "--cell", "nasnet_b"], "--cell: unknown cell 'nasnet_b'"),
        (["describe", "--n-at-p", "6x768"], "n_at_p"),
        (["describe", "-P", "770"], "penultimate_filters: P=770"),
        (["describe", "--repeats", "0"], "repeats"),
        (["describe", "--genotype", "/nonexistent.json"], "--genotype: cannot read"),
        (["train", "--epochs", "0"], "epochs"),
        (["train", "--dataset", "../../etc"], "outside the data root"),
        (["train", "--device", "tpu"], "--device"),
        (["search", "--settings", "{bad"], "--settings: malformed JSON"),
        (["search", "--settings", '{"lr": -1}', "--objective", "synthetic"], "lr"),
        (["search", "--ops", "conv_9x9", "--objective", "synthetic"], "space.ops"),
        (["search", "--resume", "/nonexistent.pt"], "--resume"),
        (
            ["search", "--objective", "synthetic", "--early-stop", "asha", "--reduction-factor", "1"],
            "error: early_stop.reduction_factor: must be an integer >= 2, got 1",
        ),
        (
            ["search", "--objective", "synthetic", "--early-stop", "median", "--min-epochs", "3"],
            "error: early_stop.min_epochs: must be below the children's 3 epochs",
        ),
        (["search", "--objective", "synthetic", "--min-peers", "0"], "early_stop.min_peers"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_status_2(args, message):
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_genotype_file_names_the_block_and_field(tmp_path):
    data = NASNET_A.to_dict()
    data["reduce"]["blocks"][3]["ops"][0] = "conv_9x9"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    result = run("render", "--genotype", str(path), "-o", str(tmp_path / "x.svg"))
    assert result.returncode == 2
    assert "reduce.blocks[3].ops[0]: unknown op 'conv_9x9'" in result.stderr
    assert not (tmp_path / "x.svg").exists()


def test_render_writes_an_svg_with_an_escaped_title(tmp_path):
    out = tmp_path / "cells" / "nasnet.svg"
    result = run("render", "--cell", "nasnet_a", "-o", str(out), "--title", "<b>mine</b>")
    assert result.returncode == 0, result.stderr
    svg = out.read_text()
    ET.fromstring(svg)
    assert "<b>" not in svg and "&lt;b&gt;mine&lt;/b&gt;" in svg


def test_train_writes_a_bundle_on_real_data(tmp_path):
    out = tmp_path / "bundle"
    result = run(
        "train", "--cell", "amoebanet_a", "-N", "1", "-F", "6", "--epochs", "1", "--batch-size", "128",
        "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "ok" and 0 <= summary["reward"] <= 1
    names = {p.name for p in out.iterdir()}
    assert names == {"model.json", "genotype.json", "recipe.json", "metrics.json", "weights.pt"}
    assert json.loads((out / "recipe.json").read_text())["filters"] == 6


def test_a_synthetic_search_checkpoints_and_resumes(tmp_path):
    ckpt = tmp_path / "search.pt"
    common = ["search", "--objective", "synthetic", "--strategy", "ppo", "--json", "--seed", "3"]
    first = run(*common, "--children", "40", "--checkpoint", str(ckpt))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["children"] == 40
    again = run(*common, "--children", "40", "--checkpoint", str(ckpt))
    assert again.returncode == 2 and "exists" in again.stderr
    # Strategy, settings and seed come from the checkpoint.
    resumed = run("search", "--objective", "synthetic", "--json", "--children", "80", "--resume", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr
    straight = run(*common, "--children", "80")
    resumed_summary, straight_summary = json.loads(resumed.stdout), json.loads(straight.stdout)
    assert resumed_summary["children"] == 80
    for key in ("best_reward", "mean_reward_last_100", "best_genotype"):
        assert resumed_summary[key] == straight_summary[key]


def test_resuming_with_another_strategy_or_seed_is_refused(tmp_path):
    ckpt = tmp_path / "search.pt"
    assert run("search", "--objective", "synthetic", "--children", "5", "--checkpoint", str(ckpt)).returncode == 0
    before = ckpt.read_bytes()
    result = run("search", "--objective", "synthetic", "--strategy", "evolution", "--resume", str(ckpt))
    assert result.returncode == 2
    assert "checkpoint.strategy" in result.stderr
    result = run("search", "--objective", "synthetic", "--seed", "9", "--resume", str(ckpt))
    assert result.returncode == 2
    assert "seed: 9 differs" in result.stderr
    assert ckpt.read_bytes() == before


def test_a_real_search_on_digits_records_every_child(tmp_path):
    out = tmp_path / "search"
    result = run(
        "search", "--strategy", "random", "--children", "3", "-N", "1", "-F", "4", "--epochs", "1",
        "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["children"] == 3 and 0 < summary["best_reward"] <= 1
    rows = [json.loads(line) for line in (out / "children.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["status"] in ("ok", "reused") for r in rows)
    assert json.loads((out / "best_genotype.json").read_text()) == summary["best_genotype"]


def test_a_synthetic_search_with_early_stopping_reports_the_epochs_it_trained(tmp_path):
    common = ["search", "--objective", "synthetic", "--strategy", "random", "--children", "60", "--epochs", "9"]
    full = run(*common, "--json")
    asha = run(*common, "--json", "--early-stop", "asha", "--output", str(tmp_path / "asha"))
    assert full.returncode == 0 and asha.returncode == 0, asha.stderr
    full, asha = json.loads(full.stdout), json.loads(asha.stdout)
    assert full["epochs_trained"] == 60 * 9 and full["stopped"] == 0 and full["early_stop"]["rule"] == "none"
    assert asha["epochs_trained"] < full["epochs_trained"] / 2
    assert asha["completed"] + asha["stopped"] + asha["failed"] == 60 and asha["stopped"] > 0
    assert asha["early_stop"] == {
        "rule": "asha",
        "min_epochs": 1,
        "reduction_factor": 3,
        "min_peers": 3,
        "stopped_reward": "rung",
    }
    rows = [json.loads(line) for line in (tmp_path / "asha" / "children.jsonl").read_text().splitlines()]
    assert sum(r["epochs"] for r in rows) == asha["epochs_trained"]
    assert {r["stopped_at"] for r in rows if r["status"] == "stopped"} <= {1, 3}
    best = max(r["reward"] for r in rows if r["status"] == "ok")
    assert asha["best_reward"] == best  # the best final reward, never a rung value


def test_a_search_with_early_stopping_resumes_with_the_checkpoints_settings(tmp_path):
    ckpt = tmp_path / "search.pt"
    common = ["search", "--objective", "synthetic", "--strategy", "evolution", "--json", "--epochs", "9"]
    stopping = ["--early-stop", "median", "--min-epochs", "2"]
    assert run(*common, *stopping, "--children", "30", "--checkpoint", str(ckpt)).returncode == 0
    refused = run(*common, "--early-stop", "asha", "--children", "60", "--resume", str(ckpt))
    assert refused.returncode == 2 and "checkpoint.early_stop" in refused.stderr
    resumed = run(*common, "--children", "60", "--resume", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr
    straight = json.loads(run(*common, *stopping, "--children", "60").stdout)
    resumed = json.loads(resumed.stdout)
    assert resumed["early_stop"] == straight["early_stop"]
    for key in ("best_reward", "epochs_trained", "stopped", "best_genotype"):
        assert resumed[key] == straight[key]


@pytest.mark.slow
def test_a_real_search_stops_the_same_children_with_parallel_children(tmp_path):
    """Trained children wait at a rung for earlier ones, handing them the cores: the result
    is the sequential search's, child for child."""

    def search(parallel):
        out = tmp_path / f"parallel{parallel}"
        result = run(
            "search", "--strategy", "random", "--children", "4", "-N", "1", "-F", "4", "--epochs", "3",
            "--subset-per-class", "60", "--early-stop", "asha", "--parallel", parallel,
            "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in (out / "children.jsonl").read_text().splitlines()]
        return json.loads(result.stdout), [(r["id"], r["status"], r["reward"], r["epochs"]) for r in rows]

    (sequential, rows), (parallel, parallel_rows) = search(1), search(2)
    assert parallel_rows == rows and parallel["epochs_trained"] == sequential["epochs_trained"]
    assert sequential["stopped"] > 0 and sequential["epochs_trained"] < 4 * 3
