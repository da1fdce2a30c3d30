"""`python -m nas_engine search`: an architecture search on this machine, no web app."""

from __future__ import annotations

import argparse

from nas_engine.commands.train import add_data_arguments, add_recipe_arguments


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--children", type=int, default=20, help="architectures to evaluate (default 20)")
    add_data_arguments(parser)
    add_recipe_arguments(parser)


def run_search_command(args: argparse.Namespace) -> int:
    raise NotImplementedError
