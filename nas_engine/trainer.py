"""Train a child network from a genotype and a recipe; its validation accuracy is the reward.

The paper's child training during the search (Zoph et al. 2017 §4): 20 epochs, N = 2,
cosine learning-rate decay, momentum 0.9, L2 weight decay. Its final CIFAR training
adds ScheduledDropPath, the auxiliary head (weight 0.4), gradient-norm clipping at 5
and cutout. Every one of those is a field of `Recipe`.

The trainer never knows where its progress goes: it calls a `Reporter` (print it, put it
in a database, push it to a websocket), the celery-progress habit. A reporter can also
ask the trainer to stop early (a cancelled search).

On CUDA the whole data set lives on the device, augmentation runs there in batches,
the forward pass runs under bf16 autocast. Both devices use the channels_last layout.
On CPU the same code runs in float32 and, for a given seed, is deterministic.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from nas_engine.augment import augment_batch, cutout, normalize
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
    augment: bool = True  # random crop (pad 4) + horizontal flip
    cutout: int = 0  # cutout square size in pixels; 0 = off
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
            ("cutout", isinstance(self.cutout, int) and self.cutout >= 0, "must be an integer >= 0"),
            ("stem_multiplier", self.stem_multiplier > 0, "must be > 0"),
            ("seed", isinstance(self.seed, int) and not isinstance(self.seed, bool), "must be an integer"),
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
            expected = type(getattr(cls(), key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise RecipeError(key, f"must be of type {expected.__name__}, got {value!r}")
        return cls(**data)

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
        )


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged" | "stopped"
    reward: float | None  # validation accuracy after the last epoch, None unless ok
    params: int
    mult_adds: int
    wall_time: float
    epochs: list[EpochMetrics] = field(default_factory=list)
    error: str | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "reward": self.reward,
            "params": self.params,
            "mult_adds": self.mult_adds,
            "wall_time": self.wall_time,
            "epochs": [e.to_dict() for e in self.epochs],
            "error": self.error,
        }


class Reporter:
    """Where progress goes. Subclass and override; the defaults do nothing."""

    def on_start(self, total_epochs: int, batches_per_epoch: int) -> None: ...

    def on_batch(self, epoch: int, batch: int, batches: int) -> None: ...

    def on_epoch(self, metrics: EpochMetrics) -> None: ...

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
) -> TrainResult:
    """Train the child described by `genotype` and `recipe` on `data`; return the reward."""
    device = torch.device(device)
    reporter = reporter or Reporter()
    start = time.perf_counter()
    macro = recipe.macro_config(data)
    counts = describe(genotype, macro)
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.manual_seed(recipe.seed)
        # channels_last on CPU too: oneDNN's depthwise and pointwise convs run about
        # 1.7x faster in it than in NCHW (measured on a NASNet-A child, 2 cores).
        model = NASNetwork(genotype, macro).to(device, memory_format=torch.channels_last)
        run = _Run(model, recipe, data.to(device), device, reporter)
        try:
            epochs = run.fit()
            status, error = ("stopped", "stopped on request") if run.stopped else ("ok", None)
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
    )


class _Run:
    """One training run: the loop, kept apart from the bookkeeping of train_child."""

    def __init__(self, model: NASNetwork, recipe: Recipe, data: DatasetSplit, device, reporter: Reporter):
        self.model, self.recipe, self.data, self.device, self.reporter = model, recipe, data, device, reporter
        self.cuda = device.type == "cuda"
        self.generator = torch.Generator(device="cpu").manual_seed(recipe.seed)
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
        n = len(data.train_labels)
        self.batches_per_epoch = max(1, n // recipe.batch_size) if n >= recipe.batch_size else 1
        self.total_steps = self.batches_per_epoch * recipe.epochs
        self.step = 0
        self.history: list[EpochMetrics] = []
        self.stopped = False

    def lr_at(self, step: int) -> float:
        if not self.recipe.cosine:
            return self.recipe.lr
        return 0.5 * self.recipe.lr * (1 + math.cos(math.pi * step / self.total_steps))

    def prepare(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.recipe.augment:
            images = augment_batch(images, padding=4, flip=True, cutout_size=0, generator=self.generator)
        x = normalize(images, self.data.mean, self.data.std)
        if train and self.recipe.cutout:
            # After normalisation, so the erased square is the data set's mean colour.
            x = cutout(x, self.recipe.cutout, self.generator)
        return x.contiguous(memory_format=torch.channels_last)

    def fit(self) -> list[EpochMetrics]:
        self.reporter.on_start(self.recipe.epochs, self.batches_per_epoch)
        for epoch in range(1, self.recipe.epochs + 1):
            t0 = time.perf_counter()
            train_loss, train_acc = self.train_epoch(epoch)
            if self.stopped:
                break
            val_loss, val_acc = self.evaluate()
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
    def evaluate(self) -> tuple[float, float]:
        model, data = self.model, self.data
        model.eval()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = len(data.val_labels)
        for start in range(0, n, self.recipe.eval_batch_size):
            x = self.prepare(data.val_images[start : start + self.recipe.eval_batch_size], train=False)
            y = data.val_labels[start : start + self.recipe.eval_batch_size]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                logits, _ = model(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        loss = total_loss.item() / max(n, 1)
        if not math.isfinite(loss):
            raise Diverged(f"validation loss became {loss}")
        return loss, correct.item() / max(n, 1)
