"""CIFAR-10's python batches, read without running anything the files could smuggle in.

cifar-10-python.tar.gz unpacks to `cifar-10-batches-py/`:

    data_batch_1 .. data_batch_5   10,000 training images each
    test_batch                     the official 10,000 test images
    batches.meta                   `label_names`, the 10 class names in label order

Each file is a pickle written by Python 2's cPickle (protocol 2) of a dict: `data`, a
uint8 numpy array N x 3072 whose rows are 32x32 images stored plane by plane (1,024 red,
then 1,024 green, then 1,024 blue bytes, each plane row-major), and `labels`, a list of N
ints in 0..9. Python 2 `str`s (the keys, and the array's raw bytes) are read as latin-1,
which gives str keys; a batch written again by Python 3 has bytes keys, which are
accepted too.

Unpickling can call any importable function a file names, so a data folder would be a way
to run code. The unpickler here resolves only the three globals that numpy's array
pickles need (`_reconstruct`, `ndarray`, `dtype`) and refuses every other one before it
is imported; what is read is then checked for shape, type and range.

Errors are `CifarBatchError` (a plain ValueError naming the file and why), not the data
module's DataError: data.py imports this module, so importing data.py back would make a
cycle. Its one caller, data.py's CIFAR-10 loader, turns them into a DataError on the
"dataset" field.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"

NUM_CLASSES = 10
CHANNELS = 3
SIDE = 32
ROW_BYTES = CHANNELS * SIDE * SIDE  # 3,072

# The function numpy pickles arrays with, whichever numpy this is (numpy 2 moved it from
# numpy.core.multiarray to numpy._core.multiarray; files name either one).
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
# Every global a CIFAR-10 batch may name, mapped to the object itself: find_class never
# imports anything, so not even an allowed name can load a module.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the real files (numpy 1)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # re-saved with numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class CifarBatchError(ValueError):
    """A batch file that cannot be used: `path` names it, `reason` says why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class MissingBatchError(CifarBatchError):
    """A batch file that is not there (or cannot be opened)."""


class ForbiddenGlobalError(pickle.UnpicklingError):
    """Raised by the unpickler for a global outside `_ALLOWED_GLOBALS`."""


class CifarSet(NamedTuple):
    images: torch.Tensor  # uint8, N x 3 x 32 x 32
    labels: torch.Tensor  # int64, N
    classes: list[str]  # batches.meta's label_names


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(f"{module}.{name}") from None


def read_split(batches_dir: str | Path, train: bool = True) -> CifarSet:
    """The training images (data_batch_1..5, in order) or the official test images
    (test_batch) of a `cifar-10-batches-py` folder, with batches.meta's class names."""
    folder = Path(batches_dir)
    classes = read_label_names(folder / META)
    parts = [read_batch(folder / name) for name in (TRAIN_BATCHES if train else (TEST_BATCH,))]
    data = np.concatenate([data for data, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    images = torch.from_numpy(data).reshape(-1, CHANNELS, SIDE, SIDE)  # rows are planes: already CHW
    return CifarSet(images, torch.from_numpy(labels), classes)


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: its `data` (uint8, N x 3072) and `labels` (int64, N)."""
    batch = _load(path)
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        shape = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarBatchError(path, f"`data` is {shape}; a CIFAR-10 batch holds uint8 N x {ROW_BYTES}")
    if len(data) == 0:
        raise CifarBatchError(path, "holds no images")
    labels = _int_array(labels)
    if labels is None or labels.shape != (len(data),):
        found = "`labels` is not a list of ints" if labels is None else f"{len(labels)} labels"
        raise CifarBatchError(path, f"{found} for {len(data)} images; a CIFAR-10 batch has one int label per image")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise CifarBatchError(
            path, f"labels range over {labels.min()}..{labels.max()}; CIFAR-10's are 0..{NUM_CLASSES - 1}"
        )
    return np.ascontiguousarray(data), labels.astype(np.int64)


def read_label_names(path: str | Path) -> list[str]:
    """batches.meta's `label_names`: the 10 class names, in label order."""
    names = _field(_load(path), "label_names", path)
    if not isinstance(names, list | tuple) or not all(isinstance(n, str | bytes) for n in names):
        raise CifarBatchError(path, "`label_names` is not a list of names")
    if len(names) != NUM_CLASSES:
        raise CifarBatchError(path, f"has {len(names)} label_names; CIFAR-10 has {NUM_CLASSES} classes")
    return [n.decode("latin-1") if isinstance(n, bytes) else n for n in names]


def _load(path: str | Path) -> dict:
    """A batch file's dict, unpickled with only `_ALLOWED_GLOBALS` resolvable."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise MissingBatchError(path, "missing") from None
    except OSError as exc:
        raise MissingBatchError(path, f"cannot be read ({exc})") from None
    try:
        # latin-1: Python 2 strs, including numpy's raw array bytes, come back byte for byte.
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except ForbiddenGlobalError as exc:
        raise CifarBatchError(
            path, f"refers to {exc}, which a CIFAR-10 batch never needs (only numpy arrays are allowed); not loaded"
        ) from None
    except Exception as exc:  # truncated or not a pickle at all: any failure means the same
        raise CifarBatchError(
            path, f"is not a CIFAR-10 batch (cannot unpickle it: {type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(batch, dict):
        raise CifarBatchError(path, f"is not a CIFAR-10 batch (it holds a {type(batch).__name__}, not a dict)")
    return batch


def _field(batch: dict, key: str, path: str | Path) -> object:
    for candidate in (key, key.encode("latin-1")):  # str keys (Python 2 files), or bytes
        if candidate in batch:
            return batch[candidate]
    raise CifarBatchError(path, f"is not a CIFAR-10 batch (it has no `{key}`)")


def _int_array(values: object) -> np.ndarray | None:
    """`values` as a 1-D integer array, or None when it is not a sequence of ints."""
    if isinstance(values, np.ndarray):
        return values if values.dtype.kind in "iu" and values.ndim == 1 else None
    if not isinstance(values, list | tuple) or not all(type(v) is int for v in values):
        return None
    try:
        return np.array(values, dtype=np.int64).reshape(len(values))
    except OverflowError:
        return None
