"""Train a child network from a genotype and a recipe; its validation accuracy is the reward.

The paper's child training during the search (Zoph et al. 2017 §4): 20 epochs, N = 2,
cosine learning-rate decay, momentum 0.9, L2 weight decay. Its final CIFAR training
adds ScheduledDropPath, the auxiliary head (weight 0.4), gradient-norm clipping at 5
and cutout. Every one of those is a field of `Recipe`.

Augmentation fits the data (`augment.default_padding`): the crop padding scales with the
image (4 px at 32, 1 px at 8) and flips happen only where the data set says a mirrored
image keeps its class (`DatasetSplit.flip_safe`: not digits); recipe fields override both.
Weight decay applies to conv and linear weights only, as in the reference code (not to
batch-norm parameters or biases); `weight_decay_norm_bias` brings the old way back.

The reward is validation accuracy. The test split, where the data set has one, is read
once, after the last epoch, and only when the caller asks (`test=True`: a final training,
never a search child).

A `checkpoint` file makes a long run resumable: after every epoch the model, optimiser,
schedule position, random states and history are written to it atomically, and a run that
finds a checkpoint of the same genotype, recipe and data continues after its last epoch.
On CPU a resumed run gives the same weights as one that was never interrupted.

The trainer never knows where its progress goes: it calls a `Reporter` (print it, put it
in a database, push it to a websocket), the celery-progress habit. A reporter can also
ask the trainer to stop early (a cancelled search).

On CUDA the whole data set lives on the device, augmentation runs there in batches,
the forward pass runs under bf16 autocast. Both devices use the channels_last layout.
On CPU the same code runs in float32 and, for a given seed, is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nas_engine.augment import augment_batch, cutout, default_padding, normalize
from nas_engine.counting import count_params, describe
from nas_engine.data import DatasetSplit
from nas_engine.errors import FieldError
from nas_engine.genotype import Genotype
from nas_engine.network import MacroConfig, NASNetwork


class RecipeError(FieldError):
    """A training-recipe field is invalid."""


@dataclass(frozen=True)
class Recipe:
    """How a child is built and trained. Defaults: a small, fast search-time child."""

    macro: str = "cifar"  # "cifar" | "imagenet" stacking
    repeats: int = 2  # N
    filters: int = 16  # F
    stem_multiplier: float = 3.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.025
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    cosine: bool = True
    label_smoothing: float = 0.0
    drop_path_keep: float = 1.0  # final keep probability; 1.0 = ScheduledDropPath off
    aux_weight: float = 0.0  # 0 = no auxiliary head; the paper uses 0.4
    grad_clip: float = 5.0  # max gradient norm; 0 = off
    augment: bool = True  # random crop + flip (as below); False: neither
    crop_padding: int | None = None  # pixels; None = the image size / 8 (4 at 32 px, 1 at 8 px)
    flip: bool | None = None  # mirror left-right; None = where the data set allows (not digits)
    cutout: int = 0  # cutout square size in pixels; 0 = off (the paper's final CIFAR: 16)
    dropout: float = 0.0  # before the classifier (the reference ImageNet models: 0.5)
    skip_reduction_input: bool = False  # the large ImageNet model's wiring (network.MacroConfig)
    weight_decay_norm_bias: bool = False  # also decay batch-norm parameters and biases (the old way)
    eval_batch_size: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        positive_ints = ("repeats", "filters", "epochs", "batch_size", "eval_batch_size")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RecipeError(name, f"must be a positive integer, got {value!r}")
        for name, ok, reason in [
            ("macro", self.macro in ("cifar", "imagenet"), "must be 'cifar' or 'imagenet'"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "must be a positive number"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("drop_path_keep", 0 < self.drop_path_keep <= 1, "must be in (0, 1]"),
            ("aux_weight", self.aux_weight >= 0, "must be >= 0"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0"),
            # Pixels; past an image size of 512 (nas_engine.limits) they only cost memory.
            ("cutout", isinstance(self.cutout, int) and 0 <= self.cutout <= 1024, "must be an integer in [0, 1024]"),
            (
                "crop_padding",
                self.crop_padding is None or 0 <= self.crop_padding <= 1024,
                "must be an integer in [0, 1024] or null",
            ),
            ("dropout", 0 <= self.dropout < 1, "must be in [0, 1)"),
            ("stem_multiplier", self.stem_multiplier > 0, "must be > 0"),
            (
                "seed",
                isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**32,
                "must be an integer in [0, 2**32)",
            ),
        ]:
            if not ok:
                raise RecipeError(name, f"{reason}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError("recipe", "must be an object")
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise RecipeError(key, f"unknown field; known: {', '.join(known)}")
            if value is None and key in _NULLABLE:
                continue
            expected = _NULLABLE.get(key) or type(getattr(cls(), key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                nullable = " or null" if key in _NULLABLE else ""
                raise RecipeError(key, f"must be of type {expected.__name__}{nullable}, got {value!r}")
            if expected is float and not math.isfinite(value):
                raise RecipeError(key, f"must be a finite number, got {value!r}")
        return cls(**data)

    def padding_for(self, data: DatasetSplit) -> int:
        return default_padding(data.image_size) if self.crop_padding is None else self.crop_padding

    def flip_for(self, data: DatasetSplit) -> bool:
        return data.flip_safe if self.flip is None else self.flip

    def macro_config(self, data: DatasetSplit) -> MacroConfig:
        return MacroConfig(
            kind=self.macro,
            repeats=self.repeats,
            filters=self.filters,
            stem_multiplier=self.stem_multiplier,
            num_classes=data.num_classes,
            in_channels=data.channels,
            image_size=data.image_size,
            aux_head=self.aux_weight > 0,
            drop_path_keep=self.drop_path_keep,
            dropout=self.dropout,
            skip_reduction_input=self.skip_reduction_input,
        )


# Fields whose default is None: their type when they are set.
_NULLABLE = {"crop_padding": int, "flip": bool}


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float | None  # None without a validation split (val_size 0)
    val_acc: float | None
    lr: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged" | "stopped"
    reward: float | None  # validation accuracy after the last epoch, None unless ok (or no val split)
    params: int
    mult_adds: int
    wall_time: float
    epochs: list[EpochMetrics] = field(default_factory=list)
    error: str | None = None
    model: nn.Module | None = field(default=None, repr=False)
    test_acc: float | None = None  # on the test split, after the last epoch, when asked and there is one
    test_loss: float | None = None
    resumed_from_epoch: int = 0  # the checkpoint's epoch this run continued after (0: from scratch)

    @property
    def val_acc(self) -> float | None:
        return self.reward

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "reward": self.reward,
            "val_acc": self.reward,
            "test_acc": self.test_acc,
            "test_loss": self.test_loss,
            "params": self.params,
            "mult_adds": self.mult_adds,
            "wall_time": self.wall_time,
            "resumed_from_epoch": self.resumed_from_epoch,
            "epochs": [e.to_dict() for e in self.epochs],
            "error": self.error,
        }


class Reporter:
    """Where progress goes. Subclass and override; the defaults do nothing."""

    def on_start(self, total_epochs: int, batches_per_epoch: int) -> None: ...

    def on_batch(self, epoch: int, batch: int, batches: int) -> None: ...

    def on_epoch(self, metrics: EpochMetrics) -> None: ...

    def on_resume(self, epoch: int, history: list[EpochMetrics]) -> None:
        """A checkpoint was found: training continues after `epoch`."""

    def should_stop(self) -> bool:
        return False


class Diverged(RuntimeError):
    pass


def train_child(
    genotype: Genotype,
    recipe: Recipe,
    data: DatasetSplit,
    *,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    keep_model: bool = False,
    test: bool = False,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train the child described by `genotype` and `recipe` on `data`; return the reward.

    `test`: score the test split after the last epoch (a final training; never a search
    child). `checkpoint`: a file to resume from and to write after every epoch."""
    device = torch.device(device)
    reporter = reporter or Reporter()
    start = time.perf_counter()
    macro = recipe.macro_config(data)
    counts = describe(genotype, macro)
    cuda = device.type == "cuda"
    test_loss = test_acc = None
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.manual_seed(recipe.seed)
        # channels_last on CPU too: oneDNN's depthwise and pointwise convs run about
        # 1.7x faster in it than in NCHW (measured on a NASNet-A child, 2 cores).
        model = NASNetwork(genotype, macro).to(device, memory_format=torch.channels_last)
        run = _Run(model, recipe, data.to(device), device, reporter)
        if checkpoint is not None:
            run.checkpoint = _Checkpoint(Path(checkpoint), _run_key(genotype, recipe, data))
            run.resume()
        try:
            epochs = run.fit()
            status, error = ("stopped", "stopped on request") if run.stopped else ("ok", None)
            if status == "ok" and test and run.data.has_test:
                test_loss, test_acc = run.evaluate(run.data.test_images, run.data.test_labels)
        except Diverged as exc:
            epochs, status, error = run.history, "diverged", str(exc)
    reward = epochs[-1].val_acc if status == "ok" and epochs else None
    return TrainResult(
        status=status,
        reward=reward,
        params=count_params(model),
        mult_adds=counts.mult_adds,
        wall_time=time.perf_counter() - start,
        epochs=epochs,
        error=error,
        model=model if keep_model else None,
        test_acc=test_acc,
        test_loss=test_loss,
        resumed_from_epoch=run.resumed_from,
    )


