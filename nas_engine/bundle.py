"""A trained child's bundle: the directory that holds what someone needs to reuse it.

Format version 1, one directory:

    model.json     the manifest: format version, the network's macro config, class names,
                   the input the model expects and its normalisation (mean/std of the
                   training split), the headline metrics and the weights' SHA-256
    genotype.json  the cell (`Genotype.to_json`)
    recipe.json    how it was trained (`Recipe.to_dict`)
    metrics.json   per-epoch metrics, val_acc, test_acc, test_source, split sizes, data set
                   and classes (`TrainResult.to_dict` plus the data set's side)
    weights.pt     the network's state_dict, CPU tensors; only when the run ended "ok"

With model.json, genotype.json and weights.pt the model runs without its training data
(`nas_engine.load_model`). Each file is written to a temporary name and renamed, so a
reader never sees half a file; model.json is written last and names the weights by
checksum, so a reader that meets a bundle being rewritten notices the mismatch instead of
pairing new weights with an old description.

`read_bundle` reads one back, from the directory or from a zip of it (the web app's
download, `webapp/api/views.py`), and checks it: every problem is a `BundleError` whose
field is the file at fault. Written by `python -m nas_engine train --output` and by the
service's workers for every trained child.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nas_engine.errors import FieldError
from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.network import MacroConfig, NetworkError

if TYPE_CHECKING:  # only for annotations: reading a bundle needs neither data sets nor the trainer
    from nas_engine.data import DatasetSplit
    from nas_engine.trainer import Recipe, TrainResult

FORMAT = "nas_engine bundle"
FORMAT_VERSION = 1
MODEL_FILE = "model.json"
GENOTYPE_FILE = "genotype.json"
RECIPE_FILE = "recipe.json"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "weights.pt"


class BundleError(FieldError):
    """A bundle cannot be used as asked. `field` is the file at fault ("bundle" for the whole)."""


# -- writing --------------------------------------------------------------------------------------
def save_bundle(directory: Path, genotype: Genotype, recipe: Recipe, data: DatasetSplit, result: TrainResult) -> None:
    """Write the bundle of a finished run into `directory` (created if needed).

    The weights are written only when the run ended "ok" and kept its model; otherwise the
    bundle still describes the run (genotype, recipe, metrics, model.json with no weights)
    and a weights.pt left there by an earlier run is removed, so it cannot pass for this one's.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    macro = getattr(result.model, "macro", None) or recipe.macro_config(data)
    splits = {"train": len(data.train_labels), "val": len(data.val_labels), "test": _count(data.test_labels)}
    metrics = {
        **result.to_dict(),
        "dataset": data.name,
        "classes": list(data.classes),
        "test_source": data.test_source,
        "splits": splits,
    }
    _write_atomically(directory / GENOTYPE_FILE, genotype.to_json(indent=2).encode())
    _write_atomically(directory / RECIPE_FILE, json.dumps(recipe.to_dict(), indent=2).encode())
    _write_atomically(directory / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    weights = None
    if result.model is not None and result.status == "ok":
        # CPU and NCHW-contiguous: the file loads on any machine, whatever device and
        # memory format the run trained in.
        state = {k: v.detach().to("cpu").contiguous() for k, v in result.model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        blob = buffer.getvalue()
        _write_atomically(directory / WEIGHTS_FILE, blob)
        weights = {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "written_with": {"torch": torch.__version__.split("+")[0]},
        "status": result.status,
        "error": result.error,
        "genotype_hash": genotype.canonical_hash(),
        "macro": asdict(macro),
        "classes": list(data.classes),
        "input": input_description(macro),
        "normalization": {"scale": "1/255", "mean": list(data.mean), "std": list(data.std)},
        "dataset": {"name": data.name, "test_source": data.test_source, "splits": splits},
        "metrics": {
            "val_acc": result.val_acc,
            "test_acc": result.test_acc,
            "test_loss": result.test_loss,
            "params": result.params,
            "mult_adds": result.mult_adds,
            "epochs": len(result.epochs),
        },
        "weights": weights,
    }
    _write_atomically(directory / MODEL_FILE, json.dumps(manifest, indent=2).encode())
    if weights is None:
        (directory / WEIGHTS_FILE).unlink(missing_ok=True)


def input_description(macro: MacroConfig) -> dict:
    """What `load_model`'s module takes, in words a reader of model.json can act on."""
    color = {1: "grayscale", 3: "RGB"}.get(macro.in_channels, f"{macro.in_channels} channels")
    return {
        "layout": "NCHW",
        "channels": macro.in_channels,
        "color": color,
        "height": macro.image_size,
        "width": macro.image_size,
        "dtype": "uint8",
        "range": [0, 255],
        "also": "float in [0, 1]; C x H x W or channels-last N x H x W x C; other sizes resized (bilinear)",
    }


def _count(labels: torch.Tensor | None) -> int:
    return 0 if labels is None else len(labels)


def _write_atomically(path: Path, blob: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(blob)
        tmp.replace(path)
    except BaseException:  # a full disk or Ctrl-C mid-write: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise


# -- reading --------------------------------------------------------------------------------------
@dataclass
class Bundle:
    """A bundle read back and checked. `state_dict` is None when read without weights."""

    source: str  # the directory or zip, for messages
    manifest: dict
    genotype: Genotype
    macro: MacroConfig
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recipe: dict | None  # recipe.json as written (None when the file is absent)
    metrics: dict | None  # metrics.json as written (None when the file is absent)
    state_dict: dict[str, torch.Tensor] | None = None


def read_bundle(path: str | Path, *, weights: bool = True) -> Bundle:
    """Read and check the bundle at `path`: its directory, or a zip of it (with or without
    one top-level folder). `weights=False` skips weights.pt (describing, not running)."""
    files = _open(Path(path))
    try:
        return _read(files, weights)
    finally:
        files.close()


def _read(files: _Files, weights: bool) -> Bundle:
    manifest = _json_object(files, MODEL_FILE)
    _check_format(manifest, files)
    macro = _macro(manifest.get("macro"))
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise BundleError(MODEL_FILE, "classes must be a list of class names")
    if len(classes) != macro.num_classes:
        raise BundleError(MODEL_FILE, f"{len(classes)} classes but macro.num_classes is {macro.num_classes}")
    mean, std = _normalization(manifest.get("normalization"), macro.in_channels)
    genotype = _genotype(files, manifest)
    recipe = _json_object(files, RECIPE_FILE) if files.has(RECIPE_FILE) else None
    metrics = _json_object(files, METRICS_FILE) if files.has(METRICS_FILE) else None
    bundle = Bundle(files.source, manifest, genotype, macro, list(classes), mean, std, recipe, metrics)
    if weights:
        bundle.state_dict = _weights(files, manifest)
    return bundle


def _check_format(manifest: dict, files: _Files) -> None:
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or version is None:
        raise BundleError(MODEL_FILE, f"in {files.source} is not a {FORMAT} manifest (no format / format_version)")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(MODEL_FILE, f"format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            MODEL_FILE,
            f"format_version {version} is newer than this nas_engine reads ({FORMAT_VERSION}); upgrade nas_engine",
        )
    if version != FORMAT_VERSION:
        raise BundleError(
            MODEL_FILE, f"format_version {version} is not supported (this nas_engine reads {FORMAT_VERSION})"
        )


def _macro(data: object) -> MacroConfig:
    if not isinstance(data, dict):
        raise BundleError(MODEL_FILE, "macro must be an object with the network's macro config")
    known = {f.name: type(getattr(MacroConfig(), f.name)) for f in fields(MacroConfig)}
    for key, value in data.items():
        if key not in known:
            raise BundleError(MODEL_FILE, f"macro.{key}: unknown field (written by a newer nas_engine?)")
        expected = known[key]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise BundleError(MODEL_FILE, f"macro.{key}: must be of type {expected.__name__}, got {value!r}")
    # Fields missing from the file take MacroConfig's defaults: a field added later keeps
    # old bundles loadable, as long as its default means what the network did before.
    try:
        return MacroConfig(**data)
    except NetworkError as exc:
        raise BundleError(MODEL_FILE, f"macro.{exc.field}: {exc.reason}") from None


def _normalization(data: object, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not isinstance(data, dict):
        raise BundleError(MODEL_FILE, "normalization must be an object with mean and std")
    values = {}
    for key in ("mean", "std"):
        v = data.get(key)
        if not (
            isinstance(v, list)
            and len(v) == channels
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        ):
            raise BundleError(MODEL_FILE, f"normalization.{key}: must be {channels} finite numbers, got {v!r}")
        values[key] = tuple(float(x) for x in v)
    if any(s <= 0 for s in values["std"]):
        raise BundleError(MODEL_FILE, f"normalization.std: must be positive, got {list(values['std'])}")
    return values["mean"], values["std"]


def _genotype(files: _Files, manifest: dict) -> Genotype:
    text = files.text(GENOTYPE_FILE)
    try:
        genotype = Genotype.from_json(text)
    except GenotypeError as exc:
        raise BundleError(GENOTYPE_FILE, f"not a valid genotype: {exc}") from None
    expected = manifest.get("genotype_hash")
    if expected is not None and genotype.canonical_hash() != expected:
        # The weights only fit the cell they were trained for: say so here rather than
        # with a list of mismatched tensor shapes later.
        raise BundleError(
            GENOTYPE_FILE,
            f"its cell (hash {genotype.canonical_hash()[:12]}) is not the one model.json describes "
            f"(hash {str(expected)[:12]}); the file was changed after the bundle was written",
        )
    return genotype


def _weights(files: _Files, manifest: dict) -> dict[str, torch.Tensor]:
    described = manifest.get("weights")
    if described is None:
        status, error = manifest.get("status"), manifest.get("error")
        why = f"the run ended {status!r}" + (f" ({error})" if error else "")
        raise BundleError(
            WEIGHTS_FILE, f"{files.source} has no weights: {why}; only a run that ended 'ok' can be loaded"
        )
    if not isinstance(described, dict) or not isinstance(described.get("sha256"), str):
        raise BundleError(MODEL_FILE, "weights must be null or an object with the file's sha256")
    if not files.has(WEIGHTS_FILE):
        raise BundleError(WEIGHTS_FILE, f"missing from {files.source} (model.json says the run saved its weights)")
    blob = files.read(WEIGHTS_FILE)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != described["sha256"]:
        raise BundleError(
            WEIGHTS_FILE,
            f"in {files.source} is not the file model.json was written with (sha256 {digest[:12]}, "
            f"expected {described['sha256'][:12]}): truncated, changed, or the bundle is being rewritten",
        )
    try:
        # weights_only: a bundle may come from anywhere (a download); no pickled code runs.
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a foreign or damaged file
        raise BundleError(WEIGHTS_FILE, f"cannot be read as PyTorch weights: {_short(exc)}") from None
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise BundleError(WEIGHTS_FILE, "is not a state_dict (a mapping of names to tensors)")
    return state


def _json_object(files: _Files, name: str) -> dict:
    text = files.text(name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(name, f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise BundleError(name, f"must hold a JSON object, got {type(data).__name__}")
    return data


def _short(exc: Exception, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- where the files come from: a directory or a zip ---------------------------------------------
class _Files:
    source: str

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def text(self, name: str) -> str:
        if not self.has(name):
            raise BundleError(name, f"missing from {self.source}{_legacy_hint(self, name)}")
        try:
            return self.read(name).decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(name, f"in {self.source} is not UTF-8 text") from None


def _legacy_hint(files: _Files, name: str) -> str:
    if name == MODEL_FILE and files.has(GENOTYPE_FILE):
        return (
            " (a bundle written before bundles were self-contained: without model.json the input size "
            "and normalisation are unknown; train again to get a loadable bundle)"
        )
    return ""


class _DirFiles(_Files):
    def __init__(self, folder: Path):
        self.folder, self.source = folder, str(folder)

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def read(self, name: str) -> bytes:
        try:
            return (self.folder / name).read_bytes()
        except OSError as exc:
            raise BundleError(name, f"cannot read {self.folder / name}: {exc.strerror}") from None


class _ZipFiles(_Files):
    def __init__(self, path: Path):
        self.source = str(path)
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleError("bundle", f"{path} is not a readable zip: {_short(exc)}") from None
        names = {i.filename for i in self.archive.infolist() if not i.is_dir()}
        # The web app zips the folder's contents; `zip -r b.zip b/` adds one folder level.
        self.prefix = ""
        if MODEL_FILE not in names and GENOTYPE_FILE not in names:
            tops = {n.split("/", 1)[0] + "/" for n in names if "/" in n}
            if len(tops) == 1:
                self.prefix = tops.pop()
        self.names = {n[len(self.prefix) :] for n in names if n.startswith(self.prefix)}

    def has(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str) -> bytes:
        try:
            return self.archive.read(self.prefix + name)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:  # a CRC error is a BadZipFile
            raise BundleError(name, f"cannot read it from {self.source}: {_short(exc)}") from None

    def close(self) -> None:
        self.archive.close()


def _open(path: Path) -> _Files:
    if path.is_dir():
        return _DirFiles(path)
    if path.is_file():
        if zipfile.is_zipfile(path):
            return _ZipFiles(path)
        raise BundleError("bundle", f"{path} is neither a bundle directory nor a zip of one")
    raise BundleError("bundle", f"{path}: no such file or directory")
