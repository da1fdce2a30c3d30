"""How much of the reward on digits is the cell and how much is chance, before and after
issue #11's recipe change.

The controller learns only from differences between children's rewards. When one cell
trained with another seed moves its reward as much as switching to another cell does, the
reward is noise to it. This script trains, for each recipe:

- `--cells` random cells (the random strategy's first proposals, seed 0), one seed each:
  the spread across cells;
- NASNet-A over `--seeds` training seeds (the data split fixed): the spread of one cell;

and prints both standard deviations and their ratio (signal to noise: above 1, cells
differ more than seeds do). Rewards are validation accuracy, as in a search.

Recipes: "before" is the child of the first milestone (pad-4 crop and flips on 8x8
digits, batch 64, lr 0.1, weight decay on every parameter, no test split carved);
"after" is today's default search child (nas_engine.spec.DEFAULT_CHILD, the crop
scaled to the image, no flips on digits, decay on conv/linear weights).

    python bench/digits_signal.py                 # 20 cells + 5 seeds per recipe, ~10 min on 2 cores
    python bench/digits_signal.py --cells 6 --seeds 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from nas_engine.cells import NASNET_A  # noqa: E402
from nas_engine.data import load_dataset  # noqa: E402
from nas_engine.space import SearchSpace  # noqa: E402
from nas_engine.spec import DEFAULT_CHILD  # noqa: E402
from nas_engine.strategies import make_strategy  # noqa: E402
from nas_engine.trainer import Recipe, train_child  # noqa: E402

BEFORE = {
    "repeats": 1,
    "filters": 8,
    "epochs": 3,
    "lr": 0.1,
    "batch_size": 64,
    "crop_padding": 4,
    "flip": True,
    "weight_decay_norm_bias": True,
}
RECIPES = {"before": (BEFORE, {"test_size": 0}), "after": (DEFAULT_CHILD, {})}


def measure(name: str, recipe_fields: dict, data_options: dict, cells: int, seeds: int) -> dict:
    data = load_dataset("digits", seed=0, **data_options)
    base = Recipe(**recipe_fields)
    proposals = make_strategy("random", SearchSpace(), {}, seed=0).ask(cells)
    jobs = [("cell", p.genotype, base) for p in proposals]
    jobs += [("seed", NASNET_A, Recipe(**{**base.to_dict(), "seed": s})) for s in range(seeds)]
    across_cells, across_seeds = [], []
    t0 = time.perf_counter()
    for kind, genotype, recipe in tqdm(jobs, desc=name, unit="child", file=sys.stderr):
        reward = train_child(genotype, recipe, data).reward
        (across_cells if kind == "cell" else across_seeds).append(reward)
    cell_std, seed_std = statistics.stdev(across_cells), statistics.stdev(across_seeds)
    return {
        "recipe": name,
        "val_images": len(data.val_labels),
        "cells": {"n": cells, "mean": statistics.mean(across_cells), "std": cell_std, "rewards": across_cells},
        "nasnet_a_seeds": {"n": seeds, "mean": statistics.mean(across_seeds), "std": seed_std, "rewards": across_seeds},
        "signal_to_noise": cell_std / seed_std if seed_std > 0 else float("inf"),
        "children_at_least_0.9": sum(r >= 0.9 for r in across_cells) / cells,
        "seconds": time.perf_counter() - t0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20, help="random cells per recipe (default 20)")
    parser.add_argument("--seeds", type=int, default=5, help="NASNet-A seeds per recipe (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.cells < 2 or args.seeds < 2:
        parser.error("--cells and --seeds need at least 2 each (a spread needs two values)")
    torch.set_num_threads(args.threads)
    results = [measure(name, *RECIPES[name], args.cells, args.seeds) for name in RECIPES]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"digits, validation accuracy; {args.cells} random cells x 1 seed, NASNet-A x {args.seeds} seeds")
    print(
        f"{'recipe':<8} {'val imgs':>8} {'cells mean±std':>16} {'seeds mean±std':>16} {'S/N':>6} {'>=0.9':>6} {'s':>6}"
    )
    for r in results:
        c, s = r["cells"], r["nasnet_a_seeds"]
        print(
            f"{r['recipe']:<8} {r['val_images']:>8} {c['mean']:>9.3f}±{c['std']:.3f} {s['mean']:>9.3f}±{s['std']:.3f} "
            f"{r['signal_to_noise']:>6.2f} {r['children_at_least_0.9']:>6.0%} {r['seconds']:>6.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
