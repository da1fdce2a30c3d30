"""`python -m nas_engine train`: train a cell at N@P on a data set and save a bundle.

The bundle (a directory, written by `nas_engine/bundle.py`) holds what someone needs to
reuse the result: the genotype, the recipe, the per-epoch metrics and the trained weights.
The option groups it shares with `search` are in `options.py`.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from nas_engine.bundle import save_bundle
from nas_engine.commands.options import (
    CliError,
    data_from_args,
    default_stem_multiplier,
    recipe_from_args,
    resolve_device,
    resolve_n_and_f,
)
from nas_engine.genotype import Genotype
from nas_engine.trainer import EpochMetrics, Reporter, train_child


class ProgressBar(Reporter):
    """A tqdm bar over every training batch, with the last epoch's metrics beside it."""

    def __init__(self, enabled: bool, desc: str = "train"):
        self.enabled, self.desc, self.bar = enabled, desc, None

    def on_start(self, total_epochs: int, batches_per_epoch: int) -> None:
        self.bar = tqdm(total=total_epochs * batches_per_epoch, desc=self.desc, disable=not self.enabled, leave=False)

    def on_batch(self, epoch: int, batch: int, batches: int) -> None:
        self.bar.update(1)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.bar.set_postfix(epoch=f"{metrics.epoch}/{metrics.epochs}", val_acc=f"{metrics.val_acc:.4f}")
        if self.enabled:
            tqdm.write(
                f"epoch {metrics.epoch}/{metrics.epochs}  train loss {metrics.train_loss:.4f} "
                f"acc {metrics.train_acc:.4f}  val loss {metrics.val_loss:.4f} acc {metrics.val_acc:.4f}  "
                f"({metrics.seconds:.1f}s)",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_train(args: argparse.Namespace, genotype: Genotype) -> int:
    repeats, filters = resolve_n_and_f(args, genotype)
    recipe = recipe_from_args(args, repeats, filters, default_stem_multiplier(args))
    device = resolve_device(args.device)
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise CliError(f"--output: {args.output} exists and is not a directory")
    show = not args.no_progress and not args.json
    data = data_from_args(args, progress=show)
    bar = ProgressBar(enabled=show)
    try:
        result = train_child(genotype, recipe, data, device=device, reporter=bar, keep_model=args.output is not None)
    finally:
        bar.close()
    if args.output is not None:
        save_bundle(args.output, genotype, recipe, data, result)
    summary = {**result.to_dict(), "dataset": data.name, "device": str(device)}
    if args.json:
        print(json.dumps(summary))
    elif result.status == "ok":
        print(
            f"{data.name}: val accuracy {result.reward:.4f} after {recipe.epochs} epochs "
            f"({result.params:,} params, {result.mult_adds / 1e6:.1f}M mult-adds, {result.wall_time:.1f}s on {device})"
        )
    else:
        print(f"{data.name}: training {result.status}: {result.error}", file=sys.stderr)
    if args.output is not None and not args.json:
        print(f"bundle written to {args.output}", file=sys.stderr)
    return 0 if result.status == "ok" else 1
