"""Data sets: sklearn digits, CIFAR-10's python batches (a tiny, format-exact copy), image
folders (a real slice of CIFAR-10 JPEGs), the cache, subsets, stratified splits and the
data-root boundary."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas_engine import cifar_batches, data
from nas_engine.data import DataError, DatasetSplit, load_dataset, resolve_under_root

CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg" / "train"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 20

needs_cifar_jpeg = pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"{CIFAR_JPEG} not present")


def copy_cifar_slice(dest: Path, per_class: int = PER_CLASS) -> Path:
    """The first `per_class` real CIFAR-10 JPEGs of every class, copied (not linked)."""
    for name in CLASSES:
        (dest / name).mkdir(parents=True)
        for file in sorted(os.listdir(CIFAR_JPEG / name))[:per_class]:
            shutil.copy2(CIFAR_JPEG / name / file, dest / name / file)
    return dest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A data root holding `cifar` (20 JPEGs per class) and nothing else."""
    data_root = tmp_path / "data"
    copy_cifar_slice(data_root / "cifar")
    return data_root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def load(name: str, root: Path, cache: Path, **kw) -> DatasetSplit:
    return load_dataset(name, data_root=root, cache_dir=cache, **kw)


def all_images(split: DatasetSplit) -> torch.Tensor:
    test = [] if split.test_images is None else [split.test_images]
    return torch.cat([split.train_images, split.val_images, *test])


def all_labels(split: DatasetSplit) -> torch.Tensor:
    test = [] if split.test_labels is None else [split.test_labels]
    return torch.cat([split.train_labels, split.val_labels, *test])


def rows(images: torch.Tensor) -> set[bytes]:
    """Each image as bytes: to compare splits by content."""
    return {bytes(x.flatten().tolist()) for x in images}


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


# -- digits --------------------------------------------------------------------------------------
def test_digits_are_1797_grey_8x8_uint8_images_of_ten_classes(cache):
    split = load_dataset("digits", cache_dir=cache)
    images = all_images(split)
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.uint8
    assert all_labels(split).dtype == torch.int64
    assert split.classes == [str(d) for d in range(10)]
    assert (split.num_classes, split.channels, split.image_size) == (10, 1, 8)
    assert int(images.min()) == 0 and int(images.max()) == 255  # 0..16 stretched to 0..255
    assert len(split.test_labels) == 359  # 20% held out as the test split
    assert len(split.val_labels) == 144  # 10% of the rest by default
    assert sorted(all_labels(split).unique().tolist()) == list(range(10))
    assert split.flip_safe is False  # a mirrored digit is no digit


# -- test splits ---------------------------------------------------------------------------------
def test_the_digits_test_split_is_fixed_disjoint_and_the_same_for_every_seed(cache):
    a = load_dataset("digits", cache_dir=cache, seed=0)
    b = load_dataset("digits", cache_dir=cache, seed=7, subset_per_class=50, val_size=0.3)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.val_labels, load_dataset("digits", cache_dir=cache, seed=7).val_labels)
    held_out = rows(a.test_images)
    for split in (a, b):
        assert not held_out & rows(split.train_images)
        assert not held_out & rows(split.val_images)
    assert a.test_labels.bincount().tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]  # stratified
    assert "359 of 1,797" in a.test_source and a.has_test


def test_test_size_zero_keeps_every_digit_for_training_and_validation(cache):
    split = load_dataset("digits", cache_dir=cache, test_size=0)
    assert split.test_labels is None and not split.has_test and split.test_source == ""
    assert len(split.train_labels) + len(split.val_labels) == 1797


def test_val_size_zero_trains_on_the_whole_training_split(cache):
    split = load_dataset("digits", cache_dir=cache, val_size=0)
    assert len(split.val_labels) == 0 and not split.has_val
    assert len(split.train_labels) == 1797 - 359
    assert split.val_images.shape[1:] == (1, 8, 8)


@needs_cifar_jpeg
def test_test_size_carves_a_held_out_split_out_of_a_folder(root, cache):
    split = load("cifar", root, cache, test_size=50)
    assert len(split.test_labels) == 50 and split.test_labels.bincount().tolist() == [5] * 10
    assert len(split.train_labels) + len(split.val_labels) == 150
    assert not rows(split.test_images) & (rows(split.train_images) | rows(split.val_images))
    assert split.flip_safe is True


