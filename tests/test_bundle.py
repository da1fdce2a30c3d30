"""Self-contained bundles: what `save_bundle` writes, `load_model`, `export` and `evaluate`.

One small child is trained on scikit-learn's digits once for the module. The main test
reads its bundle back in fresh processes whose data root and cache are empty folders, so
nothing of the training data can be read, and reproduces the test accuracy the trainer
recorded through load_model, the ONNX graph (onnxruntime) and the TorchScript graph.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from nas_engine import load_model
from nas_engine.bundle import BundleError, read_bundle, save_bundle
from nas_engine.cells import ENAS, NASNET_A
from nas_engine.cli import main
from nas_engine.data import load_dataset
from nas_engine.model import ModelInputError
from nas_engine.trainer import Recipe, TrainResult, train_child

REPO = Path(__file__).resolve().parents[1]
# Small enough to train in seconds on two cores, trained enough to predict several classes.
RECIPE = Recipe(repeats=1, filters=8, epochs=2, batch_size=32, lr=0.1)
SUBSET = 30
ACC_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    cache = root / "cache"
    data = load_dataset("digits", cache_dir=cache, subset_per_class=SUBSET, seed=0)
    result = train_child(NASNET_A, RECIPE, data, keep_model=True, test=True)
    assert result.status == "ok" and result.test_acc is not None
    bundle = root / "bundle"
    save_bundle(bundle, NASNET_A, RECIPE, data, result)
    np.save(root / "test_images.npy", data.test_images.numpy())
    np.save(root / "test_labels.npy", data.test_labels.numpy())
    return SimpleNamespace(root=root, cache=cache, bundle=bundle, data=data, result=result)


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of the bundle to damage."""
    target = tmp_path / "copy"
    shutil.copytree(trained.bundle, target)
    return target


def run(*args) -> SimpleNamespace:
    """`main(argv)` in-process, with what a terminal would show (as tests/test_cli.py does)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help exits 0
            code = exc.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# -- what is written ------------------------------------------------------------------------------
def test_the_bundle_holds_what_the_model_needs_besides_the_data(trained):
    names = {p.name for p in trained.bundle.iterdir()}
    assert names == {"model.json", "genotype.json", "recipe.json", "metrics.json", "weights.pt"}  # no temp files
    model = json.loads((trained.bundle / "model.json").read_text())
    data, result = trained.data, trained.result
    assert model["format_version"] == 1 and model["status"] == "ok"
    assert model["macro"] == {
        "kind": "cifar", "repeats": 1, "filters": 8, "stem_multiplier": 3.0, "num_classes": 10, "in_channels": 1,
        "image_size": 8, "aux_head": False, "drop_path_keep": 1.0, "dropout": 0.0, "skip_reduction_input": False,
    }  # fmt: skip
    assert model["classes"] == [str(d) for d in range(10)]
    assert model["normalization"]["mean"] == list(data.mean) and model["normalization"]["std"] == list(data.std)
    assert model["input"]["channels"] == 1 and model["input"]["height"] == model["input"]["width"] == 8
    assert model["input"]["dtype"] == "uint8" and model["input"]["range"] == [0, 255]
    assert model["metrics"]["test_acc"] == result.test_acc and model["metrics"]["val_acc"] == result.val_acc
    assert model["dataset"]["splits"] == {"train": 270, "val": 30, "test": len(data.test_labels)}
    assert model["genotype_hash"] == NASNET_A.canonical_hash()
    assert model["weights"]["bytes"] == (trained.bundle / "weights.pt").stat().st_size
    metrics = json.loads((trained.bundle / "metrics.json").read_text())
    assert metrics["val_acc"] == result.val_acc and metrics["test_acc"] == result.test_acc
    assert metrics["test_source"] == data.test_source and metrics["splits"]["test"] == len(data.test_labels)
    assert metrics["classes"] == data.classes and metrics["dataset"] == "digits"
    assert json.loads((trained.bundle / "recipe.json").read_text()) == RECIPE.to_dict()


# -- the same test accuracy, without the data, three ways ---------------------------------------------
SCORE = """
import json, sys
import numpy as np, onnxruntime, torch
import nas_engine.data

