"""Benchmark early stopping (ASHA, the median rule) against training every child in full.

On the synthetic objective's learning curves (`nas_engine.synthetic`: a seeded curve per
architecture; curves cross), for random search, PPO and regularized evolution, over seeds:

- full training: `--children` children, each trained `--epochs` epochs;
- ASHA and the median rule: the same search with early stopping, run until it has both
  sampled `--children` children and spent as many child epochs as full training did.

Two budgets are read off every early-stopping run (sequential, so its first k children are
exactly a search of k children):
- equal children: its first `--children` children. Epochs spent, and the ratio of full
  training's epochs to these (the saving);
- equal epochs: its longest prefix spending at most full training's epochs (more children;
  at most `--max-children` times as many: a converged controller proposes duplicates,
  which are reused at no cost in epochs).
For each: the best final-epoch reward found (observed, what the search reports; a stopped
child's rung value never counts) and the noiseless reward of that best architecture.
And the issue's goal, time to target: the child epochs a search spent until it first found
a final reward within noise of the best full training found in its whole budget; the
saving is full training's budget over that (and, stricter, full training's own time to
that target over that). A run that does not reach the target within full training's
epochs counts as not reaching it.

"Within noise": the objective's `noise` is the standard deviation of a final reward between
two trainings of one architecture (`--noise`); a best reward is within noise of full
training's when the mean over seeds is at most one such standard deviation below full
training's mean (better is within, too).

PPO runs with the learning rate scaled up for short searches (0.005; the paper's 0.00035
was set for 20,000 children), as in bench/strategies.py; with ASHA it also runs once per
`stopped_reward` choice (what it learns from a stopped child). `--asha-min-epochs 3` adds
ASHA rows with a later first rung (rungs 3 and 9 of 20).

    python bench/early_stopping.py                       # 500 children, 20 epochs, 3 seeds
    python bench/early_stopping.py --strategies ppo,evolution --asha-min-epochs 3 --no-modes
    python bench/early_stopping.py --children 200 --seeds 2 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nas_engine.early_stopping import EarlyStop  # noqa: E402
from nas_engine.search import run_search  # noqa: E402
from nas_engine.space import SearchSpace  # noqa: E402
from nas_engine.strategies import make_strategy  # noqa: E402
from nas_engine.synthetic import SyntheticObjective  # noqa: E402

STRATEGY_SETTINGS = {"random": {}, "ppo": {"lr": 0.005}, "evolution": {}}


class _Spent(Exception):
    """Both budgets are covered: the run can end."""


def variants(args) -> list[tuple[str, str, EarlyStop, dict]]:
    """(label, strategy, early stopping, strategy settings) in the order they are run and printed."""
    out = []
    for name in args.strategies:
        base = STRATEGY_SETTINGS[name]
        out.append((f"{name} full", name, EarlyStop(), base))
        for rule in args.rules:
            out.append((f"{name} {rule}", name, EarlyStop(rule=rule), base))
        for min_epochs in args.asha_min_epochs:
            out.append((f"{name} asha min {min_epochs}", name, EarlyStop(rule="asha", min_epochs=min_epochs), base))
        if name == "ppo":
            for mode in [] if args.no_modes else args.modes:
                out.append((f"ppo asha {mode}", name, EarlyStop(rule="asha", stopped_reward=mode), base))
            for lr in args.ppo_asha_lr:
                out.append((f"ppo asha lr {lr:g}", name, EarlyStop(rule="asha"), {**base, "lr": lr}))
    return out


def run_one(
    name: str, settings: EarlyStop, strategy_settings: dict, objective, args, seed: int, budget: int | None
) -> list[dict]:
    """One search; per child: epochs trained, and its final reward (observed and
    noiseless) when it was trained in full or reused from a child that was."""
    rows: list[dict] = []
    spent = 0

    def record(result):
        nonlocal spent
        final = result.reward is not None and not result.stopped
        rows.append(
            {
                "epochs": result.epochs,
                "stopped": result.stopped,
                "reward": result.reward if final else None,
                "true": objective.reward(result.genotype) if final else None,
            }
        )
        spent += result.epochs
        if budget is not None and len(rows) >= args.children and spent >= budget:
            raise _Spent

    def evaluate(genotype, report):
        return objective.train(genotype, args.epochs, report)

    strategy = make_strategy(name, SearchSpace(), strategy_settings, seed)
    limit = args.children if budget is None else args.children * args.max_children
    with contextlib.suppress(_Spent):  # on_result ends the run once both budgets are covered
        run_search(strategy, evaluate, children=limit, epochs=args.epochs, early_stop=settings, on_result=record)
    return rows


def measure(rows: list[dict]) -> dict:
    finals = [(r["reward"], r["true"]) for r in rows if r["reward"] is not None]
    best, true = max(finals) if finals else (float("nan"), float("nan"))
    return {
        "children": len(rows),
        "epochs": sum(r["epochs"] for r in rows),
        "stopped": sum(r["stopped"] for r in rows),
        "best": best,
        "best_true": true,
    }


def time_to_target(rows: list[dict], target: float, budget: int) -> int | None:
    """Child epochs spent until a final reward >= target, or None if not within `budget`."""
    spent = 0
    for r in rows:
        spent += r["epochs"]
        if spent > budget:
            return None
        if r["reward"] is not None and r["reward"] >= target:
            return spent
    return None


def prefix_within(rows: list[dict], budget: int) -> list[dict]:
    spent, out = 0, []
    for r in rows:
        if spent + r["epochs"] > budget:
            break
        spent += r["epochs"]
        out.append(r)
    return out


def run(args) -> dict:
    labels = variants(args)
    results: dict[str, list[dict]] = {label: [] for label, *_ in labels}
    for seed in range(args.seeds):
        objective = SyntheticObjective(SearchSpace(), seed, noise=args.noise)
        budget = target = None
        for label, name, settings, strategy_settings in labels:
            started = time.perf_counter()
            budget_here = None if not settings.active else budget
            rows = run_one(name, settings, strategy_settings, objective, args, seed, budget_here)
            if not settings.active:
                budget = sum(r["epochs"] for r in rows)  # full training's: the next variants' epochs
                target = measure(rows)["best"] - args.noise  # within noise of full training's best
                entry = {"equal_children": measure(rows), "equal_epochs": measure(rows)}
            else:
                entry = {
                    "equal_children": measure(rows[: args.children]),
                    "equal_epochs": measure(prefix_within(rows, budget)),
                }
            entry["target"] = target
            entry["time_to_target"] = time_to_target(rows, target, budget)
            entry["budget"] = budget
            entry["seconds"] = time.perf_counter() - started
            results[label].append(entry)
            c, e = entry["equal_children"], entry["equal_epochs"]
            reached = "-" if entry["time_to_target"] is None else entry["time_to_target"]
            if not args.json:
                print(
                    f"  seed {seed} {label:<22} {c['children']} children: {c['epochs']:>6} epochs, best {c['best']:.4f}"
                    f" | {e['children']:>5} children in {e['epochs']:>6} epochs: best {e['best']:.4f}"
                    f" | target {target:.4f} after {reached} epochs ({entry['seconds']:.0f}s)",
                    flush=True,
                )
    return summarise(args, labels, results)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(args, labels, results) -> dict:
    rows = []
    for label, name, settings, _ in labels:
        full = results[f"{name} full"]
        runs = results[label]
        row = {"variant": label, "strategy": name, "early_stop": settings.to_dict()}
        for budget in ("equal_children", "equal_epochs"):
            for key in ("children", "epochs", "stopped", "best", "best_true"):
                mean, std = _mean_std([r[budget][key] for r in runs])
                row[f"{budget}.{key}"] = {"mean": mean, "std": std}
            gap = row[f"{budget}.best"]["mean"] - _mean_std([r[budget]["best"] for r in full])[0]
            row[f"{budget}.best_minus_full"] = gap
            row[f"{budget}.within_noise"] = gap >= -args.noise
        full_epochs = statistics.mean(r["equal_children"]["epochs"] for r in full)
        row["epoch_ratio"] = full_epochs / row["equal_children.epochs"]["mean"]
        # Time to target: per seed, full training's budget (and its own time to the target)
        # over this variant's; a seed that never reached the target gives no saving (ratio 0).
        savings, strict = [], []
        for run_, base in zip(runs, full):
            ttt = run_["time_to_target"]
            savings.append(0.0 if ttt is None else base["budget"] / ttt)
            strict.append(0.0 if ttt is None else base["time_to_target"] / ttt)
        row["target_reached"] = sum(r["time_to_target"] is not None for r in runs)
        row["target_saving"] = {"min": min(savings), "mean": statistics.mean(savings)}
        row["target_saving_vs_full_time"] = {"min": min(strict), "mean": statistics.mean(strict)}
        row["goal_met"] = row["target_saving"]["min"] >= 3
        row["seconds"] = statistics.mean(r["seconds"] for r in runs)
        rows.append(row)
    keys = ("children", "epochs", "seeds", "noise", "strategies", "rules", "max_children")
    keys += ("asha_min_epochs", "ppo_asha_lr")
    config = {k: getattr(args, k) for k in keys}
    return {"config": config, "rows": rows}


def print_table(report: dict) -> None:
    c = report["config"]
    print(
        f"\nsynthetic curves, {c['children']} children x {c['epochs']} epochs, {c['seeds']} seeds, "
        f"reward noise {c['noise']}; mean ± std over seeds"
    )

    def ms(entry, digits=4):
        return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"

    print("\nequal children: epochs spent, best final reward (observed; noiseless), against full training")
    print(f"{'variant':<22}{'epochs':>8}{'saving':>8}{'best':>18}{'vs full':>9}{'in noise':>9}{'true best':>11}")
    for r in report["rows"]:
        print(
            f"{r['variant']:<22}{r['equal_children.epochs']['mean']:>8.0f}{r['epoch_ratio']:>7.1f}x"
            f"{ms(r['equal_children.best']):>18}{r['equal_children.best_minus_full']:>+9.4f}"
            f"{'yes' if r['equal_children.within_noise'] else 'no':>9}{r['equal_children.best_true']['mean']:>11.4f}"
        )
    print("\nequal epochs (full training's), and time to full training's best minus noise")
    print(
        f"{'variant':<22}{'children':>9}{'best':>18}{'vs full':>9}{'true best':>11}"
        f"{'reached':>9}{'saving min/mean':>17}{'vs full time':>14}{'goal':>6}"
    )
    for r in report["rows"]:
        saving, strict = r["target_saving"], r["target_saving_vs_full_time"]
        print(
            f"{r['variant']:<22}{r['equal_epochs.children']['mean']:>9.0f}{ms(r['equal_epochs.best']):>18}"
            f"{r['equal_epochs.best_minus_full']:>+9.4f}{r['equal_epochs.best_true']['mean']:>11.4f}"
            f"{r['target_reached']:>7}/{c['seeds']}{_pair(saving):>17}{_pair(strict):>14}"
            f"{'yes' if r['goal_met'] else 'no':>6}"
        )


def _pair(saving: dict) -> str:
    return f"{saving['min']:.1f}/{saving['mean']:.1f}x"


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=500, help="full training's children (default 500)")
    parser.add_argument("--epochs", type=int, default=20, help="a child's full training (default 20, the paper's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.01, help="std of a final reward between trainings")
    parser.add_argument("--strategies", type=_names, default=["random", "ppo", "evolution"])
    parser.add_argument(
        "--asha-min-epochs", type=int, action="append", default=[], help="extra ASHA rows with this first rung"
    )
    parser.add_argument("--rules", type=_names, default=["asha", "median"], help="early-stopping rows (asha,median)")
    parser.add_argument(
        "--modes",
        type=_names,
        default=["normalised", "drop"],
        help="extra PPO ASHA rows, one per stopped_reward (default normalised,drop)",
    )
    parser.add_argument("--no-modes", action="store_true", help="no extra PPO rows per stopped_reward")
    parser.add_argument(
        "--ppo-asha-lr", type=float, action="append", default=[], help="an extra PPO ASHA row with this learning rate"
    )
    parser.add_argument(
        "--max-children", type=int, default=8, help="equal epochs: at most this many times --children (default 8)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--json-file", type=Path, help="also write the summary as JSON to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the controller's tensors are tiny: threads only spin
    report = run(args)
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
