"""The whole NASNet protocol on a CPU proxy: search, selection, transfer, then one test score.

Zoph et al. 2017 search with a controller, re-train the best candidates to pick a winner,
and train the winner larger on the final task. This script runs those three stages on
CIFAR-10 JPEGs (`--data-root`, default ../shared/datasets: only the training split is
there), for two searches of the same budget, PPO and random search, and asks the question
the paper asks (sec. 4.4): did the controller find a better cell than random sampling?

Data. A fixed, stratified test split (`--test-size`, 5,000 images) is carved out of the
50,000 training JPEGs before anything else; the search and the selection never read it.
Search children and selection runs train on a class-balanced subset of the rest and are
scored on its validation split (their reward); the transfer trains on a larger subset with
no validation split (val_size 0: every image trains) and is scored once on the test split.

Stages (each prints a line; `--json` prints everything at the end):
1. search: `--children` children per strategy (PPO with the short-run settings of
   bench/strategies.py, random search), the same child recipe, one seed; rewards are
   validation accuracy.
2. noise floor: `--noise-children` of the PPO search's children trained again with
   `--seeds` other seeds (nas_engine.selection.noise_floor_sample and seeds_for): the
   pooled standard deviation of one cell's reward over seeds, its search reward included.
3. selection: each search's top `--top-k` distinct architectures trained again with
   `--seeds` seeds at twice the child's epochs (selection_recipe); the winner has the best
   mean validation accuracy.
4. transfer: both winners, NASNet-A (the paper's cell) and `--random-cells` cells drawn at
   random (seed 1000, none of them from either search) at one common size (N, F, epochs)
   on the transfer subset; the winners and NASNet-A with `--seeds` seeds each, the random
   cells with one (their median is the reference). Test accuracy only.

The verdict compares the PPO winner's mean test accuracy with the random winner's against
the transfer's seed noise: a difference is "beyond noise" only when it exceeds twice its
standard error (pooled seed std x sqrt(1/n1 + 1/n2)). The test split's own sampling noise
(binomial, about 0.7 points at 5,000 images) is printed too; it is shared by both winners
(same images), so it does not enter the difference.

Compute per stage: trainings, image-epochs (training images x epochs), an estimate of the
multiply-adds spent training (3 x forward mult-adds per image x image-epochs: forward and
backward), and wall-clock seconds.

    python bench/protocol.py                           # defaults: about 50 min on 2 cores
    python bench/protocol.py --children 12 --top-k 2 --transfer-epochs 2 --random-cells 2   # ~10 min
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from strategies import PROXY_SETTINGS  # noqa: E402  (bench/strategies.py)
from tqdm import tqdm  # noqa: E402

from nas_engine.cells import NASNET_A  # noqa: E402
from nas_engine.data import DatasetSplit, load_dataset  # noqa: E402
from nas_engine.genotype import Genotype  # noqa: E402
from nas_engine.search import ChildResult, run_search  # noqa: E402
from nas_engine.selection import Candidate, noise_floor_sample, seeds_for, selection_recipe, top_k  # noqa: E402
from nas_engine.space import SearchSpace  # noqa: E402
from nas_engine.strategies import make_strategy  # noqa: E402
from nas_engine.trainer import Recipe, train_child  # noqa: E402

STRATEGIES = ("ppo", "random")
RANDOM_CELLS_SEED = 1000


@dataclass
class Stage:
    """The compute one stage spent."""

    name: str
    trainings: int = 0
    image_epochs: int = 0
    train_mult_adds: float = 0.0
    seconds: float = 0.0

    def add(self, images: int, epochs: int, mult_adds: int, seconds: float) -> None:
        self.trainings += 1
        self.image_epochs += images * epochs
        self.train_mult_adds += 3.0 * mult_adds * images * epochs
        self.seconds += seconds


@dataclass
class Bench:
    args: argparse.Namespace
    search_data: DatasetSplit
    transfer_data: DatasetSplit
    bar: tqdm
    stages: dict[str, Stage] = field(default_factory=dict)

    def train(self, stage: str, genotype: Genotype, recipe: Recipe, data: DatasetSplit, *, test: bool = False):
        """One training; its compute is booked on `stage`. Returns the TrainResult."""
        result = train_child(genotype, recipe, data, test=test)
        images = len(data.train_labels)
        self.stages.setdefault(stage, Stage(stage)).add(images, recipe.epochs, result.mult_adds, result.wall_time)
        self.bar.update(1)
        return result


def child_recipe(args) -> Recipe:
    return Recipe(repeats=1, filters=args.child_filters, epochs=args.child_epochs, batch_size=32, lr=0.05, seed=0)


def transfer_recipe(args) -> Recipe:
    return Recipe(
        repeats=args.transfer_n, filters=args.transfer_f, epochs=args.transfer_epochs, batch_size=32, lr=0.05, seed=0
    )


# -- stage 1: search -----------------------------------------------------------------------------
def search(bench: Bench, name: str) -> tuple[list[Candidate], dict[str, Genotype], dict]:
    """`--children` children of one strategy; (candidates, genotype by hash, summary)."""
    recipe = child_recipe(bench.args)
    candidates: list[Candidate] = []
    by_hash: dict[str, Genotype] = {}

    def evaluate(genotype: Genotype) -> float | None:
        return bench.train(f"search ({name})", genotype, recipe, bench.search_data).reward

    def record(result: ChildResult) -> None:
        if result.reward is None:
            return  # a failed child: trained (and counted), no reward to select from
        h = result.genotype.canonical_hash()
        by_hash.setdefault(h, result.genotype)
        candidates.append(Candidate(len(candidates), h, result.reward, result.proposal_id))
        if result.status == "reused":
            bench.bar.update(1)  # not trained again, but one of the budget's children

    strategy = make_strategy(name, SearchSpace(), PROXY_SETTINGS[name], seed=0)
    summary = run_search(strategy, evaluate, children=bench.args.children, on_result=record)
    rewards = [c.reward for c in candidates]
    info = {
        "settings": PROXY_SETTINGS[name],
        "children": summary.children,
        "trained": summary.children - summary.reused - summary.failed,
        "reused": summary.reused,
        "failed": summary.failed,
        "best_reward": summary.best_reward,
        "mean_reward": statistics.mean(rewards) if rewards else None,
        "mean_reward_last_10": statistics.mean(rewards[-10:]) if rewards else None,
    }
    return candidates, by_hash, info


# -- stage 2: noise floor ------------------------------------------------------------------------
def noise_floor(bench: Bench, candidates: list[Candidate], by_hash: dict[str, Genotype]) -> dict:
    """Children of the PPO search trained again with other seeds: one cell's reward spread."""
    recipe = child_recipe(bench.args)
    chosen = noise_floor_sample(candidates, bench.args.noise_children, seed=0)
    cells = []
    for c in chosen:
        rewards = [c.reward]  # the search's own seed is one sample
        for seed in seeds_for(True, recipe.seed, bench.args.seeds):
            rewards.append(
                bench.train(
                    "noise floor", by_hash[c.canonical_hash], replace(recipe, seed=seed), bench.search_data
                ).reward
            )
        cells.append({"sample_index": c.sample_index, "rewards": rewards})
    return {"cells": cells, "pooled_std": pooled_std([cell["rewards"] for cell in cells])}


