"""Option groups the CLI's commands share, and `CliError`, which bad option values raise.

`nas_engine/cli.py` builds the parser and runs the short commands; `commands/train.py`
and `commands/search.py` hold the long ones. All of them add the same option groups
(genotype, macro, data, training recipe) and read them back the same way, so those live
here, below both: imports go one way, cli -> commands -> options. The transfer group
(`--preset`, `--max-params`, `--max-mult-adds`) is train's alone.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from nas_engine import transfer
from nas_engine.cells import KNOWN_CELLS
from nas_engine.data import DataError, DatasetSplit, load_dataset
from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.network import filters_for_penultimate, parse_n_at_p
from nas_engine.trainer import Recipe
from nas_engine.transfer import TRANSFER_PRESETS, TransferPreset


class CliError(Exception):
    """Bad input: printed as `error: <field>: <reason>`, exit status 2."""


# -- the cell and how it is stacked (describe, render, train) -----------------------------
def add_genotype_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cell", metavar="NAME", help=f"a published cell: {', '.join(KNOWN_CELLS)} (default nasnet_a)")
    group.add_argument("--genotype", metavar="FILE", type=Path, help="a genotype JSON file")


def load_genotype(args: argparse.Namespace) -> Genotype:
    if args.genotype is not None:
        try:
            text = args.genotype.read_text()
        except OSError as exc:
            raise CliError(f"--genotype: cannot read {args.genotype}: {exc.strerror}") from None
        try:
            return Genotype.from_json(text)
        except GenotypeError as exc:
            raise CliError(f"--genotype: {args.genotype}: {exc}") from None
    name = args.cell or "nasnet_a"
    if name not in KNOWN_CELLS:
        raise CliError(f"--cell: unknown cell {name!r}; known cells: {', '.join(KNOWN_CELLS)}")
    return KNOWN_CELLS[name]


def add_macro_options(parser: argparse.ArgumentParser, *, repeats: int, filters: int | None) -> None:
    parser.add_argument("--macro", choices=["cifar", "imagenet"], default="cifar", help="stacking (default cifar)")
    parser.add_argument("--n-at-p", metavar="N@P", help="the paper's notation, e.g. 6@768 (sets N and F)")
    parser.add_argument("--repeats", "-N", type=int, default=None, help=f"normal cells per stack (default {repeats})")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--filters", "-F", type=int, default=None, help=f"filters of the first stack (default {filters})")
    size.add_argument("--penultimate-filters", "-P", type=int, default=None, help="P: filters of the last cell")
    parser.add_argument(
        "--stem-multiplier",
        type=float,
        default=None,
        help="cifar: stem = x F (default 3); imagenet: stem = x 32 (default 1; 3 for the large model)",
    )
    parser.set_defaults(default_repeats=repeats, default_filters=filters)


def resolve_n_and_f(args: argparse.Namespace, genotype: Genotype) -> tuple[int, int]:
    """N and F from --n-at-p, --repeats, --filters / --penultimate-filters."""
    repeats, penultimate = args.repeats, args.penultimate_filters
    if args.n_at_p:
        n, p = parse_n_at_p(args.n_at_p)
        if repeats is not None and repeats != n:
            raise CliError(f"--repeats: {repeats} contradicts --n-at-p {args.n_at_p}")
        if args.filters is not None or (penultimate is not None and penultimate != p):
            raise CliError("--n-at-p: give either N@P or --filters/--penultimate-filters, not both")
        repeats, penultimate = n, p
    repeats = args.default_repeats if repeats is None else repeats
    if penultimate is not None:
        filters = filters_for_penultimate(genotype, penultimate)
    else:
        filters = args.default_filters if args.filters is None else args.filters
    return repeats, filters


def default_stem_multiplier(args: argparse.Namespace) -> float:
    """3 for CIFAR (stem = 3F) and 1 for ImageNet (stem = 32, the mobile model)."""
    if args.stem_multiplier is not None:
        return args.stem_multiplier
    return 3.0 if args.macro == "cifar" else 1.0


# -- data, training recipe and device (train, search) -------------------------------------
def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", default="digits", help="digits, cifar10, or an image folder under the data root (default digits)"
    )
    group.add_argument("--data-root", type=Path, help="folder that holds data sets (default $NAS_DATA_ROOT or ./data)")
    group.add_argument("--cache-dir", type=Path, help="decoded-tensor cache (default $NAS_CACHE_DIR or ./.cache)")
    group.add_argument("--subset-per-class", type=int, help="keep N images of every class (class-balanced)")
    group.add_argument(
        "--val-size", type=float, help="validation images: a count (0: none, a final training), or a fraction below 1"
    )
    group.add_argument(
        "--test-size",
        type=float,
        help="carve a fixed test split out of a set that has none: a count or a fraction (digits: 0.2)",
    )
    group.add_argument(
        "--test-dataset", help="an image folder with the same classes to test on (default: a sibling test/ of train/)"
    )
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
    group.add_argument("--crop-padding", type=int, help="random-crop padding in pixels (default: image size / 8)")
    flip = group.add_mutually_exclusive_group()
    flip.add_argument(
        "--flip", action="store_true", default=None, help="mirror images left-right (default: unless digits)"
    )
    flip.add_argument("--no-flip", action="store_false", dest="flip", help="never mirror images")
    group.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the classifier (0 = off)")
    group.add_argument(
        "--weight-decay-norm-bias",
        action="store_true",
        help="also decay batch-norm parameters and biases (default: conv and linear weights only)",
    )
    group.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def recipe_from_args(
    args: argparse.Namespace, repeats: int, filters: int, stem_multiplier: float, base: Recipe | None = None
) -> Recipe:
    """The recipe the options describe; fields without an option (nesterov, ...) come from `base`."""
    return replace(
        base or Recipe(),
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
        crop_padding=args.crop_padding,
        flip=args.flip,
        cutout=args.cutout,
        dropout=args.dropout,
        weight_decay_norm_bias=args.weight_decay_norm_bias,
        seed=args.seed,
    )


# -- transfer: named final trainings and size budgets (train) ----------------------------------
# The options a --preset fills when they are not given: on a parser with the transfer group
# their default becomes None ("not given") and the real one is kept aside for apply_preset.
# --image-size, --stem-multiplier, --repeats and the width already default to None.
PRESET_OPTIONS = (
    "macro", "epochs", "batch_size", "lr", "momentum", "weight_decay", "no_cosine", "label_smoothing",
    "drop_path_keep", "aux_weight", "grad_clip", "cutout", "no_augment", "dropout", "weight_decay_norm_bias",
)  # fmt: skip
BUDGET_OPTIONS = {"max_params": "--max-params", "max_mult_adds": "--max-mult-adds"}


def add_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --list-presets, --max-params, --max-mult-adds; add after the macro and recipe groups."""
    group = parser.add_argument_group(
        "transfer",
        "A preset sets the defaults of the options above (N@P, macro, stem, image size, recipe);"
        " options given explicitly win.",
    )
    group.add_argument("--preset", metavar="NAME", help=f"a named final training: {', '.join(TRANSFER_PRESETS)}")
    group.add_argument("--list-presets", action="store_true", help="list the presets and exit (with --json: as JSON)")
    group.add_argument(
        "--max-params",
        type=parse_count,
        metavar="COUNT",
        help="fit the width F (and N, unless -N or a preset sets it) to at most this many parameters, e.g. 3.3M",
    )
    group.add_argument(
        "--max-mult-adds", type=parse_count, metavar="COUNT", help="the same for mult-adds, e.g. 564M or 600e6"
    )
    fallbacks = {dest: parser.get_default(dest) for dest in PRESET_OPTIONS}
    parser.set_defaults(preset_fallbacks=fallbacks, **dict.fromkeys(PRESET_OPTIONS))


