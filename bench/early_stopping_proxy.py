"""Early stopping across children on the CPU proxy: random search with and without ASHA.

Issue #13 asks whether ASHA pays on real training, not only on the synthetic curves of
bench/early_stopping.py: CIFAR-10 JPEGs (`--data-root`, default ../shared/datasets) at
16 px, random search with and without ASHA on the same child-epoch budget, each arm's
winner picked by the selection stage and scored once on a held-out test split.

Data (as bench/protocol.py, whose loading is reused): a fixed, stratified test split
(`--test-size`) is carved out of the training JPEGs before anything else; the searches and
the selection never read it. Search children and selection runs train on a class-balanced
subset of the rest (`--search-per-class`, `--val-size` of it validation: the reward); the
test training uses `--final-per-class` images per class, all of them training (no
validation split), and is scored once on the test split.

Arms (the same random proposals: one strategy seed, `--seed`, so ASHA's first children
are full training's children, in the same order):
- full: `--children` K children, each trained `--child-epochs` E epochs. Its budget is the
  child epochs it spent, K x E (less only if a duplicate was reused).
- asha: ASHA (nas_engine.early_stopping, one bracket, rungs min_epochs x eta**k below E:
  1 and 3 with the defaults) until it has spent exactly the full arm's child epochs.
  run_search takes a fixed child count, so it runs with a generous count and this script
  ends it when the budget is spent: after every epoch, once the budget is reached, a child
  that ASHA let go on is cut (its trainer is told to stop), counted in the epochs, and the
  search ends. A cut child is neither stopped by the rule nor complete: the loop counts it
  failed and it is never a candidate. This caps the epochs exactly (never over the
  budget); the alternative, a child count guessed ahead, either overshoots or leaves
  budget unspent. At most E - 1 epochs go to a child that cannot be used: a cost to ASHA.

The children are trained by the CLI's own wiring (nas_engine.commands.search.make_evaluate:
`evaluate(genotype, report)` hands each epoch's validation accuracy to the loop and stops
the child when told), on the same data options, so the bench is `python -m nas_engine
search --early-stop asha` with a budget cap.

Selection (bench/protocol.py's `selection`, nas_engine.selection): each arm's top
`--top-k` distinct architectures by final-epoch validation reward (a stopped child's rung
value is never a final reward) trained again with `--seeds` seeds at twice the child's
epochs; the winner has the best mean validation accuracy. A (cell, recipe, seed) that
both arms select is trained once and shared (CPU training is deterministic for a seed).

Test (bench/protocol.py's `transfer`): each winner trained once (seed 0, N = 1, F = the
child's, `--test-epochs`, default the selection's epochs) on the final subset, scored once
on the test split. Same winner in both arms: one training, no difference by construction.

Noise: one cell's validation accuracy over seeds (the selection's pooled std over both
arms' candidates), and the test split's binomial std sqrt(p(1-p)/n). The verdict calls the
test difference (asha - full) beyond noise only when it exceeds twice its standard error,
SE = sqrt(2) x sqrt(seed_std^2 + binomial_std^2): two single trainings, each with seed
noise and test-sampling noise taken as independent (conservative: the test images are
shared by both winners). One proxy run is one sample of the whole procedure.

Also printed: how well an early epoch ranks children on this data (Spearman rank
correlation of the full arm's epoch-1 and epoch-3 validation values with their final
ones) and whether ASHA completed the full arm's best child.

    python bench/early_stopping_proxy.py --quick                     # smoke run, < 3 min
    python bench/early_stopping_proxy.py --json > es_proxy.json      # defaults: 19 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from protocol import Bench, child_recipe, pct, pooled_std, selection, transfer  # noqa: E402
from strategies import PROXY_SETTINGS  # noqa: E402  (bench/strategies.py)
from tqdm import tqdm  # noqa: E402

from nas_engine.commands.options import data_from_args, recipe_from_args  # noqa: E402
from nas_engine.commands.search import add_search_arguments, make_evaluate  # noqa: E402
from nas_engine.data import load_dataset  # noqa: E402
from nas_engine.early_stopping import EarlyStop, rungs  # noqa: E402
from nas_engine.genotype import Genotype  # noqa: E402
from nas_engine.search import ChildResult, run_search  # noqa: E402
from nas_engine.selection import Candidate  # noqa: E402
from nas_engine.space import SearchSpace  # noqa: E402
from nas_engine.strategies import make_strategy  # noqa: E402

ARMS = ("full", "asha")
QUICK = {
    "children": 4,
    "child_epochs": 4,
    "search_per_class": 30,
    "val_size": 100,
    "final_per_class": 30,
    "test_size": 1000,
    "top_k": 2,
    "seeds": 2,
}


class _Spent(Exception):
    """The arm's child-epoch budget is spent: the search ends."""


