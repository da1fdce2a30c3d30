"""`python -m nas_engine train`: train a cell at N@P on a data set and save a bundle.

The bundle (a directory, written by `nas_engine/bundle.py`) holds what someone needs to
reuse the result: the genotype, the recipe, the per-epoch metrics and the trained weights.
Validation accuracy is printed beside the test accuracy (the data set's test split, scored
once after the last epoch). With --output, a checkpoint in the bundle directory after every
epoch lets the same command, run again, resume where an interrupted run stopped.
The option groups it shares with `search` are in `options.py`.

The paper's transfer step by name: `--preset cifar_final` (or imagenet_mobile, ...; see
`--list-presets` and `nas_engine/transfer.py`) sets N@P, the macro, the image size and
the recipe; any option given explicitly still wins. `--max-params` / `--max-mult-adds`
instead pick the widest F (and N: -N, else the preset's, else the best of 1..7) whose
network fits, counted at the data set's image size and class count.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from nas_engine.bundle import save_bundle
from nas_engine.commands.options import (
    BUDGET_OPTIONS,
    CliError,
    apply_preset,
    budget_from_args,
    data_from_args,
    default_stem_multiplier,
    recipe_from_args,
    resolve_device,
    resolve_n_and_f,
)
from nas_engine.data import DatasetSplit
from nas_engine.genotype import Genotype
from nas_engine.trainer import EpochMetrics, Recipe, Reporter, train_child
from nas_engine.transfer import TRANSFER_PRESETS, BudgetError, fit_recipe, penultimate_filters


class ProgressBar(Reporter):
    """A tqdm bar over every training batch, with the last epoch's metrics beside it."""

    def __init__(self, enabled: bool, desc: str = "train"):
        self.enabled, self.desc, self.bar = enabled, desc, None

    def on_start(self, total_epochs: int, batches_per_epoch: int) -> None:
        self.bar = tqdm(total=total_epochs * batches_per_epoch, desc=self.desc, disable=not self.enabled, leave=False)

    def on_batch(self, epoch: int, batch: int, batches: int) -> None:
        self.bar.update(1)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.bar.set_postfix(epoch=f"{metrics.epoch}/{metrics.epochs}", val_acc=_acc(metrics.val_acc))
        if self.enabled:
            val = "" if metrics.val_acc is None else f"  val loss {metrics.val_loss:.4f} acc {metrics.val_acc:.4f}"
            tqdm.write(
                f"epoch {metrics.epoch}/{metrics.epochs}  train loss {metrics.train_loss:.4f} "
                f"acc {metrics.train_acc:.4f}{val}  ({metrics.seconds:.1f}s)",
                file=sys.stderr,
            )

    def on_resume(self, epoch: int, history: list[EpochMetrics]) -> None:
        if self.bar is not None:
            self.bar.update(epoch * (self.bar.total // max(1, history[-1].epochs)))
        if self.enabled:
            tqdm.write(f"resumed at epoch {epoch + 1} from the checkpoint", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# Written in the bundle directory after every epoch: run the same command again to resume.
CHECKPOINT = "checkpoint.pt"


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(labels) -> int:
    return 0 if labels is None else len(labels)


def run_train(args: argparse.Namespace, genotype: Genotype) -> int:
    if getattr(args, "list_presets", False):
        return _list_presets(genotype, as_json=args.json)
    preset = apply_preset(args)
    budget = budget_from_args(args)
    repeats, filters = resolve_n_and_f(args, genotype)
    base = preset.recipe if preset is not None else None
    recipe = recipe_from_args(args, repeats, filters, default_stem_multiplier(args), base=base)
    device = resolve_device(args.device)
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise CliError(f"--output: {args.output} exists and is not a directory")
    show = not args.no_progress and not args.json
    data = data_from_args(args, progress=show)
    if budget:
        fixed_n = args.repeats if args.repeats is not None else (base.repeats if base is not None else None)
        recipe = _fit(genotype, recipe, data, budget, fixed_n, show)
    bar = ProgressBar(enabled=show)
    checkpoint = args.output / CHECKPOINT if args.output is not None else None
    try:
        result = train_child(
            genotype,
            recipe,
            data,
            device=device,
            reporter=bar,
            keep_model=args.output is not None,
            test=True,
            checkpoint=checkpoint,
        )
    finally:
        bar.close()
    if args.output is not None:
        save_bundle(args.output, genotype, recipe, data, result)
        if result.status == "ok":
            checkpoint.unlink(missing_ok=True)  # the bundle has the weights; the checkpoint served its purpose
    penultimate = penultimate_filters(genotype, recipe.filters)
    summary = {
        **result.to_dict(),
        "preset": getattr(args, "preset", None),
        "macro": recipe.macro,
        "n_at_p": f"{recipe.repeats}@{penultimate}",
        "repeats": recipe.repeats,
        "filters": recipe.filters,
        "penultimate_filters": penultimate,
        "image_size": data.image_size,
        "budget": {**budget, "params": result.params, "mult_adds": result.mult_adds} if budget else None,
        "dataset": data.name,
        "splits": {"train": len(data.train_labels), "val": len(data.val_labels), "test": _count(data.test_labels)},
        "test_source": data.test_source,
        "device": str(device),
    }
    if args.json:
        print(json.dumps(summary))
    elif result.status == "ok":
        test = f"test accuracy {result.test_acc:.4f}" if result.test_acc is not None else "no test split"
        fitted = "".join(f", fitted to {BUDGET_OPTIONS[k]} {v:,}" for k, v in budget.items())
        print(
            f"{data.name}: {recipe.macro} {summary['n_at_p']} (F={recipe.filters}) at {data.image_size}px: "
            f"val accuracy {_acc(result.val_acc)}, {test} after {recipe.epochs} epochs "
            f"({result.params:,} params, {result.mult_adds / 1e6:.1f}M mult-adds{fitted}; "
            f"{result.wall_time:.1f}s on {device})"
        )
    else:
        print(f"{data.name}: training {result.status}: {result.error}", file=sys.stderr)
    if args.output is not None and not args.json:
        print(f"bundle written to {args.output}", file=sys.stderr)
    return 0 if result.status == "ok" else 1


def _fit(
    genotype: Genotype, recipe: Recipe, data: DatasetSplit, budget: dict[str, int], repeats: int | None, show: bool
) -> Recipe:
    """The recipe with the N and F of the largest network within the budget, on this data."""
    if show:
        print("fitting N and F to the budget...", file=sys.stderr)
    try:
        return fit_recipe(genotype, recipe, data, budget, repeats)[0]
    except BudgetError as exc:
        option = BUDGET_OPTIONS.get(exc.field)
        raise CliError(f"{option}: {exc.reason}" if option else str(exc)) from None


def _list_presets(genotype: Genotype, *, as_json: bool) -> int:
    """The presets, with N@P for this cell (`--cell`, default NASNet-A)."""
    if as_json:
        print(json.dumps([{"name": name, **p.to_dict(genotype)} for name, p in TRANSFER_PRESETS.items()], indent=2))
        return 0
    rows = [("name", "macro", "N@P", "size", "epochs", "description")]
    for name, p in TRANSFER_PRESETS.items():
        rows.append(
            (name, p.recipe.macro, p.n_at_p(genotype), f"{p.image_size}px", str(p.recipe.epochs), p.description)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
    return 0