def parse_count(text: str) -> int:
    """'564M', '5.3m', '23.8B', '600e6', '3300000' -> a positive whole count (transfer.parse_count)."""
    try:
        return transfer.parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def apply_preset(args: argparse.Namespace) -> TransferPreset | None:
    """Fill the options not given from --preset (or their usual defaults); return the preset."""
    preset = None
    if getattr(args, "preset", None) is not None:
        if args.preset not in TRANSFER_PRESETS:
            known = ", ".join(TRANSFER_PRESETS)
            raise CliError(f"--preset: unknown preset {args.preset!r}; known presets: {known}")
        preset = TRANSFER_PRESETS[args.preset]
    for dest, default in getattr(args, "preset_fallbacks", {}).items():
        if getattr(args, dest) is None:
            setattr(args, dest, default if preset is None else _preset_value(preset.recipe, dest))
    if preset is not None:
        args.default_repeats, args.default_filters = preset.recipe.repeats, preset.recipe.filters
        if args.image_size is None:
            args.image_size = preset.image_size
        if args.stem_multiplier is None and args.macro == preset.recipe.macro:
            args.stem_multiplier = preset.recipe.stem_multiplier
    return preset


def _preset_value(recipe: Recipe, dest: str):
    if dest in ("no_cosine", "no_augment"):
        return not getattr(recipe, dest.removeprefix("no_"))
    return getattr(recipe, dest)


def budget_from_args(args: argparse.Namespace) -> dict[str, int]:
    """{max_params, max_mult_adds} as given ({} without a budget); a budget picks the width,
    so it cannot be combined with -F, -P or --n-at-p (-N may fix N)."""
    budget = {dest: getattr(args, dest) for dest in BUDGET_OPTIONS if getattr(args, dest, None) is not None}
    if budget and (args.n_at_p or args.filters is not None or args.penultimate_filters is not None):
        option = BUDGET_OPTIONS[next(iter(budget))]
        raise CliError(f"{option}: the budget picks the width; drop -F/-P/--n-at-p (-N may fix N)")
    return budget


def data_from_args(args: argparse.Namespace, *, progress: bool) -> DatasetSplit:
    return load_dataset(
        args.dataset,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        image_size=args.image_size,
        subset_per_class=args.subset_per_class,
        val_size=_count_or_fraction(args.val_size, "val_size"),
        test_size=_count_or_fraction(args.test_size, "test_size"),
        test_dataset=args.test_dataset,
        seed=args.seed,
        download=not args.no_download,
        progress=progress,
    )


def _count_or_fraction(value: float | None, field_name: str) -> int | float | None:
    """A command-line number: whole numbers are counts (0 included), others fractions."""
    if value is None or 0 < value < 1:
        return value
    if value != int(value):
        raise DataError(field_name, f"a count must be a whole number, got {value}")
    return int(value)


def resolve_device(name: str) -> torch.device:
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