def no_data(*args, **kwargs):
    raise AssertionError("a data set was loaded")

nas_engine.data.load_dataset = no_data
from nas_engine import load_model

root = sys.argv[1]
images = np.load(f"{root}/test_images.npy")
labels = np.load(f"{root}/test_labels.npy")
model = load_model(f"{root}/bundle")
with torch.no_grad():
    ours = model(torch.from_numpy(images)).numpy()
floats = images.astype(np.float32) / 255.0
session = onnxruntime.InferenceSession(f"{root}/model.onnx", providers=["CPUExecutionProvider"])
onnx = session.run(None, {"images": floats})[0]
extra = {"model.json": ""}
traced = torch.jit.load(f"{root}/model.ts", _extra_files=extra)
with torch.no_grad():
    script = traced(torch.from_numpy(floats)).numpy()
out = {"recorded": model.test_acc, "count": len(labels), "predicted_classes": len(set(ours.argmax(1).tolist())),
       "onnx_classes": json.loads(session.get_modelmeta().custom_metadata_map["classes"]),
       "torchscript_classes": json.loads(extra["model.json"])["classes"]}
for name, logits in (("load_model", ours), ("onnx", onnx), ("torchscript", script)):
    out[name] = {"accuracy": float((logits.argmax(1) == labels).mean()), "max_diff": float(abs(logits - ours).max())}
