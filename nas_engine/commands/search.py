"""`python -m nas_engine search`: an architecture search on this machine, no web app.

The same strategies and loop the service runs: a strategy proposes genotypes, each child
is trained on the data set (objective `accuracy`, the paper's reward) or scored by the
training-free synthetic objective (`synthetic`, for trying strategies in seconds), the
reward goes back to the strategy, and a checkpoint after every child lets `--resume`
continue an interrupted search exactly where it stopped.

`--early-stop asha|median` ends poor children early (nas_engine.early_stopping): both
objectives report a validation value after every epoch (the synthetic one from its seeded
learning curves), and the summary counts the child epochs actually trained. The settings
live beside the strategy in the search's checkpoint, not in a SearchSpec: the service
does not run early stopping yet, so its spec does not take them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import deque
from pathlib import Path

import torch
from tqdm import tqdm

from nas_engine.commands.options import (
    CliError,
    add_data_arguments,
    add_recipe_arguments,
    data_from_args,
    recipe_from_args,
    resolve_device,
)
from nas_engine.early_stopping import RULES, EarlyStop, check_epochs, parse_early_stop
from nas_engine.genotype import Genotype
from nas_engine.search import ChildResult, run_search
from nas_engine.space import OPS, SearchSpace
from nas_engine.spec import DEFAULT_CHILD
from nas_engine.strategies import STRATEGIES, StrategyError, make_strategy, read_checkpoint
from nas_engine.strategies.base import STOPPED_REWARDS
from nas_engine.synthetic import SyntheticObjective
from nas_engine.trainer import EpochMetrics, Reporter, train_child

# The same small search-time child as a spec's default (N = 1, F = 8, 3 epochs).
SEARCH_CHILD_DEFAULTS = DEFAULT_CHILD


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search")
    group.add_argument(
        "--strategy", choices=sorted(STRATEGIES), help="(default ppo, the paper's; with --resume: the checkpoint's)"
    )
    group.add_argument("--settings", metavar="JSON", help="strategy settings, e.g. '{\"lr\": 0.00035}'")
    group.add_argument(
        "--objective", choices=["accuracy", "synthetic"], default="accuracy", help="reward (default accuracy)"
    )
    group.add_argument("--children", type=int, default=20, help="children to evaluate (default %(default)s)")
    group.add_argument("--parallel", type=int, default=1, help="children outstanding before rewards come back")
    group.add_argument("--checkpoint", type=Path, help="write a checkpoint here after every child (new file)")
    group.add_argument(
        "--resume",
        type=Path,
        help="continue the search checkpointed in this file (strategy, settings, space and seed come from it; "
        "give the same data and child options)",
    )
    group.add_argument("--no-reuse", action="store_true", help="train duplicates again instead of reusing rewards")
    group.add_argument("--output", "-o", type=Path, help="directory for best_genotype.json, children.jsonl")
    group.add_argument("--json", action="store_true", help="print the final summary as JSON")
    group.add_argument("--synthetic-noise", type=float, default=0.0, help="synthetic: reward noise (std)")
    group.add_argument("--synthetic-duration", type=float, default=0.0, help="synthetic: seconds per child")
    stop = parser.add_argument_group(
        "early stopping", "End poor children before their full training (default: the checkpoint's with --resume)."
    )
    stop.add_argument("--early-stop", choices=RULES, help="the rule (default none: train every child in full)")
    stop.add_argument("--min-epochs", type=int, help="asha: the first rung; median: the grace period (default 1)")
    stop.add_argument("--reduction-factor", type=int, help="asha: keep the top 1/eta at each rung (default 3)")
    stop.add_argument("--min-peers", type=int, help="median: peers needed at an epoch to judge (default 3)")
    stop.add_argument(
        "--stopped-reward", choices=STOPPED_REWARDS, help="what PPO/REINFORCE learn from a stopped child (default rung)"
    )
    space = parser.add_argument_group("search space")
    space.add_argument("--ops", help=f"comma-separated op subset (default all 13: {','.join(OPS)})")
    space.add_argument("--num-blocks", "-B", type=int, help="blocks per cell (default 5)")
    space.add_argument("--combines", help="comma-separated: add,concat (default both)")
    child = parser.add_argument_group("child network")
    child.add_argument("--repeats", "-N", type=int, help=f"N (default {SEARCH_CHILD_DEFAULTS['repeats']})")
    child.add_argument("--filters", "-F", type=int, help=f"F (default {SEARCH_CHILD_DEFAULTS['filters']})")
    child.add_argument("--macro", choices=["cifar", "imagenet"], default="cifar")
    add_data_arguments(parser)
    add_recipe_arguments(parser)
    parser.set_defaults(epochs=SEARCH_CHILD_DEFAULTS["epochs"], lr=SEARCH_CHILD_DEFAULTS["lr"])
    parser.set_defaults(batch_size=SEARCH_CHILD_DEFAULTS["batch_size"], seed=None)


def space_from_args(args: argparse.Namespace, default: SearchSpace) -> SearchSpace:
    def split(text: str | None, fallback: tuple[str, ...]) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()] if text else list(fallback)

    return SearchSpace.from_dict(
        {
            "ops": split(args.ops, default.ops),
            "num_blocks": default.num_blocks if args.num_blocks is None else args.num_blocks,
            "combines": split(args.combines, default.combines),
        }
    )


def strategy_from_args(args: argparse.Namespace):
    """A new strategy, or for --resume one built like the checkpointed one.

    Options given on the command line must agree with the checkpoint (the loop refuses
    a mismatch); options left out are taken from it, so `--resume FILE` alone works.
    """
    name, settings, space, seed = args.strategy or "ppo", settings_from_args(args), SearchSpace(), args.seed
    if args.resume is not None:
        saved = read_checkpoint(args.resume)
        if args.strategy and args.strategy != saved["strategy"]:
            raise StrategyError(
                "checkpoint.strategy", f"{args.resume} holds a {saved['strategy']!r} search, not {args.strategy!r}"
            )
        name = saved["strategy"]
        settings = settings if args.settings else saved["settings"]
        space = SearchSpace.from_dict(saved["space"])
        if seed is not None and seed != saved["seed"]:
            raise StrategyError("seed", f"{seed} differs from the checkpoint's seed {saved['seed']}")
        seed = saved["seed"]
    args.seed = seed = 0 if seed is None else seed  # the objective and the data split use it too
    space = space_from_args(args, space)
    return make_strategy(name, space, settings, seed=seed), space


EARLY_STOP_OPTIONS = ("early_stop", "min_epochs", "reduction_factor", "min_peers", "stopped_reward")


def early_stop_from_args(args: argparse.Namespace) -> EarlyStop:
    """The options given, over the checkpoint's settings with --resume (the loop refuses
    a mismatch), over the defaults."""
    given = {key: getattr(args, key) for key in EARLY_STOP_OPTIONS if getattr(args, key) is not None}
    base = {}
    if args.resume is not None:
        base = dict((read_checkpoint(args.resume).get("loop") or {}).get("early_stop") or {})
    if "early_stop" in given:
        given["rule"] = given.pop("early_stop")
    settings = parse_early_stop({**base, **given})
    check_epochs(settings, args.epochs)
    return settings


def settings_from_args(args: argparse.Namespace) -> dict:
    if not args.settings:
        return {}
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        raise CliError(f"--settings: malformed JSON: {exc.msg}") from None
    if not isinstance(settings, dict):
        raise CliError("--settings: must be a JSON object")
    return settings


def make_evaluate(args: argparse.Namespace, space: SearchSpace):
    """`evaluate(genotype, report)` (it reports each epoch's validation value to the search
    loop and stops when told to), and a one-line description of it."""
    if args.epochs < 1:
        raise StrategyError("epochs", f"must be a positive integer, got {args.epochs}")
    if args.objective == "synthetic":
        try:
            objective = SyntheticObjective(
                space, seed=args.seed, noise=args.synthetic_noise, duration_s=args.synthetic_duration
            )
        except ValueError as exc:
            raise StrategyError("objective", str(exc)) from None

        def synthetic(genotype: Genotype, report) -> float | None:
            return objective.train(genotype, args.epochs, report)

        return synthetic, f"synthetic objective (optimum {objective.optimum()[1]:.4f}), {args.epochs} epochs"
    repeats = args.repeats or SEARCH_CHILD_DEFAULTS["repeats"]
    recipe = recipe_from_args(args, repeats, args.filters or SEARCH_CHILD_DEFAULTS["filters"], stem_multiplier=3.0)
    device = resolve_device(args.device)
    data = data_from_args(args, progress=not args.no_progress and not args.json)
    if not data.has_val:
        raise CliError("--val-size: a search needs a validation split: its rewards are validation accuracy")
    # Children share the process's RNG and cores, so they train one at a time even when
    # --parallel keeps several proposals outstanding (which is what changes the search).
    lock = threading.Lock()

    def evaluate(genotype: Genotype, report) -> float | None:
        with lock:
            return train_child(genotype, recipe, data, device=device, reporter=_EpochReporter(report, lock)).reward

    n_train, n_val = len(data.train_labels), len(data.val_labels)
    return evaluate, (
        f"validation accuracy on {data.name} ({n_train} train / {n_val} val), "
        f"children N={recipe.repeats} F={recipe.filters}, {recipe.epochs} epochs on {device}"
    )


class _EpochReporter(Reporter):
    """Hands each epoch's validation accuracy to the search loop and stops the child when
    the loop says so (the trainer checks `should_stop` before the next batch)."""

    def __init__(self, report, lock: threading.Lock):
        self.report, self.lock, self.go_on = report, lock, True

    def on_epoch(self, metrics: EpochMetrics) -> None:
        # The loop may hold this child until earlier children reach this epoch: hand the
        # cores to them meanwhile, and take this child's random state back afterwards so
        # its training is the same as if it had never waited.
        states = _rng_states()
        self.lock.release()
        try:
            self.go_on = self.report(metrics.epoch, metrics.val_acc)
        finally:
            self.lock.acquire()
            _set_rng_states(states)

    def should_stop(self) -> bool:
        return not self.go_on


def _rng_states() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_states(states: tuple) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class SearchProgress:
    """A bar over children showing the best reward and the mean of the last 20."""

    def __init__(self, total: int, enabled: bool, output: Path | None):
        self.bar = tqdm(total=total, desc="search", unit="child", disable=not enabled)
        self.recent: deque[float] = deque(maxlen=20)
        self.best: float | None = None
        self.log = None
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            self.log = (output / "children.jsonl").open("a")

    def on_result(self, result: ChildResult) -> None:
        if result.reward is not None and not result.stopped:  # a rung value is not a final reward
            self.recent.append(result.reward)
            self.best = result.reward if self.best is None else max(self.best, result.reward)
        self.bar.update(1)
        if self.best is not None:
            self.bar.set_postfix(best=f"{self.best:.4f}", recent=f"{sum(self.recent) / len(self.recent):.4f}")
        if self.log is not None:
            row = {
                "id": result.proposal_id,
                "status": result.status,
                "reward": result.reward,
                "epochs": result.epochs,
                "stopped_at": result.fidelity.epochs if result.stopped else None,
                "hash": result.genotype.canonical_hash(),
                "genotype": result.genotype.to_dict(),
            }
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()

    def close(self) -> None:
        self.bar.close()
        if self.log is not None:
            self.log.close()


def run_search_command(args: argparse.Namespace) -> int:
    if args.checkpoint and args.resume:
        raise CliError("--resume: give either --checkpoint (a new search) or --resume (continue one), not both")
    if args.resume is not None and not args.resume.is_file():
        raise CliError(f"--resume: {args.resume}: no such checkpoint file")
    if args.checkpoint is not None and args.checkpoint.exists():
        raise CliError(f"--checkpoint: {args.checkpoint} exists; use --resume {args.checkpoint} to continue it")
    strategy, space = strategy_from_args(args)
    early_stop = early_stop_from_args(args)
    if args.objective == "synthetic":
        # The controller's updates are the only tensor work: one thread avoids OpenMP
        # spinning against other processes for no gain on such small tensors.
        torch.set_num_threads(1)
    evaluate, described = make_evaluate(args, space)
    show = not args.no_progress and not args.json
    if show:
        stopping = "" if not early_stop.active else f", early stopping {early_stop.rule}"
        print(f"{strategy.name} search, {args.children} children, reward = {described}{stopping}", file=sys.stderr)
    progress = SearchProgress(args.children, show, args.output)
    try:
        summary = run_search(
            strategy,
            evaluate,
            children=args.children,
            parallel=args.parallel,
            reuse_duplicates=not args.no_reuse,
            on_result=progress.on_result,
            checkpoint_path=args.resume or args.checkpoint,
            resume=args.resume is not None,
            epochs=args.epochs,
            early_stop=early_stop,
        )
    finally:
        progress.close()
    result = {
        "strategy": strategy.name,
        "objective": args.objective,
        "children": summary.children,
        "failed": summary.failed,
        "reused": summary.reused,
        "completed": summary.completed,
        "stopped": summary.stopped,
        "epochs": args.epochs,
        "epochs_trained": summary.epochs_trained,
        "early_stop": early_stop.to_dict(),
        "best_reward": summary.best_reward,
        "mean_reward_last_100": summary.mean_reward_last_100,
        "best_genotype": summary.best_genotype.to_dict() if summary.best_genotype else None,
        "best_hash": summary.best_genotype.canonical_hash() if summary.best_genotype else None,
        "duration_s": summary.duration,
    }
    if args.output is not None and summary.best_genotype is not None:
        (args.output / "best_genotype.json").write_text(summary.best_genotype.to_json(indent=2))
        (args.output / "summary.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return 0
    if summary.best_reward is None:
        print(f"{summary.children} children, none succeeded ({summary.failed} failed)")
        return 1
    stopped = f", {summary.stopped} stopped early" if early_stop.active else ""
    trained = "" if summary.epochs_trained is None else f", {summary.epochs_trained} child epochs"
    print(
        f"{summary.children} children ({summary.reused} reused, {summary.failed} failed{stopped}){trained} "
        f"in {summary.duration:.1f}s: best final reward {summary.best_reward:.4f}, "
        f"mean of the last {min(100, len(summary.history))} {summary.mean_reward_last_100:.4f}"
    )
    print(f"best genotype {result['best_hash'][:12]}: {summary.best_genotype.to_json()}")
    if args.output is not None:
        print(f"written to {args.output}/ (best_genotype.json, summary.json, children.jsonl)", file=sys.stderr)
    return 0
