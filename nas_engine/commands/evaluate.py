"""`python -m nas_engine evaluate`: score a bundle on a data set, any data set with its classes.

The bundle runs through `load_model`, so the preprocessing is the one a user of the
bundle gets: images of another size are resized to the trained size there. The data
set must have the bundle's classes (names and order: logit k means class k) and its
channel count. Default split: the data set's test split where it has one, else every
image; --split val or train reproduce training's splits when the data options match the
training run's (the seed defaults to the recipe's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nas_engine.commands.options import CliError, add_data_arguments, data_from_args, resolve_device
from nas_engine.data import DatasetSplit
from nas_engine.model import BundledModel, load_model

SPLITS = ("test", "val", "train", "all")
DESCRIPTION = (
    "Score a bundle (directory or zip) on a data set with the same classes, in the same order: accuracy and "
    "loss on its test split, or on every image where it has none (--split chooses). Images of another size "
    "are resized to the bundle's (bilinear, antialiased), as load_model does."
)
# The trainer's default eval batch: batches of the same size give the same float results.
DEFAULT_BATCH = 500


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="a bundle directory, or a zip of one")
    add_data_arguments(parser)
    parser.set_defaults(dataset=None)
    for action in parser._actions:  # argparse has no public way to reword a shared option's help
        if action.dest == "dataset":
            action.help = "digits, cifar10, or an image folder under the data root (default: the bundle's data set)"
    parser.add_argument(
        "--split", choices=SPLITS, help="which images to score (default: test where the data set has one, else all)"
    )
    parser.add_argument("--seed", type=int, help="seed of the val/train split (default: the bundle's recipe seed)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: the recipe's, 500)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model = load_model(args.bundle, device=device)
    recipe = model.recipe or {}
    args.dataset = args.dataset or model.dataset
    if not args.dataset:
        raise CliError("--dataset: the bundle names no data set; name one")
    if args.seed is None:
        args.seed = _int_or(recipe.get("seed"), 0)
    if args.batch_size is not None and args.batch_size < 1:
        raise CliError(f"--batch-size: must be a positive integer, got {args.batch_size}")
    batch_size = args.batch_size or _int_or(recipe.get("eval_batch_size"), DEFAULT_BATCH)
    show = not args.no_progress and not args.json
    data = data_from_args(args, progress=show)
    _check_compatible(model, data, args.dataset)
    split, images, labels, source = _choose_split(data, args.split)
    if len(labels) == 0:
        raise CliError(f"--split: the {split} split of {data.name} is empty")

    correct, loss = _score(model, images, labels, batch_size, device, show)
    count = len(labels)
    height, width = (int(d) for d in images.shape[-2:])
    resized = (height, width) != (model.image_size, model.image_size)
    result = {
        "accuracy": correct / count,
        "loss": loss / count,
        "correct": correct,
        "count": count,
        "split": split,
        "split_source": source,
        "dataset": data.name,
        "classes": len(data.classes),
        "bundle": str(args.bundle),
        "image_size": model.image_size,
        "resized_from": [height, width] if resized else None,
        "recorded": {"val_acc": model.val_acc, "test_acc": model.test_acc, "dataset": model.dataset},
        "device": str(device),
    }
    if args.json:
        print(json.dumps(result))
    else:
        size = model.image_size
        note = f"; images resized {height}x{width} -> {size}x{size}" if resized else ""
        print(
            f"{data.name}, {split} split ({source}{note}): accuracy {result['accuracy']:.4f} "
            f"({correct:,}/{count:,}), loss {result['loss']:.4f}{_recorded(model)}"
        )
    return 0


@torch.inference_mode()
def _score(
    model: BundledModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device, show: bool
) -> tuple[int, float]:
    """Correct predictions and summed cross-entropy, in batches, as the trainer evaluates."""
    total_loss, correct = torch.zeros((), dtype=torch.float64), 0
    with tqdm(total=len(labels), desc="evaluate", unit="img", disable=not show, leave=False) as bar:
        for start in range(0, len(labels), batch_size):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            logits = model(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum").double().cpu()
            correct += int((logits.argmax(1) == y).sum())
            bar.update(len(y))
    return correct, total_loss.item()


def _check_compatible(model: BundledModel, data: DatasetSplit, name: str) -> None:
    if list(data.classes) != model.classes:
        raise CliError(
            f"--dataset: {name} has classes {_few(data.classes)} but the bundle was trained on "
            f"{_few(model.classes)}; evaluate needs the same class names in the same order"
        )
    if data.channels != model.channels:
        raise CliError(
            f"--dataset: {name} has {data.channels}-channel images but the bundle's model takes {model.channels}"
        )


def _choose_split(data: DatasetSplit, split: str | None) -> tuple[str, torch.Tensor, torch.Tensor, str]:
    """(split, images, labels, where they come from in words)."""
    if split is None:
        split = "test" if data.has_test else "all"
    if split == "test":
        if not data.has_test:
            raise CliError(f"--split: {data.name} has no test split (--test-size carves one; --split all scores all)")
        return split, data.test_images, data.test_labels, f"{len(data.test_labels):,} images: {data.test_source}"
    if split == "val":
        return split, data.val_images, data.val_labels, f"{len(data.val_labels):,} images held out for validation"
    if split == "train":
        return split, data.train_images, data.train_labels, f"{len(data.train_labels):,} training images"
    parts = [(data.train_images, data.train_labels), (data.val_images, data.val_labels)]
    if data.has_test:
        parts.append((data.test_images, data.test_labels))
    images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    why = "train, val and test" if data.has_test else "train and val; the data set has no test split"
    return "all", images, labels, f"all {len(labels):,} images: {why}"


def _int_or(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _recorded(model: BundledModel) -> str:
    if model.test_acc is None:
        return ""
    return f"; the bundle recorded test accuracy {model.test_acc:.4f} on {model.dataset}"


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(c) for c in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"