@needs_cifar_jpeg
def test_a_sibling_test_folder_beside_train_is_the_test_split(tmp_path, cache):
    copy_cifar_slice(tmp_path / "data" / "set" / "train", per_class=6)
    test = tmp_path / "data" / "set" / "test"
    for name in CLASSES:  # other images than the training ones: the last 3 of each class
        (test / name).mkdir(parents=True)
        for file in sorted(os.listdir(CIFAR_JPEG / name))[-3:]:
            shutil.copy2(CIFAR_JPEG / name / file, test / name / file)
    split = load("set/train", tmp_path / "data", cache)
    assert len(split.test_labels) == 30 and split.test_source == "folder set/test (30 images)"
    assert len(split.train_labels) + len(split.val_labels) == 60
    with pytest.raises(DataError, match="has a test split already") as err:
        load("set/train", tmp_path / "data", cache, test_size=10)
    assert err.value.field == "test_size"


@needs_cifar_jpeg
def test_a_test_dataset_with_other_classes_is_refused(tmp_path, cache):
    copy_cifar_slice(tmp_path / "data" / "a", per_class=3)
    copy_cifar_slice(tmp_path / "data" / "b", per_class=3)
    shutil.rmtree(tmp_path / "data" / "b" / "truck")
    with pytest.raises(DataError, match="same classes") as err:
        load("a", tmp_path / "data", cache, test_dataset="b")
    assert err.value.field == "test_dataset"
    with pytest.raises(DataError, match="outside the data root") as err:
        load("a", tmp_path / "data", cache, test_dataset="../elsewhere")
    assert err.value.field == "test_dataset"


def test_digits_can_be_upsampled_with_image_size(cache):
    split = load_dataset("digits", cache_dir=cache, image_size=32)
    assert split.train_images.shape[1:] == (1, 32, 32)
    assert split.image_size == 32


# -- image folders ---------------------------------------------------------------------------------
@needs_cifar_jpeg
def test_an_image_folder_decodes_to_the_same_pixels_as_pil(root, cache):
    split = load("cifar", root, cache)
    assert split.name == "cifar"
    assert split.classes == CLASSES
    assert all_images(split).shape == (10 * PER_CLASS, 3, 32, 32)
    assert all_labels(split).bincount().tolist() == [PER_CLASS] * 10
    first = sorted(os.listdir(root / "cifar" / "bird"))[0]
    with Image.open(root / "cifar" / "bird" / first) as image:
        expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    hits = (all_images(split) == expected).flatten(1).all(dim=1)
    assert hits.any()
    assert all_labels(split)[hits].tolist() == [CLASSES.index("bird")]


@needs_cifar_jpeg
def test_the_second_load_comes_from_the_cache_without_reading_the_images(root, cache):
    first = load("cifar", root, cache)
    (cached,) = cache.glob("*.pt")
    # Overwrite every image with garbage of the same size and keep its mtime: the
    # fingerprint is unchanged, so only a cache hit can still produce the old pixels.
    for path in (root / "cifar").rglob("*.jpg"):
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cached_stat = cached.stat()
    second = load("cifar", root, cache)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.val_labels, second.val_labels)
    assert cached.stat().st_mtime_ns == cached_stat.st_mtime_ns  # not rewritten


@needs_cifar_jpeg
def test_a_changed_folder_invalidates_the_cache(root, cache):
    assert len(all_labels(load("cifar", root, cache))) == 200
    (old,) = cache.glob("*.pt")
    shutil.copy2(CIFAR_JPEG / "cat" / "4999.jpg", root / "cifar" / "cat" / "new.jpg")
    split = load("cifar", root, cache)
    assert len(all_labels(split)) == 201
    (new,) = cache.glob("*.pt")  # the stale entry was removed
    assert new != old


@needs_cifar_jpeg
def test_loading_never_writes_into_the_data_folder_and_leaves_no_temp_files(root, cache):
    before = tree(root)
    load("cifar", root, cache)
    assert tree(root) == before
    assert [p.suffix for p in cache.iterdir()] == [".pt"]


@needs_cifar_jpeg
def test_a_corrupt_cache_file_is_rebuilt(root, cache):
    expected = load("cifar", root, cache)
    (cached,) = cache.glob("*.pt")
    cached.write_bytes(b"not a torch file")
    again = load("cifar", root, cache)
    assert torch.equal(expected.train_images, again.train_images)
    assert cached.stat().st_size > 1000