print(json.dumps(out))
"""


def test_a_fresh_process_without_the_data_reproduces_the_test_accuracy(trained, tmp_path):
    empty_root, empty_cache = tmp_path / "no-data", tmp_path / "no-cache"
    empty_root.mkdir()
    empty_cache.mkdir()
    env = {**os.environ, "NAS_DATA_ROOT": str(empty_root), "NAS_CACHE_DIR": str(empty_cache)}
    exports = {"onnx": trained.root / "model.onnx", "torchscript": trained.root / "model.ts"}
    for fmt, path in exports.items():
        command = [sys.executable, "-m", "nas_engine", "export", str(trained.bundle), "--format", fmt, "-o", str(path)]
        done = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, cwd=REPO)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)  # stdout holds the JSON answer only
        assert summary["input"] == {"name": "images", "dtype": "float32", "shape": ["N", 1, 8, 8], "range": [0, 1]}
        assert summary["output"]["shape"] == ["N", 10] and summary["bytes"] == path.stat().st_size
    done = subprocess.run(
        [sys.executable, "-c", SCORE, str(trained.root)], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    recorded = trained.result.test_acc
    assert scores["recorded"] == recorded and scores["count"] == len(trained.data.test_labels)
    assert scores["predicted_classes"] > 1  # a model that answers one class would prove little
    for way in ("load_model", "onnx", "torchscript"):
        assert scores[way]["accuracy"] == pytest.approx(recorded, abs=ACC_TOLERANCE), way
        assert scores[way]["max_diff"] < 1e-4, way
    assert scores["onnx_classes"] == scores["torchscript_classes"] == [str(d) for d in range(10)]
    assert list(empty_root.iterdir()) == [] and list(empty_cache.iterdir()) == []


def test_evaluate_reproduces_the_recorded_accuracies(trained):
    common = ["evaluate", trained.bundle, "--cache-dir", trained.cache]
    result = run(*common, "--json")
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["split"] == "test" and scored["dataset"] == "digits"
    assert scored["count"] == len(trained.data.test_labels)
    assert scored["accuracy"] == pytest.approx(trained.result.test_acc, abs=ACC_TOLERANCE)
    assert scored["loss"] == pytest.approx(trained.result.test_loss, rel=1e-4)
    # The validation split again, from the same data options and the recipe's seed.
    result = run(*common, "--split", "val", "--subset-per-class", SUBSET, "--json")
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(trained.result.val_acc, abs=ACC_TOLERANCE)
    result = run(*common, "--no-progress")
    assert result.returncode == 0 and "test split" in result.stdout and "accuracy" in result.stdout


def test_evaluate_scores_all_images_where_there_is_no_test_split_and_resizes(trained):
    result = run(
        "evaluate", trained.bundle, "--cache-dir", trained.cache, "--test-size", 0, "--image-size", 16, "--json"
    )
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["split"] == "all" and scored["count"] == 1797 and "no test split" in scored["split_source"]
    assert scored["resized_from"] == [16, 16] and scored["image_size"] == 8 and 0 <= scored["accuracy"] <= 1


def write_folder(root: Path, classes: list[str], per_class: int = 2) -> None:
    for c in classes:
        (root / "set" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (i * 40, 10, 200)).save(root / "set" / c / f"{i}.png")


@pytest.mark.parametrize(
    "classes, reason",
    [(["a", "b"], "same class names in the same order"), ([str(d) for d in range(10)], "3-channel images")],
)
def test_evaluate_refuses_a_data_set_with_other_classes_or_channels(trained, tmp_path, classes, reason):
    write_folder(tmp_path / "data", classes)
    result = run(
        "evaluate", trained.bundle, "--dataset", "set", "--data-root", tmp_path / "data",
        "--cache-dir", tmp_path / "cache", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: --dataset: set has") and reason in result.stderr


# -- load_model: inputs ------------------------------------------------------------------------------
def test_uint8_float_channels_last_and_single_images_give_the_same_logits(trained):
    model = load_model(trained.bundle)
    assert isinstance(model, torch.nn.Module) and not model.training
    images = trained.data.test_images[:20]
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (20, 10)
        assert torch.equal(model(images.float() / 255), logits)
        assert torch.equal(model(images.double() / 255), logits)
        assert torch.equal(model(images.permute(0, 2, 3, 1)), logits)  # N x H x W x C
        one = model(images[3])
        assert one.shape == (10,) and torch.allclose(one, logits[3], atol=1e-5)
        assert torch.allclose(model(images[3].permute(1, 2, 0)), logits[3], atol=1e-5)  # H x W x C


def test_other_sizes_are_resized_and_predict_gives_indices_or_names(trained):
    model = load_model(trained.bundle)
    images = trained.data.test_images[:10]
    big = torch.nn.functional.interpolate(images.float(), size=(13, 13), mode="nearest").to(torch.uint8)
    with torch.no_grad():
        assert model(big).shape == (10, 10)
        assert model(big.float() / 255).shape == (10, 10)
    indices = model.predict(images)
    with torch.no_grad():
        assert torch.equal(indices, model(images).argmax(1))
    assert model.predict(images.numpy(), names=True) == [model.classes[i] for i in indices.tolist()]
    assert model.predict(Image.fromarray(images[0, 0].numpy())) == model.predict(images[0])
    with pytest.raises(ModelInputError, match="1-channel"):
        model(torch.zeros(2, 3, 8, 5))
    with pytest.raises(ModelInputError, match="int64"):
        model(images.long())


def test_the_model_exposes_its_classes_metrics_and_recipe(trained):
    model = load_model(trained.bundle)
    assert model.classes == trained.data.classes
    assert model.test_acc == trained.result.test_acc and model.val_acc == trained.result.val_acc
    assert model.metrics["test_source"] == trained.data.test_source
    assert Recipe.from_dict(model.recipe) == RECIPE
    assert model.genotype == NASNET_A and model.dataset == "digits"


# -- zips ------------------------------------------------------------------------------------------------
def zip_like_the_web_app(folder: Path, target: Path, top: str = "") -> Path:
    """webapp/api/views.py zip_folder writes each file at its path inside the folder."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, top + path.name)
    return target


@pytest.mark.parametrize("top", ["", "training-job-1-bundle/"])
def test_a_zip_of_the_bundle_loads(trained, tmp_path, top):
    archive = zip_like_the_web_app(trained.bundle, tmp_path / "bundle.zip", top)
    images = trained.data.test_images[:50]
    with torch.no_grad():
        assert torch.equal(load_model(archive)(images), load_model(trained.bundle)(images))
    result = run("evaluate", archive, "--cache-dir", trained.cache, "--json")
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(trained.result.test_acc, abs=ACC_TOLERANCE)


