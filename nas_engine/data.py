"""Data sets for child training: decoded once, cached as uint8 tensors, split per seed.

Zoph et al. 2017, section 4: the controller's reward is the child's accuracy on 5,000
images held out from the 50,000 CIFAR-10 training images, so a split is part of every
data set here. Children train for only a few epochs each, thousands of times over, so
decoding JPEGs must happen once: the decoded full set is cached with `torch.save` and
the cheap options (subset, split) are applied to the cached tensors on every load.

Three kinds of source:

    "digits"   sklearn's load_digits: 1,797 8x8 grey images, 10 classes, no download
    "cifar10"  CIFAR-10's python batches under <data_root>/cifar10/, read by cifar_batches
               (downloaded and checksummed by torchvision if allowed)
    a folder   an ImageFolder layout <class>/<image> under the data root, decoded with PIL
               (the two names above always mean the built-in sets)

A test split, where a data set has one, is kept apart from train and validation: the
rewards and the selection of a cell read validation accuracy only, and the test split
scores the final model once (a number that chose a model is never its test score).
Where it comes from:

    cifar10    the official test batch (10,000 images)
    a folder   `test_dataset` (another folder under the root, same classes), else a sibling
               `test/` beside a folder named `train/`
    carved     `test_size` images held out of the set itself, stratified, by a fixed draw
               that no seed changes, before the subset and the validation split are taken
               (digits: 20% by default, as sklearn's set comes in one piece)

Every path is resolved under one data root, and anything resolving outside it (a "..",
an absolute path elsewhere, a symlink pointing out) is refused: a web form names the
data set, so this is the boundary between a user's text and the file system. The data
folder is only read; the cache lives in its own directory and is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from nas_engine import cifar_batches
from nas_engine.errors import FieldError

BUILTIN = ("digits", "cifar10")

# The paper's protocol: 5,000 of CIFAR-10's 50,000 training images validate the children.
PAPER_TRAIN_SIZE = 50_000
PAPER_VAL_SIZE = 5_000
DEFAULT_VAL_FRACTION = 0.1
# sklearn's digits have no test split: 359 of the 1,797 images (20%) are held out once.
DIGITS_TEST_FRACTION = 0.2
# Whether a left-right mirror keeps an image's class: not for digits (a mirrored 2 is no
# digit). Image folders are taken to be photographs, where it does; a recipe's `flip`
# overrides both.
FLIP_SAFE = {"digits": False, "cifar10": True}
FOLDER_FLIP_SAFE = True

# What torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})

# Bump when the decoded bytes for the same files would change (decoder, resize filter).
_CACHE_FORMAT = 1
# Below this many files a worker pool costs more than it saves.
_PARALLEL_MIN_FILES = 2_000
# A download that stalls this long on one socket operation is given up.
_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


class DataError(FieldError):
    """A data set cannot be loaded as asked. `field` names the offending option."""


@dataclass
class DatasetSplit:
    """Training, validation and (where the set has one) test splits as uint8 N x C x H x W
    tensors. The validation split may be empty (`val_size: 0`, a final training on every
    training image); the test split is None when the set has none."""

    name: str
    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    val_images: torch.Tensor = field(repr=False)
    val_labels: torch.Tensor = field(repr=False)
    classes: list[str] = field(repr=False)
    mean: tuple[float, ...] = ()  # per channel, of the train images scaled to [0, 1]
    std: tuple[float, ...] = ()
    test_images: torch.Tensor | None = field(default=None, repr=False)
    test_labels: torch.Tensor | None = field(default=None, repr=False)
    test_source: str = ""  # where the test split came from, in words ("" without one)
    flip_safe: bool = True  # may training mirror images left-right (FLIP_SAFE)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_val(self) -> bool:
        return len(self.val_labels) > 0

    @property
    def has_test(self) -> bool:
        return self.test_labels is not None and len(self.test_labels) > 0

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[2])

    def to(self, device: torch.device | str) -> DatasetSplit:
        """A copy whose tensors live on `device` (keep the set resident on the GPU)."""
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            val_images=self.val_images.to(device),
            val_labels=self.val_labels.to(device),
            test_images=None if self.test_images is None else self.test_images.to(device),
            test_labels=None if self.test_labels is None else self.test_labels.to(device),
        )

    def __repr__(self) -> str:
        test = len(self.test_labels) if self.test_labels is not None else 0
        return (
            f"DatasetSplit({self.name!r}, train={len(self.train_labels)}, val={len(self.val_labels)}, "
            f"test={test}, classes={self.num_classes}, shape={tuple(self.train_images.shape[1:])})"
        )


def default_data_root() -> Path:
    """$NAS_DATA_ROOT, else <repo root>/data."""
    return Path(os.environ.get("NAS_DATA_ROOT") or _REPO_ROOT / "data")


def default_cache_dir() -> Path:
    """$NAS_CACHE_DIR, else <repo root>/.cache/datasets."""
    return Path(os.environ.get("NAS_CACHE_DIR") or _REPO_ROOT / ".cache" / "datasets")


def resolve_under_root(path: str | Path, data_root: Path) -> Path:
    """`path` (relative to the data root, or absolute) resolved, symlinks followed.

    Refuses anything that ends up outside the data root.
    """
    root = Path(data_root).resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise DataError("dataset", f"{str(path)!r} resolves to {resolved}, outside the data root {root}; refused")
    return resolved


def load_dataset(
    name: str,
    *,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    subset_per_class: int | None = None,
    val_size: int | float | None = None,
    test_size: int | float | None = None,
    test_dataset: str | None = None,
    seed: int = 0,
    download: bool = True,
    progress: bool = False,
) -> DatasetSplit:
    """Load a data set (decoding it at most once per cache dir) and split it for `seed`.

    `val_size`: a count (0: no validation split), or a fraction in (0, 1); by default
    5,000 for a 50,000-image set (the paper's protocol), else 10% and at least one image
    per class. The split is stratified per class; `subset_per_class` first keeps N images
    of every class. mean/std are measured on the training split only.

    The test split (module docstring): `test_dataset` names a folder, `test_size` (a count
    or a fraction; 0: none) carves one out of a set that has no test split of its own.
    The seed never changes the test split.
    """
    name = str(name)
    if not name:
        raise DataError("dataset", "no data set named; choose digits, cifar10 or an image folder")
    _check_positive_int("image_size", image_size)
    _check_positive_int("subset_per_class", subset_per_class)
    root = Path(data_root) if data_root is not None else default_data_root()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    if name == "digits":
        full = _load_digits(cache, image_size)
    elif name == "cifar10":
        full = _load_cifar10(root, cache, image_size, download)
    else:
        full = _load_folder(name, root, cache, image_size, progress)

    images, labels, classes = full["images"], full["labels"], list(full["classes"])
    test = _own_test_split(name, full, test_dataset, root, cache, image_size, download, progress)
    if test is not None and test_size:
        raise DataError(
            "test_size",
            f"{full['name']} has a test split already ({test['source']}); "
            "test_size carves one out of a set that has none",
        )
    if test_size is None and name == "digits" and test is None:
        test_size = DIGITS_TEST_FRACTION
    if test_size:
        rest, held_out = _stratified_split(
            labels, len(classes), test_size, _generator(_HOLDOUT_SEED, 2), field_name="test_size"
        )
        test = {
            "images": images[held_out],
            "labels": labels[held_out],
            "source": f"{len(held_out):,} of {len(labels):,} images held out (fixed, stratified)",
        }
        images, labels = images[rest], labels[rest]
    if subset_per_class is not None:
        keep = _balanced_subset(labels, classes, subset_per_class, _generator(seed, 0))
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = _stratified_split(labels, len(classes), val_size, _generator(seed, 1))
    train_images = images[train_idx]
    mean, std = _channel_stats(train_images)
    return DatasetSplit(
        name=full["name"],
        train_images=train_images,
        train_labels=labels[train_idx],
        val_images=images[val_idx],
        val_labels=labels[val_idx],
        classes=classes,
        mean=mean,
        std=std,
        test_images=None if test is None else test["images"],
        test_labels=None if test is None else test["labels"],
        test_source="" if test is None else test["source"],
        flip_safe=FLIP_SAFE.get(name, FOLDER_FLIP_SAFE),
    )


@dataclass(frozen=True)
class DatasetShape:
    """What sizing a network needs of a data set, known without decoding it."""

    num_classes: int
    channels: int
    image_size: int
    images: int  # in the whole set, before any test, validation or subset split


_BUILTIN_SHAPES = {"digits": DatasetShape(10, 1, 8, 1797), "cifar10": DatasetShape(10, 3, 32, 50_000)}


def peek_dataset(name: str, *, data_root: str | Path | None = None, image_size: int | None = None) -> DatasetShape:
    """Classes, channels, image size and image count of a data set, cheaply: a web request
    sizing a network cannot decode 50,000 images. A folder's classes are its subfolders,
    its size the first image's height (`image_size`, when given, wins), its count the
    image files listed (not opened)."""
    _check_positive_int("image_size", image_size)
    if name in _BUILTIN_SHAPES:
        shape = _BUILTIN_SHAPES[name]
        return replace(shape, image_size=image_size or shape.image_size)
    root = Path(data_root) if data_root is not None else default_data_root()
    folder = resolve_under_root(name, root.resolve())
    if not folder.is_dir():
        raise DataError("dataset", f"{name!r} is not a folder under the data root")
    class_dirs = sorted(e.path for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())
    if not class_dirs:
        raise DataError("dataset", f"{name!r} has no class subfolders; lay it out as <class>/<image>")
    if image_size is None:
        image_size = _first_image_height(class_dirs[0])
    images = sum(
        1
        for class_dir in class_dirs
        for e in os.scandir(class_dir)
        if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
    )
    return DatasetShape(len(class_dirs), 3, image_size, images)


def _first_image_height(class_dir: str) -> int:
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        if not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            try:
                with Image.open(entry.path) as image:  # reads the header only
                    return image.size[1]
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DataError("dataset", f"{entry.name}: cannot read the image ({exc})") from None
    raise DataError("dataset", f"class folder {Path(class_dir).name!r} has no images")


# The held-out test split is drawn with this seed whatever the run's seed is.
_HOLDOUT_SEED = 0


def _own_test_split(
    name: str,
    full: dict,
    test_dataset: str | None,
    root: Path,
    cache: Path,
    image_size: int | None,
    download: bool,
    progress: bool,
) -> dict | None:
    """The test split a data set brings along: a named folder, CIFAR-10's test batch, or a
    sibling test/ folder beside train/. None when it has none."""
    if test_dataset is not None:
        if not isinstance(test_dataset, str) or not test_dataset or test_dataset in BUILTIN:
            raise DataError("test_dataset", f"must name an image folder under the data root, got {test_dataset!r}")
        test = _load_folder(test_dataset, root, cache, image_size, progress, field_name="test_dataset")
    elif name == "cifar10":
        test = _load_cifar10(root, cache, image_size, download, train=False)
    elif name != "digits" and (sibling := _sibling_test(name, root)) is not None:
        test = _load_folder(sibling, root, cache, image_size, progress, field_name="test_dataset")
    else:
        return None
    if list(test["classes"]) != list(full["classes"]):
        raise DataError(
            "test_dataset",
            f"{test['name']} has classes {_few(test['classes'])} but {full['name']} has {_few(full['classes'])}; "
            "a test split needs the same classes, in the same order",
        )
    if test["images"].shape[1:] != full["images"].shape[1:]:
        raise DataError(
            "test_dataset",
            f"{test['name']} images are {tuple(test['images'].shape[1:])} but {full['name']} images are "
            f"{tuple(full['images'].shape[1:])}; pass image_size to resize both",
        )
    source = "cifar10 test batch" if name == "cifar10" and test_dataset is None else f"folder {test['name']}"
    return {"images": test["images"], "labels": test["labels"], "source": f"{source} ({len(test['labels']):,} images)"}


def _sibling_test(name: str, root: Path) -> str | None:
    """`x/test` for a folder `x/train` when it exists, relative to the root."""
    try:
        folder = resolve_under_root(name, root)
        sibling = folder.parent / "test"
        if folder.name != "train" or not sibling.is_dir():
            return None
        resolve_under_root(sibling, root)
    except (DataError, OSError):
        return None
    return sibling.relative_to(Path(root).resolve()).as_posix()


def _few(names: list[str], shown: int = 5) -> str:
    head = ", ".join(repr(n) for n in names[:shown])
    return f"[{head}{', ...' if len(names) > shown else ''}] ({len(names)})"


# -- the three sources ---------------------------------------------------------------------
def _load_digits(cache_dir: Path, image_size: int | None) -> dict:
    import sklearn

    def build() -> dict:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap); stretch to 0..255.
        scaled = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        images = _resize(torch.from_numpy(scaled).unsqueeze(1), image_size)
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        return {"images": images, "labels": labels, "classes": [str(c) for c in bunch.target_names]}

    fingerprint = {"sklearn": sklearn.__version__}
    data = _cached(cache_dir, "digits", "sklearn.load_digits", image_size, fingerprint, build)
    return {**data, "name": "digits"}


def _load_cifar10(data_root: Path, cache_dir: Path, image_size: int | None, download: bool, train: bool = True) -> dict:
    root = Path(data_root).resolve()
    folder = resolve_under_root("cifar10", root)
    batches = folder / "cifar-10-batches-py"
    if not batches.is_dir():
        if not download:
            raise DataError("dataset", _cifar10_missing(root, folder, "download is off"))
        _download_cifar10(root, folder)
    _refuse_cache_inside(cache_dir, folder)

    def build() -> dict:
        # The reader raises its own CifarBatchError (it cannot import this module back).
        try:
            ds = cifar_batches.read_split(batches, train=train)
        except cifar_batches.MissingBatchError as exc:
            raise DataError("dataset", _cifar10_missing(root, folder, str(exc))) from None
        except cifar_batches.CifarBatchError as exc:
            raise DataError("dataset", str(exc)) from None
        return {"images": _resize(ds.images, image_size), "labels": ds.labels, "classes": ds.classes}

    fingerprint = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(batches))
    kind = "cifar10" if train else "cifar10-test"
    data = _cached(cache_dir, kind, str(folder), image_size, fingerprint, build)
    return {**data, "name": kind}


def _cifar10_missing(root: Path, folder: Path, why: str) -> str:
    return (
        f"CIFAR-10 not found ({why}). Put the python batches (data_batch_1..5, test_batch, "
        f"batches.meta from cifar-10-python.tar.gz) in {folder / 'cifar-10-batches-py'}/, "
        f"or name an image folder under {root} laid out as <class>/<image> instead"
    )


def _download_cifar10(root: Path, folder: Path) -> None:
    """torchvision's download, bounded in time and leaving nothing behind on failure."""
    from torchvision import datasets

    created = [p for p in (folder, folder / "cifar-10-python.tar.gz", folder / "cifar-10-batches-py") if not p.exists()]
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            datasets.CIFAR10(root=str(folder), train=True, download=True)
    except Exception as exc:  # network errors come in many classes (URLError, timeout, ...)
        for path in reversed(created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        why = f"download failed: {type(exc).__name__}: {exc}"
        raise DataError("dataset", _cifar10_missing(root, folder, why)) from exc


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _load_folder(
    name: str,
    data_root: Path,
    cache_dir: Path,
    image_size: int | None,
    progress: bool,
    field_name: str = "dataset",
) -> dict:
    root = Path(data_root).resolve()
    try:
        folder = resolve_under_root(name, root)
    except DataError as exc:
        raise DataError(field_name, exc.reason) from None
    if not folder.exists():
        raise DataError(
            field_name,
            f"unknown data set {name!r}: no folder {folder} exists. Choices: {', '.join(BUILTIN)}, "
            f"or an image folder under {root} laid out as <class>/<image>",
        )
    if not folder.is_dir():
        raise DataError(field_name, f"{folder} is a file; an image folder is laid out as <class>/<image>")
    _refuse_cache_inside(cache_dir, folder)
    try:
        classes, paths, labels, fingerprint = _scan_folder(folder, root)
    except DataError as exc:
        raise DataError(field_name, exc.reason) from None
    label = folder.relative_to(root).as_posix()

    def build() -> dict:
        images = _decode_files(paths, image_size, progress, desc=f"decoding {label}")
        return {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "classes": classes}

    data = _cached(cache_dir, "folder", str(folder), image_size, fingerprint, build)
    return {**data, "name": label}


def _refuse_cache_inside(cache_dir: Path, folder: Path) -> None:
    if Path(cache_dir).resolve().is_relative_to(folder):
        raise DataError("cache_dir", f"{cache_dir} is inside the data set folder {folder}, which is never written")


# -- image folders ---------------------------------------------------------------------------
def _scan_folder(folder: Path, root: Path) -> tuple[list[str], list[str], list[int], dict]:
    """Class names, image paths and labels in ImageFolder order, and a cheap fingerprint.

    The fingerprint (class names, file counts, total bytes, newest mtime) changes when
    an image is added, removed or rewritten, without reading any image.
    """
    class_dirs = sorted(
        (e for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name
    )
    if not class_dirs:
        raise DataError("dataset", f"{folder} has no class subfolders; lay it out as <class>/<image>")
    classes, paths, labels, counts = [], [], [], []
    newest, total_bytes = 0, 0
    for label, class_dir in enumerate(class_dirs):
        _refuse_escaping_link(class_dir, root)
        files = sorted(
            (
                e
                for e in os.scandir(class_dir.path)
                if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS and e.is_file()
            ),
            key=lambda e: e.name,
        )
        if not files:
            kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DataError("dataset", f"class folder {class_dir.path} has no images ({kinds})")
        for entry in files:
            _refuse_escaping_link(entry, root)
            stat = entry.stat()
            newest, total_bytes = max(newest, stat.st_mtime_ns), total_bytes + stat.st_size
            paths.append(entry.path)
        classes.append(class_dir.name)
        labels += [label] * len(files)
        counts.append(len(files))
    fingerprint = {"classes": classes, "counts": counts, "bytes": total_bytes, "newest_mtime_ns": newest}
    return classes, paths, labels, fingerprint


def _refuse_escaping_link(entry: os.DirEntry, root: Path) -> None:
    if entry.is_symlink():
        resolve_under_root(entry.path, root)


def _decode_files(paths: list[str], image_size: int | None, progress: bool, desc: str) -> torch.Tensor:
    """PIL-decode to RGB uint8 N x 3 x H x W, over a worker pool for large folders."""
    workers = _worker_count(len(paths))
    chunk = max(64, min(4096, math.ceil(len(paths) / (workers * 8))))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    jobs = [(c, image_size) for c in chunks]
    parts = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        if workers > 1:
            with multiprocessing.Pool(workers) as pool:
                for part in pool.imap(_decode_chunk, jobs):
                    parts.append(part)
                    bar.update(len(part))
        else:
            for job in jobs:
                parts.append(_decode_chunk(job))
                bar.update(len(parts[-1]))
    for part, paths_of_part in zip(parts, chunks):
        if part.shape[1:] != parts[0].shape[1:]:
            raise _mixed_sizes(paths_of_part[0], part.shape, chunks[0][0], parts[0].shape)
    return torch.from_numpy(np.concatenate(parts)).permute(0, 3, 1, 2).contiguous()


def _worker_count(num_files: int) -> int:
    # Pool workers are child processes, which daemonic processes (a Celery prefork
    # worker, another Pool's worker) may not start: decode in-process there.
    if num_files < _PARALLEL_MIN_FILES or multiprocessing.current_process().daemon:
        return 1
    return max(1, os.cpu_count() or 1)


def _decode_chunk(job: tuple[list[str], int | None]) -> np.ndarray:
    paths, image_size = job
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
                if image_size is not None:
                    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(rgb))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError("dataset", f"{path}: cannot decode image ({exc})") from None
        if arrays[-1].shape != arrays[0].shape:
            raise _mixed_sizes(path, arrays[-1].shape, paths[0], arrays[0].shape)
    return np.stack(arrays)


def _mixed_sizes(path: str, shape: tuple, first: str, first_shape: tuple) -> DataError:
    return DataError(
        "image_size",
        f"{path} is {shape[-2]}x{shape[-3]} but {first} is {first_shape[-2]}x{first_shape[-3]}; "
        "pass image_size to resize every image to one size",
    )


def _resize(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Bilinear resize of uint8 images (antialiased when shrinking), in chunks to bound memory."""
    if image_size is None or tuple(images.shape[-2:]) == (image_size, image_size):
        return images
    out = []
    for part in images.split(4096):
        x = F.interpolate(part.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


# -- the cache ----------------------------------------------------------------------------------
def _cached(
    cache_dir: Path, kind: str, source: str, image_size: int | None, fingerprint: object, build: Callable[[], dict]
) -> dict:
    """The decoded full set from the cache, or `build()` it and store it atomically."""
    key = {"format": _CACHE_FORMAT, "kind": kind, "source": source, "size": image_size, "fp": fingerprint}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"{kind}-{hashlib.sha256(source.encode()).hexdigest()[:8]}-{image_size or 'native'}"
    path = Path(cache_dir) / f"{stem}-{digest}.pt"
    data = _read_cache(path)
    if data is not None:
        return data
    data = build()
    _write_atomically(data, path)
    # Older versions of the same set at the same size are stale now.
    for old in path.parent.glob(f"{stem}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return data


def _read_cache(path: Path) -> dict | None:
    """The cached dict, or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
    except Exception:  # truncated or foreign file: rebuilding is always safe
        return None
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("images"), torch.Tensor)
        and isinstance(data.get("labels"), torch.Tensor)
        and data["images"].dtype == torch.uint8
        and data["images"].dim() == 4
        and data["labels"].shape == (data["images"].shape[0],)
        and isinstance(data.get("classes"), list)
    )
    return data if ok else None


def _write_atomically(data: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DataError("cache_dir", f"cannot write the data set cache in {path.parent}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the web app and workers share it
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError("cache_dir", f"cannot write the data set cache {path}: {exc}") from exc
    except BaseException:  # Ctrl-C mid-write included: never leave a temp file behind
        Path(tmp).unlink(missing_ok=True)
        raise


# -- options: subset, split, statistics ---------------------------------------------------------
def _check_positive_int(field_name: str, value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise DataError(field_name, f"must be a positive integer, got {value!r}")


def _generator(seed: int, stream: int) -> torch.Generator:
    # One stream per option, so the split does not depend on how many draws the subset took.
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def _balanced_subset(labels: torch.Tensor, classes: list[str], per_class: int, gen: torch.Generator) -> torch.Tensor:
    keep = []
    for c, class_name in enumerate(classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise DataError(
                "subset_per_class", f"class {class_name!r} has only {len(idx)} images, fewer than {per_class}"
            )
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(keep).sort().values


def _val_count(n: int, num_classes: int, val_size: int | float | None, field_name: str = "val_size") -> int:
    """How many of n images a split holds out: a count (0: none) or a fraction in (0, 1)."""
    if val_size is None:
        if n == PAPER_TRAIN_SIZE:
            return PAPER_VAL_SIZE
        # At least one image per class, so that small subsets keep every class in both splits.
        count = min(max(round(n * DEFAULT_VAL_FRACTION), num_classes), n - num_classes)
    elif isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise DataError(field_name, f"must be a count or a fraction in (0, 1), got {val_size!r}")
    elif isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise DataError(field_name, f"a fraction must be in (0, 1), got {val_size}")
        count = max(1, round(n * val_size))
    else:
        count = val_size
    if count < 0:
        raise DataError(field_name, f"must be 0 or more, got {count}")
    if count > n - num_classes:
        raise DataError(field_name, f"{count} held-out images out of {n} would leave a class with no training image")
    return count


def _stratified_counts(counts: list[int], total: int) -> list[int]:
    """`total` spread over classes in proportion (largest remainder), every class kept
    in both splits where the numbers allow."""
    n = sum(counts)
    exact = [total * c / n for c in counts]
    take = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: (take[i] - exact[i], i))
    for i in by_remainder[: total - sum(take)]:
        take[i] += 1
    for i in range(len(counts)):
        donors = [j for j in range(len(counts)) if take[j] > 1]
        if take[i] == 0 and counts[i] > 1 and donors:  # lend one from the share most above its due
            donor = max(donors, key=lambda j: (take[j] - exact[j], -j))
            take[donor] -= 1
            take[i] += 1
        while take[i] >= counts[i]:  # keep one for training
            receiver = max(range(len(counts)), key=lambda j: (counts[j] - 1 - take[j], -j))
            take[i] -= 1
            take[receiver] += 1
    return take


def _stratified_split(
    labels: torch.Tensor,
    num_classes: int,
    val_size: int | float | None,
    gen: torch.Generator,
    field_name: str = "val_size",
) -> tuple[torch.Tensor, torch.Tensor]:
    members = [(labels == c).nonzero().flatten() for c in range(num_classes)]
    total = _val_count(len(labels), num_classes, val_size, field_name)
    takes = _stratified_counts([len(m) for m in members], total)
    train, val = [], []
    for idx, take in zip(members, takes):
        shuffled = idx[torch.randperm(len(idx), generator=gen)]
        val.append(shuffled[:take])
        train.append(shuffled[take:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images scaled to [0, 1], via histograms
    (a float copy of 45,000 CIFAR images would take over a gigabyte)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = hist / hist.sum()
        mean = float((p * levels).sum())
        means.append(mean)
        stds.append(math.sqrt(max(0.0, float((p * (levels - mean) ** 2).sum()))))
    return tuple(means), tuple(stds)
