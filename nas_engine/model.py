"""A bundle as a ready-to-use model: `load_model(path)`, and the graphs `export` writes.

`load_model` reads a bundle (its directory or a zip of it; `bundle.read_bundle`), rebuilds
the NASNetwork that model.json describes, loads weights.pt into it and wraps it in a
`BundledModel`: an eval-mode `nn.Module` that does its own preprocessing, with the same
arithmetic as the trainer's evaluation (`trainer._Run.prepare`), so it reproduces the
bundle's recorded accuracy on CPU. What it takes:

    dtype   uint8 in 0..255 (scaled by 1/255), or any float dtype, taken as already in [0, 1]
    shape   a batch N x C x H x W; one image C x H x W (the logits are then K, not 1 x K);
            channels-last N x H x W x C or H x W x C (what PIL and numpy give), recognised
            when dim 1 is not the channel count and the last dim is (N x C x H x W wins a tie)
    size    any H x W: other sizes than the trained S x S are resized to it, bilinear with
            antialiasing, as `data.py` resizes a data set for --image-size (uint8 input is
            rounded back to whole levels after the resize, as there)

then (x - mean) / std per channel with the training split's mean and std, and it returns
the logits N x K (never the auxiliary head's). `predict` also takes numpy arrays and PIL
images and returns class indices or names.

The exported graphs (`export_onnx`, `export_torchscript`) carry the normalisation but
take one fixed input, the simplest contract for other runtimes: float32 N x C x S x S in
[0, 1], N dynamic, S the trained size; no resize, no uint8, no channels-last. They return
float32 logits N x K. Both also carry model.json (ONNX: metadata_props; TorchScript: an
extra file), so the class names travel with the graph.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas_engine.bundle import Bundle, BundleError, read_bundle
from nas_engine.errors import FieldError
from nas_engine.network import NASNetwork


class ModelInputError(FieldError):
    """Images a bundled model cannot take (wrong channels, rank or dtype). `field` is "images"."""


class ExportError(FieldError):
    """An export cannot be written as asked. `field` names the option."""


def load_model(path: str | Path, device: str | torch.device = "cpu") -> BundledModel:
    """The bundle at `path` (directory or zip) as an eval-mode module on `device`.

    Raises `BundleError` naming the file at fault: a missing file, an unknown format
    version, a bundle of a failed run (no weights), weights that do not fit model.json."""
    bundle = read_bundle(path)
    network = NASNetwork(bundle.genotype, bundle.macro)
    _load_weights(network, bundle)
    model = BundledModel(network, bundle)
    # channels_last, as in training: oneDNN's depthwise and pointwise convs run faster in it.
    return model.to(torch.device(device), memory_format=torch.channels_last).eval()


def _load_weights(network: NASNetwork, bundle: Bundle) -> None:
    expected, state = network.state_dict(), bundle.state_dict
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape (file vs network: {_few(shapes)})")
    if problems:
        raise BundleError(
            "weights.pt",
            f"in {bundle.source} do not fit the network model.json and genotype.json describe: "
            f"tensors {'; '.join(problems)}",
        )
    network.load_state_dict(state)


def _few(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


class _Normalized(nn.Module):
    """The network behind its normalisation: float [0, 1] N x C x S x S in, logits out.
    The part that BundledModel runs and that the exported graphs are made of."""

    def __init__(self, network: NASNetwork, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        # Built like augment.normalize builds them (float32 from the same floats), so the
        # arithmetic is the trainer's to the last bit.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        logits, _ = self.network(x)
        return logits


class BundledModel(nn.Module):
    """A trained child with its preprocessing: images in (module docstring), logits out.

    Attributes: `classes` (names, in logit order), `metrics` (metrics.json), `recipe`
    (recipe.json, a dict: `Recipe.from_dict` makes it a Recipe), `manifest` (model.json),
    `genotype`, `macro`, `image_size`, `channels`, `mean`, `std`, `source` (where it was
    read from)."""

    def __init__(self, network: NASNetwork, bundle: Bundle):
        super().__init__()
        self.core = _Normalized(network, bundle.mean, bundle.std)
        self.genotype, self.macro = bundle.genotype, bundle.macro
        self.classes = list(bundle.classes)
        self.mean, self.std = bundle.mean, bundle.std
        self.manifest, self.metrics, self.recipe = bundle.manifest, bundle.metrics, bundle.recipe
        self.source = bundle.source
        self.image_size, self.channels = bundle.macro.image_size, bundle.macro.in_channels

    @property
    def network(self) -> NASNetwork:
        return self.core.network

    @property
    def dataset(self) -> str | None:
        """The name of the data set it was trained on."""
        return (self.manifest.get("dataset") or {}).get("name")

    @property
    def val_acc(self) -> float | None:
        return (self.manifest.get("metrics") or {}).get("val_acc")

    @property
    def test_acc(self) -> float | None:
        return (self.manifest.get("metrics") or {}).get("test_acc")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x, single = self.to_batch(images)
        logits = self.core(self.scale_and_resize(x))
        return logits[0] if single else logits

    def to_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """N x C x H x W (a view, no copy where it already is), and whether one image came."""
        if not isinstance(images, torch.Tensor):
            raise ModelInputError(
                "images", f"expected a torch.Tensor, got {type(images).__name__} (predict takes more)"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ModelInputError("images", f"expected uint8 (0..255) or float (0..1) images, got {images.dtype}")
        single = images.dim() == 3
        x = images.unsqueeze(0) if single else images
        if x.dim() != 4:
            raise ModelInputError("images", f"expected N x C x H x W or C x H x W, got shape {tuple(images.shape)}")
        c = self.channels
        if x.shape[1] != c:
            if x.shape[3] != c:
                raise ModelInputError(
                    "images",
                    f"the model takes {c}-channel images (N x {c} x H x W or N x H x W x {c}), "
                    f"got shape {tuple(images.shape)}",
                )
            x = x.permute(0, 3, 1, 2)
        return x, single

    def scale_and_resize(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 in [0, 1] at the trained size, from a uint8 or float N x C x H x W batch."""
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            if x.dtype == torch.uint8:
                # What data.py's resize does to a data set: uint8 out, rounded.
                x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True)
                x = x.round_().clamp_(0, 255).to(torch.uint8)
            else:
                x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True)
        # The trainer's order: to float32, then / 255 (augment.normalize).
        return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)

    @torch.inference_mode()
    def predict(self, images, *, names: bool = False, batch_size: int = 256) -> torch.Tensor | list[str] | str:
        """Class indices (or names, `names=True`) of images: a tensor, a numpy array or a
        PIL image (one image gives one index or name), in batches of `batch_size`."""
        x = self._as_tensor(images)
        device = self.core.mean.device
        batch, single = self.to_batch(x)
        out = [self(part.to(device)).argmax(1).cpu() for part in batch.split(batch_size)]
        indices = torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
        if names:
            labels = [self.classes[i] for i in indices.tolist()]
            return labels[0] if single else labels
        return indices[0] if single else indices

    def _as_tensor(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images
        if hasattr(images, "convert") and hasattr(images, "size"):  # a PIL image, without importing PIL
            images = np.asarray(images.convert("L" if self.channels == 1 else "RGB"))
            if images.ndim == 2:
                images = images[:, :, None]
        if isinstance(images, np.ndarray):
            return torch.from_numpy(np.array(images))  # a copy: PIL and read-only arrays are not writable
        raise ModelInputError("images", f"expected a tensor, a numpy array or a PIL image, got {type(images).__name__}")


# -- export ----------------------------------------------------------------------------------------
EXPORT_FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "images", "logits"


@dataclass
class ExportInfo:
    """What an export wrote and the input it takes."""

    format: str
    path: str
    bytes: int
    input: dict
    output: dict
    opset: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def export_contract(model: BundledModel) -> tuple[dict, dict]:
    """The exported graphs' input and output, as written in their metadata and printed."""
    c, s = model.channels, model.image_size
    graph_input = {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", c, s, s], "range": [0.0, 1.0]}
    graph_output = {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(model.classes)], "kind": "logits"}
    return graph_input, graph_output


def export_model(model: BundledModel, path: str | Path, fmt: str, *, opset: int | None = None) -> ExportInfo:
    """Write `model` as an ONNX or TorchScript graph at `path` (atomically: tmp + rename)."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError("format", f"unknown format {fmt!r}; choose {' or '.join(EXPORT_FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise ExportError("opset", "only an ONNX export has an opset")
    path = Path(path)
    graph = _Normalized(model.network, model.mean, model.std).to("cpu").eval()
    # Batch 2, not 1: the exporters may specialise a dimension of size 1 to a constant.
    example = torch.rand(2, model.channels, model.image_size, model.image_size)
    graph_input, graph_output = export_contract(model)
    metadata = {
        "nas_engine.model_json": json.dumps(model.manifest),
        "classes": json.dumps(model.classes),
        "input": json.dumps(graph_input),
        "output": json.dumps(graph_output),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        used_opset = None
        if fmt == "onnx":
            used_opset = _export_onnx(graph, example, tmp, opset, metadata)
        else:
            _export_torchscript(graph, example, tmp, metadata)
        tmp.replace(path)
    except OSError as exc:
        raise ExportError("output", f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportInfo(fmt, str(path), path.stat().st_size, graph_input, graph_output, used_opset)


def _export_onnx(graph: nn.Module, example: torch.Tensor, tmp: Path, opset: int | None, metadata: dict) -> int:
    try:
        import onnx
        import onnxscript  # noqa: F401 (torch's exporter needs it; asked here for a clear message)
    except ImportError as exc:
        raise ExportError(
            "format", f"ONNX export needs the onnx and onnxscript packages ({exc.name} is missing): "
            "pip install -r requirements.txt"
        ) from None  # fmt: skip
    # torch.export-based exporter (dynamo=True): the one torch 2.9+ supports; the older
    # TorchScript-based one is deprecated. One file (no external data) up to protobuf's 2 GB.
    with _quiet():
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(tmp))
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _export_torchscript(graph: nn.Module, example: torch.Tensor, tmp: Path, metadata: dict) -> None:
    # Traced, not scripted: NASNetwork's forward walks Python structures (wiring, blocks)
    # that TorchScript cannot compile, and in eval mode its control flow never varies.
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={"model.json": metadata["nas_engine.model_json"]})


@contextlib.contextmanager
def _quiet():
    """Keep exporters' chatter off stdout (a --json answer goes there) and drop torch's
    deprecation notices for TorchScript, which the README mentions once."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        yield
