"""bench/early_stopping_proxy.py end to end at a tiny scale: both arms, the selection, one
test training per winner, the JSON report, and ASHA held to full training's epoch budget.

Run as a subprocess (the bench puts bench/ on sys.path) on a 20-per-class copy of the
CIFAR-10 JPEGs, or on sklearn digits where ../shared/datasets/cifar10-jpeg/train is absent
(digits ship with scikit-learn, so the test never skips). About 30 s on one core."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "early_stopping_proxy.py"
CIFAR_JPEG = REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "train"

# --quick, made smaller still: 3 children of 4 epochs (rungs 1 and 3), top 2, 2 seeds.
TINY = ["--quick", "--children", "3", "--child-epochs", "4", "--top-k", "2", "--seeds", "2", "--test-epochs", "2"]


def run_bench(tmp_path: Path, *options: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(BENCH), *TINY, "--cache-dir", str(tmp_path / "cache"), "--json", *options]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def check_report(report: dict) -> None:
    assert {"args", "data", "budget", "arms", "diagnostics", "noise", "verdict", "stages", "seconds"} <= set(report)
    budget = report["budget"]["child_epochs"]
    assert budget == 3 * 4  # no duplicates among 3 random cells: full training spends K x E
    full, asha = report["arms"]["full"], report["arms"]["asha"]
    for arm in (full, asha):
        assert {"search", "selection", "winner"} <= set(arm)
        assert {"children", "completed", "stopped", "cut", "child_epochs", "seconds", "best_val_reward"} <= set(
            arm["search"]
        )
        assert {"hash", "val_mean", "val_std", "test_acc"} <= set(arm["winner"])
        assert 0.0 <= arm["winner"]["test_acc"] <= 1.0
        assert arm["winner"]["hash"] in {row["hash"] for row in arm["selection"]["ranking"]}
        assert all(len(row["rewards"]) == 2 for row in arm["selection"]["ranking"])
    assert full["search"]["child_epochs"] == budget
    assert full["search"]["children"] == full["search"]["completed"] == 3
    # ASHA spends the same budget, never more, on at least as many children (rungs 1 and 3 of 4).
    assert asha["search"]["child_epochs"] <= budget
    assert sum(row["epochs"] for row in asha["search"]["children_log"]) == asha["search"]["child_epochs"]
    assert asha["search"]["children"] >= full["search"]["children"]
    assert asha["search"]["early_stop"]["rule"] == "asha" and asha["search"]["rungs"] == [1, 3]
    # A stopped or cut child is never a candidate: its rung value is not a final reward.
    finals = {r["hash"] for r in asha["search"]["children_log"] if r["final_reward"] is not None}
    assert {row["hash"] for row in asha["selection"]["ranking"]} <= finals
    # Same strategy seed: ASHA's first children are full training's, with the same rewards when completed.
    assert report["diagnostics"]["same_first_proposals"] is True
    assert report["diagnostics"]["completed_in_both_same_reward"] is True
    assert {"seed_std", "test_binomial_std"} <= set(report["noise"])
    assert {"difference", "standard_error", "beyond_noise", "same_winner", "text"} <= set(report["verdict"])
    assert "test training" in report["stages"]


def test_quick_run(tmp_path):
    """On a 20-per-class copy of the CIFAR-10 JPEGs; on digits where the folder is absent."""
    if CIFAR_JPEG.is_dir():
        root = tmp_path / "data"
        for name in sorted(os.listdir(CIFAR_JPEG)):
            (root / "cifar" / name).mkdir(parents=True)
            for file in sorted(os.listdir(CIFAR_JPEG / name))[:20]:
                shutil.copy2(CIFAR_JPEG / name / file, root / "cifar" / name / file)
        data = ["--data-root", str(root), "--dataset", "cifar", "--test-size", "40"]
        sizes = ["--search-per-class", "12", "--val-size", "40", "--final-per-class", "12"]
    else:
        data = ["--dataset", "digits", "--image-size", "8", "--test-size", "300"]
        sizes = ["--search-per-class", "20", "--val-size", "60", "--final-per-class", "20"]
    report = run_bench(tmp_path, *data, *sizes)
    check_report(report)
    assert report["data"]["test"] == int(data[-1])
    assert report["data"]["search_val"] == int(sizes[3])
