"""What a worker process loads once and keeps: data sets, synthetic objectives, its device.

A gpu-queue worker trains many children of the same search: decoding the data set (or
building the synthetic objective) once per process instead of once per child is most of
what makes a short child cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from django.conf import settings

from nas_engine.data import DatasetSplit, load_dataset
from nas_engine.spec import SearchSpec
from nas_engine.synthetic import SyntheticObjective

_datasets: dict[str, DatasetSplit] = {}
_objectives: dict[tuple, SyntheticObjective] = {}


def device() -> torch.device:
    # One worker process per GPU, pinned by CUDA_VISIBLE_DEVICES: it sees "cuda:0" only.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dataset_for(dataset: dict, seed: int) -> DatasetSplit:
    """The data set of a spec (or a training job), loaded once per process."""
    key = json.dumps({**dataset, "seed": seed}, sort_keys=True)
    if key not in _datasets:
        _datasets[key] = load_dataset(
            dataset["name"],
            data_root=settings.NAS_DATA_ROOT,
            cache_dir=settings.NAS_CACHE_DIR,
            image_size=dataset.get("image_size"),
            subset_per_class=dataset.get("subset_per_class"),
            val_size=dataset.get("val_size"),
            test_size=dataset.get("test_size"),
            test_dataset=dataset.get("test_dataset"),
            seed=seed,
        )
    return _datasets[key]


def objective_for(spec: SearchSpec) -> SyntheticObjective:
    o = spec.objective
    key = (json.dumps(spec.space.to_dict(), sort_keys=True), spec.seed, o["noise"], o["failure_rate"], o["duration_s"])
    if key not in _objectives:
        _objectives[key] = SyntheticObjective(
            spec.space, spec.seed, noise=o["noise"], failure_rate=o["failure_rate"], duration_s=o["duration_s"]
        )
    return _objectives[key]


def checkpoint_path(kind: str, row_id: int) -> Path:
    """Where a long run writes its per-epoch checkpoint: under NAS_ARTIFACTS_ROOT, which every
    gpu worker shares (a requeued run resumes on another worker), outside the bundle folders
    that are served as downloads."""
    return Path(settings.NAS_ARTIFACTS_ROOT) / "checkpoints" / f"{kind}-{row_id}.pt"
