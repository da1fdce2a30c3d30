"""Start the workers: `python -m workers controller|gpu|beat|all [options] [-- celery options]`.

    python -m workers all                 # controller + one gpu-queue worker per GPU + beat
    python -m workers gpu --gpus 0,1      # two gpu-queue workers, pinned to GPU 0 and GPU 1
    python -m workers controller -- --loglevel=DEBUG

The controller worker consumes the `controller` queue (advance_search, reap). A gpu-queue
worker trains one child at a time (prefork, concurrency 1) and sees one GPU through
CUDA_VISIBLE_DEVICES; without GPUs, one gpu-queue worker trains on the CPU. `beat` sends
the periodic reaper (settings.NAS_REAPER_INTERVAL_SECONDS). Ctrl-C / SIGTERM stops all.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def gpu_ids(given: str | None) -> list[str | None]:
    """["0", "1"] for --gpus 0,1; by default every visible GPU; [None] (CPU) when none."""
    if given:
        return [g.strip() for g in given.split(",") if g.strip()]
    import torch

    count = torch.cuda.device_count()
    return [str(i) for i in range(count)] or [None]


def commands(args: argparse.Namespace) -> list[tuple[list[str], dict]]:
    celery = [sys.executable, "-m", "celery", "-A", "workers"]
    common = [f"--loglevel={args.loglevel}", *args.celery_args]
    out: list[tuple[list[str], dict]] = []
    if args.role in ("controller", "all"):
        worker = [*celery, "worker", "-Q", "controller", "-n", "controller@%h", f"--concurrency={args.concurrency}"]
        # A PPO update is a small LSTM's backward pass: torch's default of one thread per core
        # only fights the web tier and PostgreSQL for the cores (a PPO advance of 8 results
        # took 1.0 s of CPU on 2 busy cores with the default, 0.07 s with one thread).
        threads = os.environ.get("NAS_CONTROLLER_THREADS", "1")
        out.append((worker + common, {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}))
    if args.role in ("gpu", "all"):
        for gpu in gpu_ids(args.gpus):
            env = {"CUDA_VISIBLE_DEVICES": gpu if gpu is not None else ""}
            name = f"gpu{gpu}@%h" if gpu is not None else "cpu@%h"
            worker = [*celery, "worker", "-Q", "gpu", "-n", name, "--concurrency=1", "--pool=prefork"]
            out.append((worker + common, env))
    if args.role in ("beat", "all"):
        out.append(([*celery, "beat", f"--loglevel={args.loglevel}"], {}))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("controller", "gpu", "beat", "all"), help="which processes to start")
    parser.add_argument("--gpus", help="comma-separated GPU ids for gpu-queue workers (default: all visible)")
    parser.add_argument("--concurrency", type=int, default=1, help="controller worker processes (default 1)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
    parser.epilog = "Options after -- are passed to every celery process, e.g. -- --without-gossip"
    argv = list(sys.argv[1:] if argv is None else argv)
    # Split at "--" ourselves: argparse treats what follows a positional's "--" unreliably.
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.celery_args = argv[cut + 1 :]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = commands(args)
    if args.dry_run:
        for cmd, env in plan:
            print(" ".join(f"{k}={v}" for k, v in env.items()), " ".join(cmd))
        return 0
    procs = [subprocess.Popen(cmd, env={**os.environ, **env}) for cmd, env in plan]

    def stop(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [proc.wait() for proc in procs]
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
