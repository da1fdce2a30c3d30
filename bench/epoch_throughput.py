"""CPU throughput of one training epoch of a small NASNet-A child on real CIFAR-10.

The search trains thousands of small children, so images/s of one child epoch is the
number that sets the search's cost. Uses a class-balanced 5,000-image training subset
of the CIFAR-10 JPEG folder (plus 500 held out), decoded once into the cache.

    python bench/epoch_throughput.py --data-root ../shared/datasets
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nas_engine.cells import NASNET_A
from nas_engine.data import load_dataset
from nas_engine.trainer import Recipe, train_child

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--dataset", default="cifar10-jpeg/train")
    parser.add_argument("--repeats", type=int, default=2, help="N (default 2, the paper's search-time child)")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = load_dataset(args.dataset, data_root=args.data_root, subset_per_class=550, val_size=500, progress=True)
    load_s = time.perf_counter() - t0
    recipe = Recipe(repeats=args.repeats, filters=args.filters, epochs=1, batch_size=args.batch_size)
    result = train_child(NASNET_A, recipe, data, device=args.device)
    epoch = result.epochs[0]
    n_train = len(data.train_labels)
    print(
        f"NASNet-A N={args.repeats} F={args.filters} ({result.params:,} params, "
        f"{result.mult_adds / 1e6:.1f}M mult-adds), "
        f"batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"  data: {n_train} train / {len(data.val_labels)} val images, loaded in {load_s:.1f}s")
    print(
        f"  one epoch (train + validation): {epoch.seconds:.1f}s = {n_train / epoch.seconds:.1f} train img/s; "
        f"val acc after 1 epoch {epoch.val_acc:.3f}"
    )


if __name__ == "__main__":
    main()
