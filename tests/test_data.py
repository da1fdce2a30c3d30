"""Data sets: sklearn digits, image folders (a real slice of CIFAR-10 JPEGs), the cache,
subsets, stratified splits and the data-root boundary."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas_engine import data
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


# -- CIFAR-10 through torchvision -------------------------------------------------------------------
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