# -- bad bundles -----------------------------------------------------------------------------------------
def drop_weights(b: Path) -> None:
    (b / "weights.pt").unlink()


def corrupt_model_json(b: Path) -> None:
    (b / "model.json").write_text('{"format": "nas_engine bundle", "format_version": ')


def future_version(b: Path) -> None:
    edit_json(b / "model.json", lambda d: d.update(format_version=99))


def other_network(b: Path) -> None:
    edit_json(b / "model.json", lambda d: d["macro"].update(filters=12))


def damaged_weights(b: Path) -> None:
    blob = (b / "weights.pt").read_bytes()
    (b / "weights.pt").write_bytes(blob[: len(blob) // 2])


def other_genotype(b: Path) -> None:
    (b / "genotype.json").write_text(ENAS.to_json())


def written_before_model_json(b: Path) -> None:
    (b / "model.json").unlink()


def unknown_macro_field(b: Path) -> None:
    edit_json(b / "model.json", lambda d: d["macro"].update(width_multiplier=2))


@pytest.mark.parametrize(
    "damage, field, words",
    [
        (drop_weights, "weights.pt", "missing"),
        (corrupt_model_json, "model.json", "not valid JSON"),
        (future_version, "model.json", "format_version 99 is newer"),
        (other_network, "weights.pt", "do not fit"),
        (damaged_weights, "weights.pt", "sha256"),
        (other_genotype, "genotype.json", "not the one model.json describes"),
        (written_before_model_json, "model.json", "before bundles were self-contained"),
        (unknown_macro_field, "model.json", "macro.width_multiplier: unknown field"),
    ],
)
def test_a_bad_bundle_is_refused_naming_the_file(copy, tmp_path, damage, field, words):
    damage(copy)
    with pytest.raises(BundleError) as caught:
        load_model(copy)
    assert caught.value.field == field and words in caught.value.reason
    for command in (["evaluate", copy, "--no-progress"], ["export", copy, "-f", "torchscript", "-o", tmp_path / "x"]):
        result = run(*command)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {field}: ") and words in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_path_that_is_no_bundle_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path, words in [(tmp_path / "absent", "no such file"), (tmp_path / "notes.txt", "neither a bundle")]:
        result = run("export", path, "-f", "onnx", "-o", tmp_path / "m.onnx")
        assert result.returncode == 2 and result.stderr.startswith("error: bundle: ") and words in result.stderr


def test_a_failed_run_leaves_a_readable_bundle_that_load_model_refuses(trained, copy):
    failed = TrainResult(
        status="diverged", reward=None, params=1, mult_adds=1, wall_time=0.1,
        error="loss became nan at epoch 1, batch 3", model=trained.result.model,
    )  # fmt: skip
    save_bundle(copy, NASNET_A, RECIPE, trained.data, failed)
    assert not (copy / "weights.pt").exists()  # the earlier run's weights are not this run's
    assert json.loads((copy / "metrics.json").read_text())["status"] == "diverged"
    described = read_bundle(copy, weights=False)
    assert described.manifest["weights"] is None and described.classes == trained.data.classes
    with pytest.raises(BundleError, match="the run ended 'diverged' \\(loss became nan") as caught:
        load_model(copy)
    assert caught.value.field == "weights.pt"


def test_export_refuses_an_opset_for_torchscript(trained, tmp_path):
    result = run("export", trained.bundle, "-f", "torchscript", "--opset", 17, "-o", tmp_path / "m.ts")
    assert result.returncode == 2 and result.stderr.startswith("error: opset: ")


def test_export_and_evaluate_document_their_input():
    assert "float32 N x C x S x S" in " ".join(run("export", "--help").stdout.split())
    assert "--split" in run("evaluate", "--help").stdout