class SharedBench(Bench):
    """protocol.Bench whose trainings are cached by (cell, recipe, data, test): a cell both
    arms select is trained once per seed, and its compute is booked once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache: dict[tuple, object] = {}
        self.shared = 0

    def train(self, stage, genotype, recipe, data, *, test=False):
        key = (genotype.canonical_hash(), recipe, id(data), test)
        if key in self.cache:
            self.shared += 1
            self.bar.update(1)
            return self.cache[key]
        self.cache[key] = result = super().train(stage, genotype, recipe, data, test=test)
        return result


# -- the search arms -----------------------------------------------------------------------------
def cli_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options `python -m nas_engine search` would be given for these children."""
    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    argv = [
        "--dataset", args.dataset, "--data-root", str(args.data_root), "--image-size", str(args.image_size),
        "--subset-per-class", str(args.search_per_class), "--val-size", str(args.val_size),
        "--test-size", str(args.test_size), "--repeats", "1", "--filters", str(args.child_filters),
        "--epochs", str(args.child_epochs), "--batch-size", "32", "--lr", "0.05", "--seed", "0",
        "--device", "cpu", "--no-progress", "--strategy", "random",
    ]  # fmt: skip
    if args.cache_dir is not None:
        argv += ["--cache-dir", str(args.cache_dir)]
    return parser.parse_args(argv)


def search_arm(name: str, evaluate, args: argparse.Namespace, budget: int | None) -> dict:
    """One random search; `budget` (child epochs) caps it, None: `--children` children."""
    epochs = args.child_epochs
    settings = EarlyStop(rule="asha", min_epochs=args.min_epochs, reduction_factor=args.reduction_factor)
    if name == "full":
        settings = EarlyStop()
    spent = 0
    curves: dict[int, list[float]] = {}  # proposal id -> validation accuracy per epoch
    rows: list[dict] = []
    candidates: list[Candidate] = []
    by_hash: dict[str, Genotype] = {}
    current: dict = {}
    bar = tqdm(total=budget or args.children * epochs, desc=f"search ({name})", unit="epoch", file=sys.stderr)

    def capped(genotype: Genotype, report):
        values: list[float] = []
        current.update(values=values, cut=False)

        def on_epoch(epoch: int, value: float) -> bool:
            nonlocal spent
            spent += 1
            values.append(value)
            bar.update(1)
            go_on = report(epoch, value)
            if go_on and epoch < epochs and budget is not None and spent >= budget:
                current["cut"] = True
                return False
            return go_on

        return evaluate(genotype, on_epoch)

    def record(result: ChildResult) -> None:
        h = result.genotype.canonical_hash()
        status = "cut" if current.get("cut") and result.status == "failed" else result.status
        values = [] if result.status == "reused" else list(current.get("values", []))
        if result.status != "reused":
            curves[result.proposal_id] = values
        final = None if result.stopped or result.reward is None else result.reward
        row = {"id": result.proposal_id, "hash": h, "status": status, "epochs": result.epochs, "final_reward": final}
        rows.append({**row, "values": values})  # validation accuracy after each epoch trained
        if final is not None:
            by_hash.setdefault(h, result.genotype)
            candidates.append(Candidate(len(candidates), h, final, result.proposal_id))
        current.clear()
        bar.set_postfix(children=len(rows), best=pct(max((c.reward for c in candidates), default=None)))
        if budget is not None and spent >= budget:
            raise _Spent

    strategy = make_strategy("random", SearchSpace(), PROXY_SETTINGS["random"], seed=args.seed)
    started = time.perf_counter()
    children = args.children if budget is None else 4 * budget + 10  # a bound; the budget ends it
    with contextlib.suppress(_Spent):
        run_search(strategy, capped, children=children, on_result=record, epochs=epochs, early_stop=settings)
    bar.close()
    seconds = time.perf_counter() - started
    count = {s: sum(r["status"] == s for r in rows) for s in ("ok", "stopped", "cut", "reused", "failed")}
    best = max(candidates, key=lambda c: c.reward, default=None)
    info = {
        "early_stop": settings.to_dict(),
        "rungs": list(rungs(settings, epochs)) if settings.active else [],
        "children": len(rows),
        "trained": len(rows) - count["reused"],
        "completed": count["ok"] + sum(r["status"] == "reused" and r["final_reward"] is not None for r in rows),
        "stopped": count["stopped"] + sum(r["status"] == "reused" and r["final_reward"] is None for r in rows),
        "cut": count["cut"],
        "reused": count["reused"],
        "failed": count["failed"],
        "child_epochs": spent,
        "seconds": seconds,
        "best_val_reward": None if best is None else best.reward,
        "best_hash": None if best is None else best.canonical_hash,
        "children_log": rows,
    }
    return {"info": info, "candidates": candidates, "by_hash": by_hash, "curves": curves}


