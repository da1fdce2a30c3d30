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