# -- stage 3: selection --------------------------------------------------------------------------
def selection(bench: Bench, name: str, candidates: list[Candidate], by_hash: dict[str, Genotype]) -> dict:
    """The search's top K trained again with several seeds; the winner by mean validation accuracy."""
    recipe = selection_recipe(child_recipe(bench.args))
    ranking = []
    for c in top_k(candidates, min(bench.args.top_k, len({c.canonical_hash for c in candidates}))):
        rewards = [
            bench.train(
                f"selection ({name})", by_hash[c.canonical_hash], replace(recipe, seed=s), bench.search_data
            ).reward
            for s in seeds_for(False, recipe.seed, bench.args.seeds)
        ]
        ranking.append({"hash": c.canonical_hash, "search_reward": c.reward, "rewards": rewards, **mean_std(rewards)})
    ranking.sort(key=lambda row: -(row["mean"] if row["mean"] is not None else -1.0))
    return {
        "recipe_epochs": recipe.epochs,
        "ranking": ranking,
        "winner": ranking[0]["hash"],
        "pooled_std": pooled_std([r["rewards"] for r in ranking]),
    }


# -- stage 4: transfer ---------------------------------------------------------------------------
def transfer(bench: Bench, models: dict[str, Genotype], seeds: dict[str, int]) -> dict:
    """Each model at the common size, `seeds[label]` seeds; test accuracy per seed."""
    recipe = transfer_recipe(bench.args)
    out = {}
    for label, genotype in models.items():
        tests, params = [], None
        for seed in range(seeds[label]):
            result = bench.train("transfer", genotype, replace(recipe, seed=seed), bench.transfer_data, test=True)
            tests.append(result.test_acc)
            params = result.params
        out[label] = {"hash": genotype.canonical_hash(), "test_acc": tests, "params": params, **mean_std(tests)}
    return out