# -- numbers -------------------------------------------------------------------------------------
def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None below 3 pairs or without spread."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else None


def diagnostics(arms: dict, args: argparse.Namespace) -> dict:
    """How early values rank the full arm's children, and what ASHA did to its best one."""
    full, asha = arms["full"], arms["asha"]
    complete = {i: v for i, v in full["curves"].items() if len(v) == args.child_epochs}
    settings = EarlyStop(rule="asha", min_epochs=args.min_epochs, reduction_factor=args.reduction_factor)
    correlation = {
        str(e): spearman([v[e - 1] for v in complete.values()], [v[-1] for v in complete.values()])
        for e in rungs(settings, args.child_epochs)
    }
    full_rows = full["info"]["children_log"]
    asha_rows = {r["id"]: r for r in asha["info"]["children_log"]}
    same = all(r["id"] in asha_rows and asha_rows[r["id"]]["hash"] == r["hash"] for r in full_rows)
    best_id = next((r["id"] for r in full_rows if r["hash"] == full["info"]["best_hash"]), None)
    kept = None if best_id is None or best_id not in asha_rows else asha_rows[best_id]["status"]
    both = [
        (r["final_reward"], asha_rows[r["id"]]["final_reward"])
        for r in full_rows
        if r["id"] in asha_rows and r["final_reward"] is not None and asha_rows[r["id"]]["final_reward"] is not None
    ]
    return {
        "rank_correlation_with_final": correlation,
        "same_first_proposals": same,
        "full_best_in_asha": kept,
        "completed_in_both": len(both),
        "completed_in_both_same_reward": all(a == b for a, b in both),
    }


