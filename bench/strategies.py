"""Benchmark the search strategies.

(a) The four strategies on the synthetic objective (`nas_engine.synthetic`): for every
    seed, each strategy searches `--children` children; we print the best reward, the
    mean of the top 5 distinct architectures, the mean of the last 100 children and the
    ratios of best and top 5 to random search's (the paper's comparison, sec. 4.4). The
    controller strategies run with the paper's settings and, as extra rows, with the
    learning rate scaled up for a short search (`--scaled-lr`, 0 to skip): the paper's
    0.00035 was set for 20,000 children.
(b) A real CPU proxy: NASNet children trained on a CIFAR-10 subset from the JPEG folder
    (`--data-root`, default ../shared/datasets), about 20 minutes on 2 cores.

    python bench/strategies.py --part a --children 1000 --seeds 3
    python bench/strategies.py --part b --children 40 --seeds 1 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nas_engine.search import run_search  # noqa: E402
from nas_engine.space import SearchSpace  # noqa: E402
from nas_engine.strategies import make_strategy  # noqa: E402
from nas_engine.synthetic import SyntheticObjective  # noqa: E402


def run_one(name: str, settings: dict, space: SearchSpace, objective, children: int, seed: int) -> dict:
    by_hash: dict[str, float] = {}

    def remember(result):
        if result.reward is not None:
            by_hash[result.genotype.canonical_hash()] = result.reward

    started = time.perf_counter()
    summary = run_search(make_strategy(name, space, settings, seed), objective, children=children, on_result=remember)
    top5 = sorted(by_hash.values(), reverse=True)[:5]
    return {
        "best": summary.best_reward,
        "top5": sum(top5) / len(top5),
        "last100": summary.mean_reward_last_100,
        "last10": statistics.mean(summary.history[-10:]) if summary.history else float("nan"),
        "seconds": time.perf_counter() - started,
    }


def part_a(args) -> None:
    space = SearchSpace()
    variants = [("random", "random", {}), ("evolution", "evolution", {})]
    variants += [("reinforce", "reinforce", {}), ("ppo", "ppo", {})]
    if args.scaled_lr:
        lr = {"lr": args.scaled_lr}
        variants += [(f"reinforce lr={args.scaled_lr:g}", "reinforce", lr), (f"ppo lr={args.scaled_lr:g}", "ppo", lr)]
    rows: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    optima = []
    for seed in range(args.seeds):
        objective = SyntheticObjective(space, seed)
        optima.append(objective.optimum()[1])
        for label, name, settings in variants:
            rows[label].append(run_one(name, settings, space, objective, args.children, seed))
            r = rows[label][-1]
            print(
                f"  seed {seed} {label:<18} best {r['best']:.3f} top-5 {r['top5']:.3f} "
                f"last-100 {r['last100']:.3f} ({r['seconds']:.1f}s)",
                flush=True,
            )

    def mean(label, key):
        return statistics.mean(r[key] for r in rows[label])

    print(f"\n(a) synthetic objective, {args.children} children, {args.seeds} seeds (mean over seeds)")
    print(f"    optimum reward: {statistics.mean(optima):.3f}")
    print(f"{'strategy':<20}{'best':>8}{'top-5':>8}{'last-100':>10}{'best/rand':>11}{'top5/rand':>11}{'time s':>9}")
    for label in rows:
        best, top5 = mean(label, "best"), mean(label, "top5")
        print(
            f"{label:<20}{best:>8.3f}{top5:>8.3f}{mean(label, 'last100'):>10.3f}"
            f"{best / mean('random', 'best'):>11.3f}{top5 / mean('random', 'top5'):>11.3f}"
            f"{mean(label, 'seconds'):>9.1f}"
        )


# -- (b) a real CPU proxy -----------------------------------------------------------------------
# Budget: about 20 minutes on 2 cores for the four strategies. A child here is NASNet
# N = 1, F = 8 on 16x16 CIFAR-10 images (1,000 train / 500 validation, class-balanced),
# 3 epochs: about 7 s each, so a strategy gets a few dozen children. The short-run
# settings scale the strategies down with the budget (a population of 100 or a
# minibatch of 20 would never get going in 40 children); they are printed.
PROXY_SETTINGS = {
    "random": {},
    "evolution": {"population_size": 10, "tournament_size": 3},
    "reinforce": {"lr": 0.005, "batch_size": 5},
    "ppo": {"lr": 0.005, "batch_size": 5},
}


def part_b(args) -> None:
    """NASNet children trained on a CIFAR-10 subset on the CPU, per strategy and seed."""
    evaluate, described = cifar_proxy_evaluator(args)
    space = SearchSpace()
    print(f"\n(b) CIFAR-10 proxy: {described}; {args.children} children per strategy, {args.seeds} seed(s)")
    rows: dict[str, list[dict]] = {name: [] for name in PROXY_SETTINGS}
    for seed in range(args.seeds):
        for name, settings in PROXY_SETTINGS.items():
            r = run_one(name, settings, space, evaluate, args.children, seed)
            rows[name].append(r)
            print(
                f"  seed {seed} {name:<10} {settings} best {r['best']:.3f} top-5 {r['top5']:.3f} "
                f"last-10 {r['last10']:.3f} ({r['seconds']:.0f}s)",
                flush=True,
            )
    base = {k: statistics.mean(r[k] for r in rows["random"]) for k in ("best", "top5")}
    print(f"{'strategy':<12}{'best':>8}{'top-5':>8}{'last-10':>9}{'best/rand':>11}{'top5/rand':>11}")
    for name, runs in rows.items():
        best, top5 = statistics.mean(r["best"] for r in runs), statistics.mean(r["top5"] for r in runs)
        last = statistics.mean(r["last10"] for r in runs)
        print(f"{name:<12}{best:>8.3f}{top5:>8.3f}{last:>9.3f}{best / base['best']:>11.3f}{top5 / base['top5']:>11.3f}")


def cifar_proxy_evaluator(args):
    """`evaluate(genotype) -> validation accuracy | None`, training on a CIFAR-10 subset."""
    from nas_engine.data import load_dataset
    from nas_engine.trainer import Recipe, train_child

    data = load_dataset(
        "cifar10-jpeg/train", data_root=args.data_root, image_size=16, subset_per_class=150, val_size=500, seed=0
    )
    recipe = Recipe(repeats=1, filters=8, epochs=3, batch_size=32, lr=0.05, seed=0)

    def evaluate(genotype):
        return train_child(genotype, recipe, data).reward

    described = (
        f"N={recipe.repeats} F={recipe.filters}, {data.image_size}px, {len(data.train_labels)} train / "
        f"{len(data.val_labels)} val images, {recipe.epochs} epochs, lr {recipe.lr}"
    )
    return evaluate, described


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--children", type=int, default=None, help="per strategy and seed (a: 1000, b: 40)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scaled-lr", type=float, default=0.005, help="extra controller rows with this lr; 0: none")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part in ("a", "all"):
        part_a(argparse.Namespace(**{**vars(args), "children": args.children or 1000}))
    if args.part in ("b", "all"):
        part_b(argparse.Namespace(**{**vars(args), "children": args.children or 40}))


if __name__ == "__main__":
    main()