def random_cells(count: int, exclude: set[str]) -> dict[str, Genotype]:
    """`count` random cells from a fresh random strategy, none sampled by either search."""
    strategy = make_strategy("random", SearchSpace(), {}, seed=RANDOM_CELLS_SEED)
    cells: dict[str, Genotype] = {}
    while len(cells) < count:
        for p in strategy.ask(count):
            h = p.genotype.canonical_hash()
            if h not in exclude and len(cells) < count:
                exclude.add(h)
                cells[f"random cell {len(cells) + 1}"] = p.genotype
    return cells


# -- numbers -------------------------------------------------------------------------------------
def mean_std(values: list[float | None]) -> dict:
    xs = [v for v in values if v is not None]
    return {"mean": statistics.mean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None}


def pooled_std(groups: list[list[float | None]]) -> float | None:
    """sqrt of the seed variance pooled over cells (each cell's own mean removed)."""
    squares, dof = 0.0, 0
    for group in groups:
        xs = [v for v in group if v is not None]
        if len(xs) > 1:
            m = statistics.mean(xs)
            squares += sum((x - m) ** 2 for x in xs)
            dof += len(xs) - 1
    return math.sqrt(squares / dof) if dof else None


def verdict(a: dict, b: dict, noise: float | None) -> dict:
    """a's mean minus b's, its standard error from the seed noise, and whether it exceeds 2 SE."""
    diff = a["mean"] - b["mean"]
    if noise is None:
        return {"difference": diff, "standard_error": None, "beyond_noise": None}
    se = noise * math.sqrt(1 / len(a["test_acc"]) + 1 / len(b["test_acc"]))
    return {"difference": diff, "standard_error": se, "beyond_noise": abs(diff) > 2 * se}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def pm(row: dict) -> str:
    return f"{pct(row['mean'])}" + (f" ± {100 * row['std']:.1f}" if row.get("std") is not None else "")


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    p.add_argument("--dataset", default="cifar10-jpeg/train")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--test-size", type=int, default=5000, help="images carved out as the test split (fixed)")
    p.add_argument("--search-per-class", type=int, default=150, help="images per class the search children see")
    p.add_argument("--val-size", type=int, default=500, help="of those, validation images (the reward)")
    p.add_argument("--transfer-per-class", type=int, default=300, help="training images per class in transfer")
    p.add_argument("--children", type=int, default=50, help="children per search")
    p.add_argument("--child-filters", type=int, default=8)
    p.add_argument("--child-epochs", type=int, default=3)
    p.add_argument("--noise-children", type=int, default=4)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--seeds", type=int, default=2, help="seeds per architecture in noise floor, selection, transfer")
    p.add_argument("--transfer-n", type=int, default=2)
    p.add_argument("--transfer-f", type=int, default=12)
    p.add_argument("--transfer-epochs", type=int, default=8)
    p.add_argument("--random-cells", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print every number as JSON at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    common = dict(data_root=args.data_root, image_size=args.image_size, test_size=args.test_size, seed=0)
    search_data = load_dataset(
        args.dataset, subset_per_class=args.search_per_class, val_size=args.val_size, progress=True, **common
    )
    transfer_data = load_dataset(args.dataset, subset_per_class=args.transfer_per_class, val_size=0, **common)
    # The test split is fixed whatever the subset: both stages hold out the same images.
    assert torch.equal(search_data.test_labels, transfer_data.test_labels)
    n_test = len(transfer_data.test_labels)
    print(
        f"data: {args.dataset} at {args.image_size}px; search {len(search_data.train_labels)} train / "
        f"{len(search_data.val_labels)} val; transfer {len(transfer_data.train_labels)} train; "
        f"test {n_test} ({transfer_data.test_source})",
        flush=True,
    )

    s, k = args.seeds, args.top_k
    total = 2 * args.children + args.noise_children * s + 2 * k * s + 3 * s + args.random_cells
    bar = tqdm(total=total, desc="trainings", unit="run", file=sys.stderr)
    bench = Bench(args, search_data, transfer_data, bar)
    report: dict = {"args": {k_: str(v) for k_, v in vars(args).items()}, "search": {}, "selection": {}}
    pools: dict[str, tuple[list[Candidate], dict[str, Genotype]]] = {}

    for name in STRATEGIES:
        candidates, by_hash, info = search(bench, name)
        pools[name] = (candidates, by_hash)
        report["search"][name] = info
        tqdm.write(
            f"search {name}: {info['children']} children ({info['trained']} trained, {info['reused']} reused), "
            f"best reward {pct(info['best_reward'])}, mean {pct(info['mean_reward'])}, "
            f"last 10 {pct(info['mean_reward_last_10'])} (val)"
        )
    report["noise_floor"] = noise_floor(bench, *pools["ppo"])
    tqdm.write(
        f"noise floor: one cell's reward over seeds, pooled std {pct(report['noise_floor']['pooled_std'])} (val)"
    )
    for name in STRATEGIES:
        sel = selection(bench, name, *pools[name])
        report["selection"][name] = sel
        rows = ", ".join(pm(r) for r in sel["ranking"])
        tqdm.write(f"selection {name}: top {len(sel['ranking'])} at {sel['recipe_epochs']} epochs: {rows} (val)")

    winners = {f"{name} winner": pools[name][1][report["selection"][name]["winner"]] for name in STRATEGIES}
    same = winners["ppo winner"].canonical_hash() == winners["random winner"].canonical_hash()
    models = {**winners, "NASNet-A": NASNET_A}
    seeds = dict.fromkeys(models, s)
    if same:
        del models["random winner"]
    seen = {h for _, by_hash in pools.values() for h in by_hash}
    cells = random_cells(args.random_cells, seen | {NASNET_A.canonical_hash()})
    models.update(cells)
    seeds.update(dict.fromkeys(cells, 1))
    results = transfer(bench, models, seeds)
    if same:
        results["random winner"] = results["ppo winner"]
    bar.close()

    transfer_noise = pooled_std([results[label]["test_acc"] for label in ("ppo winner", "random winner", "NASNet-A")])
    random_median = statistics.median(results[label]["mean"] for label in cells) if cells else None
    mean_acc = statistics.mean(r["mean"] for r in results.values())
    report.update(
        transfer={
            "n": args.transfer_n,
            "f": args.transfer_f,
            "epochs": args.transfer_epochs,
            "models": results,
            "seed_std": transfer_noise,
            "random_cells_median": random_median,
            "test_binomial_std": math.sqrt(mean_acc * (1 - mean_acc) / n_test),
            "same_winner": same,
        },
        verdict=verdict(results["ppo winner"], results["random winner"], transfer_noise),
        stages={name: vars(stage) for name, stage in bench.stages.items()},
        seconds=time.perf_counter() - started,
    )
    print_report(report, n_test)
    if args.json:
        print(json.dumps(report, indent=1))
    return report


def print_report(report: dict, n_test: int) -> None:
    t = report["transfer"]
    print(f"\ntransfer: N={t['n']} F={t['f']}, {t['epochs']} epochs; test accuracy on {n_test} held-out images")
    print(f"{'model':<16}{'test acc':>16}{'seeds':>7}{'params':>10}")
    for label, row in t["models"].items():
        print(f"{label:<16}{pm(row):>16}{len(row['test_acc']):>7}{row['params'] or 0:>10,}")
    print(f"median of the random cells: {pct(t['random_cells_median'])}")
    print(
        f"noise: seed std {pct(t['seed_std'])} (transfer), {pct(report['noise_floor']['pooled_std'])} (search reward); "
        f"test-set binomial std {pct(t['test_binomial_std'])}"
    )
    v = report["verdict"]
    if v["beyond_noise"] is None:
        said = "no seed noise measured (one seed): no verdict"
    elif v["beyond_noise"]:
        said = f"{'better' if v['difference'] > 0 else 'worse'} than random search, beyond the noise (> 2 SE)"
    else:
        said = "within the noise (<= 2 SE): this run does not show that PPO beat random search"
    se = "-" if v["standard_error"] is None else f"{100 * v['standard_error']:.1f}"
    same = " (both searches chose the same cell)" if t["same_winner"] else ""
    print(f"PPO winner - random winner: {100 * v['difference']:+.1f} points, SE {se}: {said}{same}")
    print(f"\n{'stage':<22}{'trainings':>10}{'image-epochs':>14}{'train mult-adds':>17}{'seconds':>9}")
    for stage in report["stages"].values():
        print(
            f"{stage['name']:<22}{stage['trainings']:>10}{stage['image_epochs']:>14,}"
            f"{stage['train_mult_adds'] / 1e12:>15.2f}T{stage['seconds']:>9.0f}"
        )
    print(f"total {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