def verdict(tests: dict[str, float], seed_std: float | None, binomial: float, same: bool) -> dict:
    diff = tests["asha"] - tests["full"]
    se = math.sqrt(2) * math.sqrt((seed_std or 0.0) ** 2 + binomial**2)
    beyond = abs(diff) > 2 * se and not same
    if same:
        text = "both arms picked the same cell: one test training, no difference by construction"
    elif beyond:
        better = "better" if diff > 0 else "worse"
        text = f"ASHA's winner is {better} on the test split, beyond the noise (> 2 SE)"
    else:
        text = "within the noise (<= 2 SE): this run shows no test difference between ASHA and full training"
    if seed_std is None and not same:
        text += " (no seed std measured: binomial noise only)"
    return {"difference": diff, "standard_error": se, "beyond_noise": beyond, "same_winner": same, "text": text}


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"a small smoke run (< 3 min): {QUICK}; options given win")
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    p.add_argument("--dataset", default="cifar10-jpeg/train")
    p.add_argument("--cache-dir", type=Path, help="decoded-tensor cache (default $NAS_CACHE_DIR or ./.cache)")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--test-size", type=int, default=5000, help="images carved out as the test split (fixed)")
    p.add_argument("--search-per-class", type=int, default=100, help="images per class the search children see")
    p.add_argument("--val-size", type=int, default=400, help="of those, validation images (the reward)")
    p.add_argument("--final-per-class", type=int, default=100, help="training images per class for the test run")
    p.add_argument("--children", type=int, default=20, help="children of the full arm (its budget: x epochs)")
    p.add_argument("--child-epochs", type=int, default=6, help="E: a child's full training")
    p.add_argument("--child-filters", type=int, default=8, help="F of the children (N = 1)")
    p.add_argument("--min-epochs", type=int, default=1, help="ASHA's first rung")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA's eta")
    p.add_argument("--seed", type=int, default=0, help="the random strategy's seed (both arms)")
    p.add_argument("--top-k", type=int, default=3, help="architectures per arm the selection trains again")
    p.add_argument("--seeds", type=int, default=2, help="seeds per architecture in the selection")
    p.add_argument("--test-epochs", type=int, help="epochs of the winner's test training (default the selection's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print every number as JSON on stdout (the table on stderr)")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    # protocol.transfer's recipe: the selection's (N = 1, F, twice the child's epochs)
    args.transfer_n, args.transfer_f = 1, args.child_filters
    args.transfer_epochs = args.test_epochs or 2 * args.child_epochs
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = sys.stderr if args.json else sys.stdout

    cli = cli_args(args)
    search_data = data_from_args(cli, progress=True)  # decodes once into the cache
    final_data = load_dataset(
        args.dataset,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        image_size=args.image_size,
        test_size=args.test_size,
        subset_per_class=args.final_per_class,
        val_size=0,
        seed=0,
    )
    assert torch.equal(search_data.test_labels, final_data.test_labels)  # one test split
    # The CLI's child recipe is protocol's, so its selection recipe is twice the child's.
    assert recipe_from_args(cli, 1, args.child_filters, stem_multiplier=3.0) == child_recipe(args)
    evaluate, described = make_evaluate(cli, SearchSpace())
    n_test = len(final_data.test_labels)
    print(
        f"data: {args.dataset} at {args.image_size}px; search {len(search_data.train_labels)} train / "
        f"{len(search_data.val_labels)} val; test training {len(final_data.train_labels)} train; "
        f"test {n_test} ({final_data.test_source})\nchildren: {described}",
        file=out,
        flush=True,
    )

    arms = {"full": search_arm("full", evaluate, args, None)}
    budget = arms["full"]["info"]["child_epochs"]
    arms["asha"] = search_arm("asha", evaluate, args, budget)
    for name in ARMS:
        i = arms[name]["info"]
        tqdm.write(
            f"search {name}: {i['children']} children ({i['completed']} completed, {i['stopped']} stopped, "
            f"{i['cut']} cut), {i['child_epochs']} child epochs, {i['seconds']:.0f} s, "
            f"best val reward {pct(i['best_val_reward'])}",
            file=out,
        )

    k = {name: min(args.top_k, len(arms[name]["by_hash"])) for name in ARMS}
    bar = tqdm(total=sum(k.values()) * args.seeds + 2, desc="selection + test", unit="run", file=sys.stderr)
    bench = SharedBench(args, search_data, final_data, bar)
    selections = {name: selection(bench, name, arms[name]["candidates"], arms[name]["by_hash"]) for name in ARMS}
    winners = {name: arms[name]["by_hash"][selections[name]["winner"]] for name in ARMS}
    same = winners["full"].canonical_hash() == winners["asha"].canonical_hash()
    models = {f"{name} winner": winners[name] for name in ARMS}
    tested = transfer(bench, models, dict.fromkeys(models, 1))  # cached: one training if the same cell
    bar.close()

    unique = {(r["hash"], tuple(r["rewards"])) for sel in selections.values() for r in sel["ranking"]}
    seed_std = pooled_std([list(rewards) for _, rewards in unique])
    tests = {name: tested[f"{name} winner"]["test_acc"][0] for name in ARMS}
    mean_test = statistics.mean(tests.values())
    binomial = math.sqrt(mean_test * (1 - mean_test) / n_test)
    report: dict = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "data": {
            "dataset": args.dataset,
            "image_size": args.image_size,
            "search_train": len(search_data.train_labels),
            "search_val": len(search_data.val_labels),
            "test_training_train": len(final_data.train_labels),
            "test": n_test,
            "test_source": final_data.test_source,
        },
        "budget": {"child_epochs": budget, "epochs_per_child": args.child_epochs, "full_children": args.children},
        "arms": {},
    }
    for name in ARMS:
        sel = selections[name]
        top = sel["ranking"][0]
        row = tested[f"{name} winner"]
        report["arms"][name] = {
            "search": arms[name]["info"],
            "selection": {"epochs": sel["recipe_epochs"], "ranking": sel["ranking"], "winner": sel["winner"]},
            "winner": {
                "hash": sel["winner"],
                "val_mean": top["mean"],
                "val_std": top["std"],
                "val_rewards": top["rewards"],
                "test_acc": tests[name],
                "params": row["params"],
            },
        }
    report.update(
        diagnostics=diagnostics(arms, args),
        noise={"seed_std": seed_std, "test_binomial_std": binomial, "test_size": n_test},
        verdict=verdict(tests, seed_std, binomial, same),
        stages={
            **{label(name): {**vars(stage), "name": label(name)} for name, stage in bench.stages.items()},
            "shared_trainings": bench.shared,
        },
        seconds=time.perf_counter() - started,
    )
    print_report(report, out)
    if args.json:
        print(json.dumps(report, indent=1))
    return report