def _run_key(genotype: Genotype, recipe: Recipe, data: DatasetSplit) -> str:
    """What a checkpoint must match to be resumed: the same cell, recipe and data."""
    what = {
        "genotype": genotype.canonical_hash(),
        "recipe": recipe.to_dict(),
        "data": [data.name, len(data.train_labels), len(data.val_labels), data.classes, list(data.mean)],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


class _Checkpoint:
    """One file, rewritten atomically after every epoch (tmp + rename): a reader sees the
    previous epoch's state or the new one, never half of one."""

    FORMAT = 1

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def load(self) -> dict | None:
        """The saved state when it is this run's; None when absent, foreign or unreadable."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or foreign: start from scratch, it is rewritten after epoch 1
            return None
        if not isinstance(state, dict) or state.get("format") != self.FORMAT or state.get("key") != self.key:
            return None
        return state

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            torch.save({"format": self.FORMAT, "key": self.key, **state}, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class _Run:
    """One training run: the loop, kept apart from the bookkeeping of train_child."""

    def __init__(self, model: NASNetwork, recipe: Recipe, data: DatasetSplit, device, reporter: Reporter):
        self.model, self.recipe, self.data, self.device, self.reporter = model, recipe, data, device, reporter
        self.cuda = device.type == "cuda"
        self.generator = torch.Generator(device="cpu").manual_seed(recipe.seed)
        self.optimizer = torch.optim.SGD(
            _decay_groups(model, recipe),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
        )
        self.padding, self.flip = recipe.padding_for(data), recipe.flip_for(data)
        n = len(data.train_labels)
        self.batches_per_epoch = max(1, n // recipe.batch_size) if n >= recipe.batch_size else 1
        self.total_steps = self.batches_per_epoch * recipe.epochs
        self.step = 0
        self.history: list[EpochMetrics] = []
        self.stopped = False
        self.checkpoint: _Checkpoint | None = None
        self.resumed_from = 0

    def resume(self) -> None:
        """Continue from the checkpoint, if there is one of this run."""
        state = self.checkpoint.load()
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = [EpochMetrics(**e) for e in json.loads(state["history"])]
        self.resumed_from = len(self.history)
        self.reporter.on_resume(self.resumed_from, list(self.history))

    def save_checkpoint(self) -> None:
        self.checkpoint.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None,
                # JSON text: weights_only loading takes tensors and plain containers only.
                "history": json.dumps([e.to_dict() for e in self.history]),
            }
        )

    def lr_at(self, step: int) -> float:
        if not self.recipe.cosine:
            return self.recipe.lr
        return 0.5 * self.recipe.lr * (1 + math.cos(math.pi * step / self.total_steps))

    def prepare(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.recipe.augment:
            images = augment_batch(
                images, padding=self.padding, flip=self.flip, cutout_size=0, generator=self.generator
            )
        x = normalize(images, self.data.mean, self.data.std)
        if train and self.recipe.cutout:
            # After normalisation, so the erased square is the data set's mean colour.
            x = cutout(x, self.recipe.cutout, self.generator)
        return x.contiguous(memory_format=torch.channels_last)

    def fit(self) -> list[EpochMetrics]:
        self.reporter.on_start(self.recipe.epochs, self.batches_per_epoch)
        for epoch in range(len(self.history) + 1, self.recipe.epochs + 1):
            t0 = time.perf_counter()
            train_loss, train_acc = self.train_epoch(epoch)
            if self.stopped:
                break
            val_loss, val_acc = self.evaluate(self.data.val_images, self.data.val_labels)
            metrics = EpochMetrics(
                epoch=epoch,
                epochs=self.recipe.epochs,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                lr=self.lr_at(self.step),
                seconds=time.perf_counter() - t0,
            )
            self.history.append(metrics)
            if self.checkpoint is not None:
                self.save_checkpoint()
            self.reporter.on_epoch(metrics)
        return self.history

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        model, recipe, data = self.model, self.recipe, self.data
        model.train()
        n = len(data.train_labels)
        order = torch.randperm(n, generator=self.generator).to(self.device)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for b in range(self.batches_per_epoch):
            if self.reporter.should_stop():
                self.stopped = True
                break
            idx = order[b * recipe.batch_size : (b + 1) * recipe.batch_size]
            x = self.prepare(data.train_images[idx], train=True)
            y = data.train_labels[idx]
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            model.drop_path_progress = self.step / self.total_steps
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                logits, aux = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                if aux is not None:
                    loss = loss + recipe.aux_weight * F.cross_entropy(aux, y, label_smoothing=recipe.label_smoothing)
            if not torch.isfinite(loss):
                raise Diverged(f"loss became {loss.item()} at epoch {epoch}, batch {b + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            self.optimizer.step()
            self.step += 1
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            self.reporter.on_batch(epoch, b + 1, self.batches_per_epoch)
        seen = max(seen, 1)
        return total_loss.item() / seen, correct.item() / seen

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float | None, float | None]:
        """Loss and accuracy on a held-out split; (None, None) when it is empty."""
        n = len(labels)
        if n == 0:
            return None, None
        model = self.model
        model.eval()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for start in range(0, n, self.recipe.eval_batch_size):
            x = self.prepare(images[start : start + self.recipe.eval_batch_size], train=False)
            y = labels[start : start + self.recipe.eval_batch_size]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                logits, _ = model(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        loss = total_loss.item() / n
        if not math.isfinite(loss):
            raise Diverged(f"held-out loss became {loss}")
        return loss, correct.item() / n


def _decay_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """Weight decay on conv and linear weights only (every parameter of 2+ dimensions):
    batch-norm scales and shifts and biases are left alone, as in the reference code."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.weight_decay_norm_bias:
        return [{"params": params, "weight_decay": recipe.weight_decay}]
    decay = [p for p in params if p.dim() > 1]
    rest = [p for p in params if p.dim() <= 1]
    return [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