@needs_cifar_jpeg
def test_a_worker_pool_decodes_the_same_tensors_as_one_process(root, tmp_path, monkeypatch):
    serial = load("cifar", root, tmp_path / "serial")
    monkeypatch.setattr(data, "_PARALLEL_MIN_FILES", 1)
    pooled = load("cifar", root, tmp_path / "pooled")
    assert torch.equal(all_images(serial), all_images(pooled))


@needs_cifar_jpeg
def test_image_size_resizes_every_image_and_is_cached_separately(root, cache):
    split = load("cifar", root, cache, image_size=16)
    assert all_images(split).shape == (200, 3, 16, 16)
    load("cifar", root, cache)
    assert len(list(cache.glob("*.pt"))) == 2


@needs_cifar_jpeg
def test_images_of_mixed_sizes_need_image_size(root, cache):
    Image.new("RGB", (24, 24), "red").save(root / "cifar" / "cat" / "small.png")
    with pytest.raises(DataError) as err:
        load("cifar", root, cache)
    assert err.value.field == "image_size"
    assert "small.png" in str(err.value) and "24x24" in str(err.value)
    assert all_images(load("cifar", root, cache, image_size=32)).shape == (201, 3, 32, 32)


@needs_cifar_jpeg
def test_an_unreadable_image_is_named(root, cache):
    (root / "cifar" / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg: cannot decode image"):
        load("cifar", root, cache)


# -- subsets, splits, statistics ------------------------------------------------------------------
@needs_cifar_jpeg
def test_subset_per_class_keeps_n_images_of_every_class(root, cache):
    split = load("cifar", root, cache, subset_per_class=5)
    assert all_labels(split).bincount().tolist() == [5] * 10


@needs_cifar_jpeg
def test_a_subset_larger_than_a_class_is_refused(root, cache):
    with pytest.raises(DataError, match="has only 20 images") as err:
        load("cifar", root, cache, subset_per_class=21)
    assert err.value.field == "subset_per_class"


@needs_cifar_jpeg
@pytest.mark.parametrize(("val_size", "expected"), [(0.2, 40), (30, 30), (None, 20)])
def test_the_validation_split_has_the_asked_size_and_is_stratified(root, cache, val_size, expected):
    split = load("cifar", root, cache, val_size=val_size)
    assert len(split.val_labels) == expected
    assert len(split.train_labels) == 200 - expected
    assert split.val_labels.bincount().tolist() == [expected // 10] * 10


@needs_cifar_jpeg
def test_small_subsets_keep_every_class_in_both_splits(root, cache):
    split = load("cifar", root, cache, subset_per_class=2)
    assert split.train_labels.bincount(minlength=10).tolist() == [1] * 10
    assert split.val_labels.bincount(minlength=10).tolist() == [1] * 10


def test_the_paper_holds_out_5000_of_50000_images_by_default():
    assert data._val_count(50_000, 10, None) == 5_000
    assert data._stratified_counts([5_000] * 10, 5_000) == [500] * 10


def test_uneven_classes_get_a_proportional_share_that_sums_to_the_request():
    takes = data._stratified_counts([50, 30, 15, 5], 10)
    assert sum(takes) == 10 and takes == [5, 3, 1, 1]


@needs_cifar_jpeg
@pytest.mark.parametrize("val_size", [-1, 0.0, 1.0, 1.5, 191, True, "10"])
def test_an_impossible_val_size_is_refused(root, cache, val_size):
    with pytest.raises(DataError) as err:
        load("cifar", root, cache, val_size=val_size)
    assert err.value.field == "val_size"


@needs_cifar_jpeg
def test_the_same_seed_gives_the_same_split_and_another_seed_does_not(root, cache):
    a = load("cifar", root, cache, subset_per_class=10, seed=3)
    b = load("cifar", root, cache, subset_per_class=10, seed=3)
    c = load("cifar", root, cache, subset_per_class=10, seed=4)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_images, b.val_images)
    assert not torch.equal(a.val_images, c.val_images)


@needs_cifar_jpeg
def test_mean_and_std_are_measured_on_the_training_split_only(root, cache):
    split = load("cifar", root, cache, val_size=0.5)
    x = split.train_images.double() / 255
    assert split.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert split.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert split.mean != pytest.approx(_channel_means(split.val_images), abs=1e-6)


def _channel_means(images: torch.Tensor) -> list[float]:
    return (images.double() / 255).mean(dim=(0, 2, 3)).tolist()


@needs_cifar_jpeg
def test_to_moves_every_tensor_and_keeps_the_rest(root, cache):
    split = load("cifar", root, cache).to("cpu")
    assert split.train_images.device.type == "cpu" and split.val_labels.device.type == "cpu"
    assert split.classes == CLASSES
    assert "train=180" in repr(split) and "test=0" in repr(split)


@pytest.mark.parametrize(("option", "value"), [("image_size", 0), ("subset_per_class", -2), ("image_size", 1.5)])
def test_bad_sizes_are_refused_with_their_field(cache, option, value):
    with pytest.raises(DataError) as err:
        load_dataset("digits", cache_dir=cache, **{option: value})
    assert err.value.field == option


# -- the data-root boundary ---------------------------------------------------------------------------
@needs_cifar_jpeg
def test_it_refuses_a_path_outside_the_data_root(root, cache, tmp_path):
    copy_cifar_slice(tmp_path / "outside", per_class=1)
    with pytest.raises(DataError, match="outside the data root") as err:
        load("../outside", root, cache)
    assert err.value.field == "dataset"


@needs_cifar_jpeg
def test_it_refuses_an_absolute_path_outside_the_data_root(root, cache):
    with pytest.raises(DataError, match="outside the data root"):
        load(str(CIFAR_JPEG), root, cache)


@needs_cifar_jpeg
def test_it_accepts_an_absolute_path_inside_the_data_root(root, cache):
    assert load(str(root / "cifar"), root, cache).name == "cifar"


@needs_cifar_jpeg
def test_it_refuses_a_symlink_escaping_the_data_root(root, cache, tmp_path):
    copy_cifar_slice(tmp_path / "outside", per_class=1)
    (root / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(DataError, match="outside the data root"):
        load("escape", root, cache)


@needs_cifar_jpeg
def test_it_refuses_a_symlinked_image_pointing_out_of_the_data_root(root, cache):
    (root / "cifar" / "cat" / "sneaky.jpg").symlink_to(CIFAR_JPEG / "dog" / "0000.jpg")
    with pytest.raises(DataError, match="outside the data root"):
        load("cifar", root, cache)


@needs_cifar_jpeg
def test_a_symlink_that_stays_inside_the_data_root_is_followed(root, cache):
    (root / "alias").symlink_to(root / "cifar")
    assert len(all_labels(load("alias", root, cache))) == 200


def test_resolve_under_root_returns_the_resolved_path(tmp_path):
    (tmp_path / "a").mkdir()
    assert resolve_under_root("a/../a", tmp_path) == (tmp_path / "a").resolve()
    with pytest.raises(DataError):
        resolve_under_root("/etc", tmp_path)


def test_a_missing_folder_is_named_with_the_choices(tmp_path, cache):
    with pytest.raises(DataError) as err:
        load("nope", tmp_path, cache)
    message = str(err.value)
    assert err.value.field == "dataset"
    assert str(tmp_path.resolve() / "nope") in message
    assert "digits" in message and "cifar10" in message and "<class>/<image>" in message


def test_a_folder_without_class_subfolders_is_refused(tmp_path, cache):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        load("flat", tmp_path, cache)


def test_a_class_without_images_is_named(tmp_path, cache):
    (tmp_path / "set" / "cats").mkdir(parents=True)
    (tmp_path / "set" / "dogs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "cats" / "a.png")
    (tmp_path / "set" / "dogs" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"dogs has no images"):
        load("set", tmp_path, cache)


def test_a_cache_dir_inside_the_data_folder_is_refused(tmp_path):
    (tmp_path / "set" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "cats" / "a.png")
    with pytest.raises(DataError) as err:
        load("set", tmp_path, tmp_path / "set" / ".cache")
    assert err.value.field == "cache_dir"


# -- CIFAR-10: no files, and torchvision's download -------------------------------------------------
def test_cifar10_missing_says_where_to_put_the_files(tmp_path, cache):
    with pytest.raises(DataError) as err:
        load("cifar10", tmp_path, cache, download=False)
    message = str(err.value)
    assert err.value.field == "dataset"
    assert str(tmp_path.resolve() / "cifar10" / "cifar-10-batches-py") in message
    assert "image folder" in message
    assert not (tmp_path / "cifar10").exists()


def test_cifar10_download_either_works_or_fails_clearly_leaving_nothing_behind(tmp_path, cache):
    # The development and CI machines are offline, so this is the failing path there.
    try:
        split = load("cifar10", tmp_path, cache, download=True)
    except DataError as err:
        assert "download failed" in str(err) and "cifar-10-batches-py" in str(err)
        assert not (tmp_path / "cifar10").exists()
    else:
        assert len(split.val_labels) == 5000 and split.classes == CLASSES


# -- CIFAR-10's python batches, read by nas_engine.cifar_batches ------------------------------------
CIFAR_PER_BATCH = 20  # x 5 training batches
CIFAR_TEST_IMAGES = 10
CIFAR_BATCHES = [*cifar_batches.TRAIN_BATCHES, cifar_batches.TEST_BATCH]


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote the real batches: protocol 2, every string (the
    keys, the class names, numpy's raw array bytes) a Python 2 `str` opcode, and numpy's
    `_reconstruct` under its numpy 1 name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is cifar_batches._RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dump_cifar(path: Path, obj: object, style: str) -> None:
    """`style`: "python2" (the real files), or "bytes-keys" (written again by Python 3,
    protocol 4, keys and class names as bytes)."""
    with open(path, "wb") as f:
        if style == "python2":
            Python2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(_as_bytes(obj), f, protocol=4)


def _as_bytes(obj: object) -> object:
    if isinstance(obj, str):
        return obj.encode("latin-1")
    if isinstance(obj, dict):
        return {_as_bytes(k): _as_bytes(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_bytes(v) for v in obj]
    return obj


def write_cifar10(data_root: Path, style: str = "python2", classes: list[str] = CLASSES) -> dict:
    """A format-exact, tiny CIFAR-10: `data_root/cifar10/cifar-10-batches-py/` with 5
    training batches of 20 images, a test batch of 10 and batches.meta. Random pixels, so
    every image, channel and position tells apart. Returns {file: (data, labels)}."""
    folder = data_root / "cifar10" / cifar_batches.FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    written = {}
    for name in CIFAR_BATCHES:
        n = CIFAR_TEST_IMAGES if name == cifar_batches.TEST_BATCH else CIFAR_PER_BATCH
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(c) for c in rng.permutation(n) % 10]
        batch = {
            "batch_label": f"{name} of 6",
            "labels": labels,
            "data": pixels,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        dump_cifar(folder / name, batch, style)
        written[name] = (pixels, labels)
    meta = {"num_cases_per_batch": CIFAR_PER_BATCH, "label_names": classes, "num_vis": 3072}
    dump_cifar(folder / cifar_batches.META, meta, style)
    return written


def as_images(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).reshape(-1, 3, 32, 32)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, dict]:
    data_root = tmp_path / "data"
    return data_root, write_cifar10(data_root)


def test_the_fixture_is_pickled_as_the_real_batches_are(cifar10_root):
    root, written = cifar10_root
    raw = (root / "cifar10" / cifar_batches.FOLDER / "data_batch_1").read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert ops[0] == ("PROTO", 2)
    assert {arg for name, arg in ops if name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
    }
    assert not {name for name, _ in ops} & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
    # What torchvision's CIFAR10 does with a batch.
    entry = pickle.loads(raw, encoding="latin1")
    assert sorted(entry) == ["batch_label", "data", "filenames", "labels"]
    assert entry["labels"] == written["data_batch_1"][1]
    assert np.array_equal(entry["data"], written["data_batch_1"][0])


@pytest.mark.parametrize("style", ["python2", "bytes-keys"])
def test_cifar10_reads_the_training_batches_and_the_official_test_batch(tmp_path, cache, style):
    classes = CLASSES if style == "python2" else [f"kind {i}" for i in range(10)]
    written = write_cifar10(tmp_path / "data", style, classes)
    split = load("cifar10", tmp_path / "data", cache, download=False)

    assert split.name == "cifar10" and split.classes == classes
    assert (split.num_classes, split.channels, split.image_size) == (10, 3, 32)
    # train + validation: the 100 images of data_batch_1..5, each with its own label
    expected = {}
    for name in cifar_batches.TRAIN_BATCHES:
        pixels, labels = written[name]
        expected.update(zip((bytes(x.flatten().tolist()) for x in as_images(pixels)), labels))
    train_val = torch.cat([split.train_images, split.val_images])
    got = dict(zip((bytes(x.flatten().tolist()) for x in train_val), torch.cat([split.train_labels, split.val_labels])))
    assert len(train_val) == 5 * CIFAR_PER_BATCH == len(expected)
    assert {k: int(v) for k, v in got.items()} == expected
    assert len(split.val_labels) == 10  # 10% by default, one image per class
    # test: exactly test_batch, in order, pixel for pixel
    pixels, labels = written["test_batch"]
    assert split.has_test
    assert split.test_images.dtype == torch.uint8 and split.test_labels.dtype == torch.int64
    assert torch.equal(split.test_images, as_images(pixels))
    assert split.test_labels.tolist() == labels
    assert split.test_source == "cifar10 test batch (10 images)"
    assert not rows(split.test_images) & rows(train_val)
    # a row is 1,024 red, then 1,024 green, then 1,024 blue bytes, each plane row-major
    first = split.test_images[0]
    assert int(first[0, 0, 1]) == pixels[0, 1]
    assert int(first[0, 1, 0]) == pixels[0, 32]
    assert int(first[1, 0, 0]) == pixels[0, 1024]
    assert int(first[2, 31, 31]) == pixels[0, 3071]


def test_cifar10_images_can_be_resized_and_come_from_the_cache_the_second_time(cifar10_root, cache, monkeypatch):
    root, written = cifar10_root
    first = load("cifar10", root, cache, download=False, image_size=16)
    assert first.test_images.shape == (CIFAR_TEST_IMAGES, 3, 16, 16)
    monkeypatch.setattr(cifar_batches, "read_split", lambda *a, **kw: pytest.fail("read the batches again"))
    second = load("cifar10", root, cache, download=False, image_size=16)
    assert torch.equal(second.test_images, first.test_images)
    assert torch.equal(all_images(second), all_images(first))


def test_cifar10_refuses_test_size_as_it_has_a_test_split(cifar10_root, cache):
    root, _ = cifar10_root
    with pytest.raises(DataError) as err:
        load("cifar10", root, cache, download=False, test_size=5)
    assert err.value.field == "test_size"
    assert "cifar10 test batch" in str(err.value)
    assert load("cifar10", root, cache, download=False, test_size=0).has_test  # 0: nothing carved


def _replace_data(folder: Path, name: str, data: object = None, labels: object = None) -> None:
    batch = pickle.loads((folder / name).read_bytes(), encoding="latin1")
    batch.update({k: v for k, v in (("data", data), ("labels", labels)) if v is not None})
    dump_cifar(folder / name, batch, "python2")


def _truncate(folder: Path, name: str) -> None:
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize(
    ("name", "corrupt", "why"),
    [
        ("test_batch", lambda f, n: _replace_data(f, n, data=np.zeros((10, 1024), np.uint8)), "shape (10, 1024)"),
        ("data_batch_2", lambda f, n: _replace_data(f, n, data=np.zeros((20, 3072), np.int32)), "int32 array"),
        ("data_batch_3", _truncate, "cannot unpickle"),
        ("test_batch", lambda f, n: (f / n).write_text("not a pickle"), "cannot unpickle"),
        ("test_batch", lambda f, n: (f / n).write_bytes(pickle.dumps([1, 2, 3], protocol=2)), "not a dict"),
        ("data_batch_5", lambda f, n: _replace_data(f, n, labels=[10] * 20), "labels range over 10..10"),
        ("data_batch_1", lambda f, n: _replace_data(f, n, labels=[0] * 19), "19 labels for 20 images"),
        ("data_batch_1", lambda f, n: _replace_data(f, n, labels=[0.0] * 20), "not a list of ints"),
        ("batches.meta", lambda f, n: dump_cifar(f / n, {"label_names": CLASSES[:9]}, "python2"), "9 label_names"),
        ("test_batch", lambda f, n: dump_cifar(f / n, {"data": np.zeros((10, 3072), np.uint8)}, "python2"), "`labels`"),
    ],
)
def test_a_corrupt_cifar10_batch_is_named_with_the_reason(cifar10_root, cache, name, corrupt, why):
    root, _ = cifar10_root
    folder = root / "cifar10" / cifar_batches.FOLDER
    corrupt(folder, name)
    with pytest.raises(DataError) as err:
        load("cifar10", root, cache, download=False)
    assert err.value.field == "dataset"
    assert str(folder.resolve() / name) in err.value.reason
    assert why in err.value.reason


def test_a_missing_cifar10_batch_says_where_to_put_the_files(cifar10_root, cache):
    root, _ = cifar10_root
    folder = root / "cifar10" / cifar_batches.FOLDER
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError) as err:
        load("cifar10", root, cache, download=False)
    assert err.value.field == "dataset"
    assert f"{folder.resolve() / 'data_batch_4'}: missing" in err.value.reason
    assert "Put the python batches" in err.value.reason and "image folder" in err.value.reason


class _Shell:
    """Unpickles as a shell command: what a malicious batch would carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_cifar10_batch_naming_another_global_is_refused_unexecuted(cifar10_root, cache, tmp_path, protocol):
    root, written = cifar10_root
    marker = tmp_path / "executed"
    payload = pickle.dumps({"data": _Shell(f"touch {marker}"), "labels": written["test_batch"][1]}, protocol=protocol)
    pickle.loads(payload)  # the payload is live: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()
    folder = root / "cifar10" / cifar_batches.FOLDER
    (folder / "test_batch").write_bytes(payload)

    with pytest.raises(DataError) as err:
        load("cifar10", root, cache, download=False)
    assert not marker.exists()
    assert err.value.field == "dataset"
    assert str(folder.resolve() / "test_batch") in err.value.reason
    assert f"refers to {os.system.__module__}.system" in err.value.reason and "not loaded" in err.value.reason


def test_the_cifar_batch_unpickler_resolves_only_numpys_array_globals():
    assert set(cifar_batches._ALLOWED_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
    for module, name in [("builtins", "eval"), ("numpy", "load"), ("numpy.core.multiarray", "scalar")]:
        raw = pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.STOP
        with pytest.raises(cifar_batches.ForbiddenGlobalError, match=f"{module}.{name}"):
            cifar_batches._BatchUnpickler(io.BytesIO(raw)).load()


# -- settings and errors --------------------------------------------------------------------------------
def test_data_root_and_cache_dir_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_DATA_ROOT", str(tmp_path / "d"))
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "c"))
    assert data.default_data_root() == tmp_path / "d"
    assert data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NAS_DATA_ROOT")
    assert data.default_data_root() == Path(data.__file__).resolve().parents[1] / "data"


def test_a_data_error_reads_field_colon_reason_and_survives_pickling():
    err = DataError("val_size", "too big")
    assert str(err) == "val_size: too big"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.field, copy.reason) == ("val_size", "too big")


# -- peek_dataset: a data set's shape without decoding it --------------------------------------------
def test_peek_gives_the_builtin_shapes_and_an_asked_image_size():
    assert data.peek_dataset("digits") == data.DatasetShape(10, 1, 8, 1797)
    assert data.peek_dataset("cifar10", image_size=64) == data.DatasetShape(10, 3, 64, 50_000)


def test_peek_counts_a_folders_classes_and_reads_one_images_size(tmp_path):
    from PIL import Image

    for i, name in enumerate(["cat", "dog", "owl"]):
        (tmp_path / "pets" / name).mkdir(parents=True)
        Image.new("RGB", (30, 20 + i)).save(tmp_path / "pets" / name / "a.png")
    (tmp_path / "pets" / ".hidden").mkdir()
    (tmp_path / "pets" / "owl" / "b.png").write_bytes((tmp_path / "pets" / "owl" / "a.png").read_bytes())
    (tmp_path / "pets" / "owl" / "notes.txt").write_text("not counted")
    # Three classes, the first image's height, four image files.
    assert data.peek_dataset("pets", data_root=tmp_path) == data.DatasetShape(3, 3, 20, 4)
    assert data.peek_dataset("pets", data_root=tmp_path, image_size=24).image_size == 24


@pytest.mark.parametrize(
    "layout, name, reason",
    [
        ({}, "../elsewhere", "outside the data root"),
        ({}, "nothing-here", "not a folder"),
        ({"empty": []}, "empty", "no class subfolders"),
        ({"set/cat": ["notes.txt"]}, "set", "has no images"),
        ({"set/cat": ["broken.png"]}, "set", "cannot read the image"),
    ],
)
def test_peek_refuses_what_load_dataset_would_naming_the_field(tmp_path, layout, name, reason):
    for folder, files in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for file in files:
            (tmp_path / folder / file).write_text("not an image")
    with pytest.raises(DataError, match=reason) as err:
        data.peek_dataset(name, data_root=tmp_path)
    assert err.value.field == "dataset"