def label(stage: str) -> str:
    """protocol's stage names, with its "transfer" called what it is here."""
    return "test training" if stage == "transfer" else stage


def print_report(report: dict, out) -> None:
    b = report["budget"]
    arms = report["arms"]
    print(
        f"\nbudget: {b['child_epochs']} child epochs ({b['full_children']} children x {b['epochs_per_child']})",
        file=out,
    )
    print(f"{'':<40}{'full':>16}{'asha':>16}", file=out)

    def line(label: str, fmt) -> None:
        print(f"{label:<40}" + "".join(f"{fmt(arms[n]):>16}" for n in ARMS), file=out)

    line(
        "children trained (completed/stopped/cut)",
        lambda a: "{trained} ({completed}/{stopped}/{cut})".format(**a["search"]),
    )
    line("child epochs spent", lambda a: str(a["search"]["child_epochs"]))
    line("search wall seconds", lambda a: f"{a['search']['seconds']:.0f}")
    line("best search reward (val)", lambda a: pct(a["search"]["best_val_reward"]))
    line(
        "winner: selection mean ± std (val)",
        lambda a: (
            pct(a["winner"]["val_mean"])
            + ("" if a["winner"]["val_std"] is None else f" ± {100 * a['winner']['val_std']:.1f}")
        ),
    )
    line("winner: test accuracy (test, once)", lambda a: pct(a["winner"]["test_acc"]))
    line("winner", lambda a: a["winner"]["hash"][:12])
    n, d = report["noise"], report["diagnostics"]
    print(
        f"noise: one cell's val accuracy over seeds, pooled std {pct(n['seed_std'])} (selection); "
        f"test binomial std {pct(n['test_binomial_std'])} ({n['test_size']} images)",
        file=out,
    )
    corr = ", ".join(
        f"epoch {e}: {'-' if r is None else f'{r:.2f}'}" for e, r in d["rank_correlation_with_final"].items()
    )
    print(f"rank correlation with the final val reward (full arm): {corr}", file=out)
    print(f"full arm's best child in the asha arm: {d['full_best_in_asha']}", file=out)
    v = report["verdict"]
    print(
        f"verdict: asha - full = {100 * v['difference']:+.1f} points on the test split, "
        f"SE {100 * v['standard_error']:.1f}: {v['text']}",
        file=out,
    )
    print(f"total {report['seconds']:.0f} s", file=out)


if __name__ == "__main__":
    main()
