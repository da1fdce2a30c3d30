"""The options of local mode, shared by `local.py` (before anything is installed) and
`python -m workers.local` (which runs it).

Standard library only, and no side effects: local.py loads this file by its path, without
importing the `workers` package (whose __init__ needs Celery), so that `--help` and a bad
option answer at once, before a virtual environment is created or anything installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OBJECTIVES = ("accuracy", "synthetic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 local.py",
        description="Run NASNet Studio locally: web server, workers, an embedded Valkey server (the broker) "
        "and a demo search. Ctrl-C stops everything; running it again resumes.",
        epilog="DATABASE_URL and REDIS_URL, when set, replace the embedded SQLite database and Valkey server "
        "(REDIS_URL is also the way out where the bundled server cannot run); NAS_* settings apply as usual.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the web server listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="a data root holding CIFAR-10 (an ImageFolder such as cifar10-jpeg/train, or torchvision's "
        "cifar10/): the demo search runs on it instead of the digits data set",
    )
    parser.add_argument("--dataset", help="the data set under --data-root to search on (default: found)")
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="accuracy",
        help="accuracy (default): children are trained and their validation accuracy is the reward; "
        "synthetic: no training, an instant made-up reward per cell, for a quick look at the service",
    )
    parser.add_argument(
        "--children", type=int, default=20, help="children of the demo search, when it is submitted (default 20)"
    )
    parser.add_argument("--parallel", type=int, default=2, help="its children in flight at once (default 2)")
    parser.add_argument("--gpus", help="comma-separated GPU ids for gpu-queue workers (default: all, or the CPU)")
    parser.add_argument("--state-dir", type=Path, help="where local state lives (default: .local/)")
    parser.add_argument("--stop-timeout", type=float, default=15.0, help="seconds to wait for a clean stop")
    parser.add_argument("--no-browser", action="store_true", help="do not open the search page in a browser")
    parser.add_argument("--verbose", action="store_true", help="show the servers' output here, not only in logs")
    parser.add_argument(
        "--skip-install", action="store_true", help="local.py: use .venv as it is (offline, or a shared one)"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked; a bad one ends the process with status 2 and a one-line reason."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.children < 1 or args.parallel < 1:
        parser.error("--children and --parallel must be at least 1")
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if not args.stop_timeout > 0:
        parser.error("--stop-timeout must be more than 0 seconds")
    if args.objective == "synthetic" and (args.data_root is not None or args.dataset):
        parser.error("--data-root and --dataset: the synthetic objective trains nothing, so it reads no data")
    if args.dataset and args.data_root is None:
        parser.error("--dataset names a data set under --data-root: give --data-root too")
    if args.data_root is not None and not args.data_root.expanduser().is_dir():
        parser.error(f"--data-root: {args.data_root} is not a folder")
    return args
