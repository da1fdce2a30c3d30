"""bench/early_stopping.py end to end at a tiny scale, as a subprocess (the bench puts the
repository on sys.path): its rows, both budgets, the extra PPO rows (a stopped_reward and a
learning rate), and seeded runs repeating exactly. A few seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "early_stopping.py"
TINY = ["--children", "30", "--epochs", "9", "--seeds", "2", "--max-children", "3", "--json"]


def run_bench(*options: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH), *TINY, *options], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_bench_reports_every_variant_against_full_training():
    options = ("--strategies", "random,ppo", "--rules", "asha", "--modes", "drop", "--ppo-asha-lr", "0.002")
    report = run_bench(*options)
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == ["random full", "random asha", "ppo full", "ppo asha", "ppo asha drop", "ppo asha lr 0.002"]
    assert report["config"]["ppo_asha_lr"] == [0.002] and report["config"]["rules"] == ["asha"]
    for label, row in rows.items():
        children = row["equal_children.children"]["mean"]
        assert children == 30
        if label.endswith("full"):
            assert row["epoch_ratio"] == 1 and row["equal_children.epochs"]["mean"] == 30 * 9
        else:  # ASHA stops children: fewer epochs for the same children, more children for the same epochs
            assert row["epoch_ratio"] > 1 and row["equal_children.stopped"]["mean"] > 0
            assert row["equal_epochs.children"]["mean"] > children
            assert row["equal_epochs.epochs"]["mean"] <= 30 * 9
    # Random search proposes the same cells with or without early stopping: on the same
    # children, ASHA's best can only be the full run's best or a lower one it kept.
    assert rows["random asha"]["equal_children.best"]["mean"] <= rows["random full"]["equal_children.best"]["mean"]
    # The learning-rate row is a different controller from the default ASHA row.
    assert rows["ppo asha lr 0.002"]["equal_epochs.children"] != rows["ppo asha"]["equal_epochs.children"]
    # Seeded: a second run gives the same numbers (all but the time taken).
    again = run_bench(*options)["rows"]
    assert [{**row, "seconds": 0} for row in again] == [{**row, "seconds": 0} for row in report["rows"]]
