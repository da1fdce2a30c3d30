"""The command line: `python -m nas_engine {cells,describe,render,train,search,export,evaluate}`.

Researchers use the engine without the web app: list the published cells, count a
cell's parameters and mult-adds at any N@P, draw it, train it on a data set (the
paper's transfer step), or run a whole search locally. Bad input ends with one line
naming the option and the reason, and exit status 2.

This module holds the parser and the short commands; `commands/` holds the long ones
(train, search, export, evaluate) and, in `commands/options.py`, the option groups and `CliError` they
all share. Imports go one way: cli -> commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nas_engine.bundle import BundleError
from nas_engine.cells import DESCRIPTIONS, KNOWN_CELLS
from nas_engine.commands.evaluate import DESCRIPTION as EVALUATE_DESCRIPTION
from nas_engine.commands.evaluate import add_evaluate_arguments, run_evaluate
from nas_engine.commands.export import DESCRIPTION as EXPORT_DESCRIPTION
from nas_engine.commands.export import add_export_arguments, run_export
from nas_engine.commands.options import (
    CliError,
    add_data_arguments,
    add_genotype_options,
    add_macro_options,
    add_recipe_arguments,
    add_transfer_arguments,
    default_stem_multiplier,
    load_genotype,
    resolve_n_and_f,
)
from nas_engine.commands.search import add_search_arguments, run_search_command
from nas_engine.commands.train import run_train
from nas_engine.data import DataError
from nas_engine.early_stopping import EarlyStopError
from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.model import ExportError, ModelInputError
from nas_engine.network import MacroConfig, NetworkError
from nas_engine.space import SpaceError
from nas_engine.strategies import StrategyError
from nas_engine.trainer import RecipeError

EXIT_BAD_INPUT = 2
# The engine's FieldErrors a command can raise: printed as `error: <field>: <reason>`.
BAD_INPUT = (
    GenotypeError, NetworkError, SpaceError, DataError, RecipeError, StrategyError, BundleError, ExportError,
    ModelInputError, EarlyStopError,
)  # fmt: skip


# -- commands ---------------------------------------------------------------------------------
def cmd_cells(args: argparse.Namespace) -> int:
    rows = [
        {"name": name, "description": DESCRIPTIONS[name], "hash": g.canonical_hash()[:12], "genotype": g.to_dict()}
        for name, g in KNOWN_CELLS.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['hash']}  {r['description']}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from nas_engine.counting import describe

    genotype = load_genotype(args)
    repeats, filters = resolve_n_and_f(args, genotype)
    image_size = args.image_size or (32 if args.macro == "cifar" else 224)
    macro = MacroConfig(
        kind=args.macro,
        repeats=repeats,
        filters=filters,
        stem_multiplier=default_stem_multiplier(args),
        num_classes=args.num_classes or (10 if args.macro == "cifar" else 1000),
        image_size=image_size,
    )
    counts = describe(genotype, macro)
    result = {
        **counts.to_dict(),
        "macro": macro.kind,
        "repeats": repeats,
        "filters": filters,
        "penultimate_filters": _penultimate(genotype, filters),
        "image_size": image_size,
        "num_classes": macro.num_classes,
        "hash": genotype.canonical_hash(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{macro.kind} {repeats}@{result['penultimate_filters']} (F={filters}) at {image_size}px, "
            f"{macro.num_classes} classes: {counts.params:,} params ({counts.params / 1e6:.2f}M), "
            f"{counts.mult_adds:,} mult-adds ({counts.mult_adds / 1e6:.1f}M)"
        )
    return 0


def _penultimate(genotype: Genotype, filters: int) -> int:
    from nas_engine.network import output_multiplier

    return 4 * filters * output_multiplier(genotype.normal)


def cmd_render(args: argparse.Namespace) -> int:
    from nas_engine.render import render_cell_svg, render_genotype_svg

    genotype = load_genotype(args)
    title = args.title if args.title is not None else (args.cell or (args.genotype.stem if args.genotype else None))
    if args.which == "both":
        svg = render_genotype_svg(genotype, title=title)
    else:
        svg = render_cell_svg(genotype.cells()[args.which], cell_type=args.which, title=title)
    if str(args.output) == "-":
        sys.stdout.write(svg)
    else:
        _write_text(args.output, svg, "--output")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _write_text(path: Path, text: str, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise CliError(f"{option}: cannot write {path}: {exc.strerror}") from None


def cmd_train(args: argparse.Namespace) -> int:
    return run_train(args, load_genotype(args))


def cmd_search(args: argparse.Namespace) -> int:
    return run_search_command(args)


def cmd_export(args: argparse.Namespace) -> int:
    return run_export(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    return run_evaluate(args)


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nas_engine",
        description="NASNet search space, child networks, training and search, without the web app.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("cells", help="list the published cells", description="List the published cells.")
    p.add_argument("--json", action="store_true", help="print the genotypes as JSON")
    p.set_defaults(func=cmd_cells)

    p = sub.add_parser(
        "describe",
        help="params and mult-adds of a cell at N@P",
        description="Count parameters and mult-adds (PyTorch's FLOP counter) of a cell stacked at N@P.",
    )
    add_genotype_options(p)
    add_macro_options(p, repeats=6, filters=32)
    p.add_argument("--image-size", type=int, help="input size (default 32 cifar, 224 imagenet)")
    p.add_argument("--num-classes", type=int, help="classifier size (default 10 cifar, 1000 imagenet)")
    p.add_argument("--json", action="store_true", help="print a JSON object with params and mult_adds")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("render", help="draw a cell as SVG", description="Draw a genotype's cells as an SVG file.")
    add_genotype_options(p)
    p.add_argument("--output", "-o", type=Path, required=True, help="SVG file to write ('-' for stdout)")
    p.add_argument("--which", choices=["both", "normal", "reduce"], default="both", help="which cell (default both)")
    p.add_argument("--title", help="title drawn above the cells")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "train",
        help="train a cell at N@P on a data set",
        description="Train a cell stacked at N@P on a data set (the paper's transfer step) and save a bundle.",
    )
    add_genotype_options(p)
    add_macro_options(p, repeats=2, filters=16)
    add_data_arguments(p)
    add_recipe_arguments(p)
    add_transfer_arguments(p)
    p.add_argument("--output", "-o", type=Path, help="directory for the bundle: genotype, weights, metrics, recipe")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", help="run a local search", description="Run an architecture search locally.")
    add_search_arguments(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="a bundle as an ONNX or TorchScript graph", description=EXPORT_DESCRIPTION)
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="score a bundle on a data set", description=EVALUATE_DESCRIPTION)
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return EXIT_BAD_INPUT
