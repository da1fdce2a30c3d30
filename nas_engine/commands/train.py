"""`python -m nas_engine train`: train a cell at N@P on a data set and save a bundle.

The bundle (a directory) holds what someone needs to reuse the result: the genotype,
the recipe, the per-epoch metrics and the trained weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from nas_engine.data import DataError, DatasetSplit, load_dataset
from nas_engine.genotype import Genotype
from nas_engine.trainer import EpochMetrics, Recipe, Reporter, TrainResult, train_child


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", default="digits", help="digits, cifar10, or an image folder under the data root (default digits)"
    )
    group.add_argument("--data-root", type=Path, help="folder that holds data sets (default $NAS_DATA_ROOT or ./data)")
    group.add_argument("--cache-dir", type=Path, help="decoded-tensor cache (default $NAS_CACHE_DIR or ./.cache)")
    group.add_argument("--subset-per-class", type=int, help="keep N images of every class (class-balanced)")
    group.add_argument("--val-size", type=float, help="held-out images: a count, or a fraction below 1")
    group.add_argument("--image-size", type=int, help="resize images to S x S")
    group.add_argument("--no-download", action="store_true", help="never download cifar10")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    d = Recipe()
    group = parser.add_argument_group("training recipe")
    group.add_argument("--epochs", type=int, default=d.epochs, help=f"(default {d.epochs})")
    group.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    group.add_argument("--lr", type=float, default=d.lr, help=f"initial learning rate (default {d.lr})")
    group.add_argument("--momentum", type=float, default=d.momentum, help=f"(default {d.momentum})")
    group.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default {d.weight_decay})")
    group.add_argument("--no-cosine", action="store_true", help="constant learning rate instead of cosine decay")
    group.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    group.add_argument("--drop-path-keep", type=float, default=d.drop_path_keep, help="final keep prob (1 = off)")
    group.add_argument("--aux-weight", type=float, default=d.aux_weight, help="aux head loss weight (0 = no head)")
    group.add_argument("--grad-clip", type=float, default=d.grad_clip, help=f"(default {d.grad_clip}; 0 = off)")
    group.add_argument("--cutout", type=int, default=d.cutout, help="cutout size in pixels (0 = off)")
    group.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    group.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def recipe_from_args(args: argparse.Namespace, repeats: int, filters: int, stem_multiplier: float) -> Recipe:
    return Recipe(
        macro=args.macro,
        repeats=repeats,
        filters=filters,
        stem_multiplier=stem_multiplier,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        cosine=not args.no_cosine,
        label_smoothing=args.label_smoothing,
        drop_path_keep=args.drop_path_keep,
        aux_weight=args.aux_weight,
        grad_clip=args.grad_clip,
        augment=not args.no_augment,
        cutout=args.cutout,
        seed=args.seed,
    )


def data_from_args(args: argparse.Namespace, *, progress: bool) -> DatasetSplit:
    val_size = args.val_size
    if val_size is not None and val_size >= 1:
        if val_size != int(val_size):
            raise DataError("val_size", f"a count must be a whole number, got {val_size}")
        val_size = int(val_size)
    return load_dataset(
        args.dataset,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        image_size=args.image_size,
        subset_per_class=args.subset_per_class,
        val_size=val_size,
        seed=args.seed,
        download=not args.no_download,
        progress=progress,
    )


def resolve_device(name: str) -> torch.device:
    from nas_engine.cli import CliError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"--device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device: {name} asked for but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise CliError(f"--device: {name!r} is not supported; use cpu or cuda")
    return device


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


def save_bundle(directory: Path, genotype: Genotype, recipe: Recipe, data: DatasetSplit, result: TrainResult) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "genotype.json": genotype.to_json(indent=2),
        "recipe.json": json.dumps(recipe.to_dict(), indent=2),
        "metrics.json": json.dumps({**result.to_dict(), "dataset": data.name, "classes": data.classes}, indent=2),
    }
    for name, text in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)
    if result.model is not None:
        tmp = directory / ".weights.pt.tmp"
        torch.save(result.model.state_dict(), tmp)
        tmp.replace(directory / "weights.pt")


def run_train(args: argparse.Namespace, genotype: Genotype, resolve_n_and_f) -> int:
    from nas_engine.cli import CliError, default_stem_multiplier

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
