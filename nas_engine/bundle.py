"""A trained child's bundle: the directory that holds what someone needs to reuse it.

`genotype.json`, `recipe.json`, `metrics.json` (per-epoch metrics, data set and classes)
and, when the model was kept, `weights.pt`. Each file is written to a temporary name and
renamed, so a reader never sees half a file. Written by `python -m nas_engine train
--output` and by the service's workers for every trained child.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nas_engine.data import DatasetSplit
from nas_engine.genotype import Genotype
from nas_engine.trainer import Recipe, TrainResult


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
