"""Transfer: the paper's final trainings by name, and the largest network of a cell in a budget.

After the search, the paper takes the best cell and trains it once, big and long, with
a regularisation recipe the search children never see (Zoph et al. 2017 §4.1-4.2,
appendix A). `TRANSFER_PRESETS` names those recipes, and small variants of them that
finish on a CPU in minutes, for `python -m nas_engine train --preset NAME`.

Where each number comes from (TF-slim `research/slim/nets/nasnet/nasnet.py` in
tensorflow/models, the reference code of the paper):

- `cifar_config()`: stem_multiplier 3, num_cells 18 (N = 6), num_conv_filters 32,
  drop_path_keep_prob 0.6, use_aux_head, dense_dropout_keep_prob 1.0 (no dropout),
  total_training_steps 937,500 (= 600 epochs at batch 32); its notes: batch 32, learning
  rate 0.025 with a single cosine period, aux head weight 0.4, gradient-norm clip 5;
  `nasnet_cifar_arg_scope(weight_decay=5e-4)`. Cutout (16 px, DeVries & Taylor 2017) is
  the paper's "with cutout" row of table 1.
- `mobile_imagenet_config()`: stem_multiplier 1, num_cells 12 (N = 4), num_conv_filters
  44, drop_path_keep_prob 1.0 (off), dense_dropout_keep_prob 0.5, use_aux_head,
  total_training_steps 250,000; notes: 32 images x 50 replicas, aux weight 0.4, label
  smoothing 0.1, clip 10; `nasnet_mobile_arg_scope(weight_decay=4e-5)`.
- `large_imagenet_config()`: stem_multiplier 3, num_cells 18 (N = 6), num_conv_filters
  168, drop_path_keep_prob 0.7, dense_dropout_keep_prob 0.5, skip_reduction_layer_input
  1, use_aux_head, total_training_steps 250,000; notes: 16 images x 100 replicas, aux
  weight 0.4, label smoothing 0.1, clip 10; `nasnet_large_arg_scope(weight_decay=5e-5)`.

What we do differently on ImageNet, on purpose: the paper trains with RMSProp and an
exponential decay (x 0.97 every 2.4 epochs) at a global batch of 1,600 on 50-100
replicas; we train with SGD (momentum 0.9, Nesterov) and a cosine decay at batch 256 and
learning rate 0.1 (the usual 0.1 per 256 images; scale both together if memory asks for
a smaller batch). The 312 epochs are the reference's total_training_steps x 1,600 images
per step / 1,281,167 training images. Our augmentation is a padded random crop and a flip,
not the Inception-style random-resized crop of the reference input pipeline.

`fit_to_budget` answers the other transfer question: the biggest network of this cell
that fits a parameter or mult-add budget (the paper's mobile setting: under 600M
mult-adds). Counts come from `counting.describe` on the meta device.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from nas_engine.counting import Counts, describe
from nas_engine.genotype import Genotype
from nas_engine.network import MacroConfig, NetworkError, output_multiplier
from nas_engine.trainer import Recipe


class BudgetError(NetworkError):
    """A size budget is invalid or unreachable; `field` is max_params or max_mult_adds."""


# -- named recipes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransferPreset:
    """A named final training: the recipe (with N, F, stem), the input size, where it comes from."""

    recipe: Recipe
    image_size: int
    num_classes: int  # of the data set the paper used (CIFAR-10, ImageNet); the counts in listings
    description: str
    reference: str

    def n_at_p(self, genotype: Genotype) -> str:
        """The paper's N@P for this preset's N and F with `genotype`'s normal cell."""
        return f"{self.recipe.repeats}@{penultimate_filters(genotype, self.recipe.filters)}"

    def macro_config(self, *, num_classes: int | None = None, in_channels: int = 3) -> MacroConfig:
        r = self.recipe
        return MacroConfig(
            kind=r.macro,
            repeats=r.repeats,
            filters=r.filters,
            stem_multiplier=r.stem_multiplier,
            num_classes=num_classes or self.num_classes,
            in_channels=in_channels,
            image_size=self.image_size,
            aux_head=r.aux_weight > 0,
            drop_path_keep=r.drop_path_keep,
            dropout=r.dropout,
            skip_reduction_input=r.skip_reduction_input,
        )

    def to_dict(self, genotype: Genotype | None = None) -> dict:
        out = {
            "recipe": self.recipe.to_dict(),
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "description": self.description,
            "reference": self.reference,
        }
        if genotype is not None:
            out["n_at_p"] = self.n_at_p(genotype)
        return out


_CIFAR_FINAL = dict(
    macro="cifar", stem_multiplier=3.0, epochs=600, batch_size=32, lr=0.025, momentum=0.9, weight_decay=5e-4,
    cosine=True, drop_path_keep=0.6, aux_weight=0.4, grad_clip=5.0, cutout=16,
)  # fmt: skip
_IMAGENET = dict(
    macro="imagenet", epochs=312, batch_size=256, lr=0.1, momentum=0.9, nesterov=True, cosine=True,
    label_smoothing=0.1, aux_weight=0.4, grad_clip=10.0, dropout=0.5, eval_batch_size=100,
)  # fmt: skip
_SLIM = "TF-slim nets/nasnet/nasnet.py"

TRANSFER_PRESETS: dict[str, TransferPreset] = {
    "cifar_final": TransferPreset(
        Recipe(repeats=6, filters=32, **_CIFAR_FINAL),
        image_size=32,
        num_classes=10,
        description="NASNet-A 6@768 on CIFAR-10: 600 epochs, drop-path 0.6, aux head, cutout",
        reference=f"Zoph et al. 2017 table 1 (3.3M, 2.65% error with cutout); {_SLIM} cifar_config",
    ),
    "cifar_final_large": TransferPreset(
        Recipe(repeats=7, filters=96, **_CIFAR_FINAL),
        image_size=32,
        num_classes=10,
        description="NASNet-A 7@2304 on CIFAR-10: the cifar_final recipe at the table's largest size",
        reference="Zoph et al. 2017 table 1 (27.6M, 2.40% error with cutout; we count 32.6M, docs/fidelity.md)",
    ),
    "imagenet_mobile": TransferPreset(
        Recipe(repeats=4, filters=44, stem_multiplier=1.0, weight_decay=4e-5, drop_path_keep=1.0, **_IMAGENET),
        image_size=224,
        num_classes=1000,
        description="NASNet-A Mobile 4@1056, 224 px: label smoothing, dropout 0.5, no drop-path; SGD not RMSProp",
        reference=f"Zoph et al. 2017 table 3 (5.3M, 564M mult-adds, 74.0% top-1); {_SLIM} mobile_imagenet_config",
    ),
    "imagenet_large": TransferPreset(
        Recipe(
            repeats=6,
            filters=168,
            stem_multiplier=3.0,
            weight_decay=5e-5,
            drop_path_keep=0.7,
            skip_reduction_input=True,
            **_IMAGENET,
        ),
        image_size=331,
        num_classes=1000,
        description="NASNet-A Large 6@4032, 331 px: drop-path 0.7, dropout 0.5, stem 96; SGD not RMSProp",
        reference=f"Zoph et al. 2017 table 2 (88.9M, 23.8B mult-adds, 82.7% top-1); {_SLIM} large_imagenet_config",
    ),
    # cifar_final, shrunk to run on a CPU in minutes. Kept: the whole regularisation recipe
    # (batch 32, lr 0.025 cosine, weight decay 5e-4, ScheduledDropPath to 0.6 — its ramp
    # follows training progress, so it spans 10 epochs as it spans 600 — aux head 0.4,
    # clip 5), and 32 px inputs, so cutout 16 and the 4 px crop padding mean what they
    # mean on CIFAR. Shrunk: N 6 -> 2 (the search children's N) and F 32 -> 8 (about 1/40
    # of the parameters), 600 -> 10 epochs.
    "cifar_final_cpu": TransferPreset(
        Recipe(repeats=2, filters=8, **{**_CIFAR_FINAL, "epochs": 10}),
        image_size=32,
        num_classes=10,
        description="cifar_final shrunk for a CPU: 2@192, 10 epochs, same regularisation at 32 px",
        reference="cifar_final, scaled down (this project)",
    ),
    # imagenet_mobile, shrunk. Kept: the ImageNet stacking (stride-2 stem, two reduction
    # cells as stem cells) with stem 32, label smoothing 0.1, dropout 0.5, aux head 0.4,
    # clip 10, weight decay 4e-5, drop-path off, SGD with Nesterov at 0.1 per 256 images
    # (batch 64 -> lr 0.025). Shrunk: 224 -> 64 px (five stride-2 steps leave 8, 4, 2 px
    # for the three stacks, as 224 px leaves 28, 14, 7), N 4 -> 2, F 44 -> 8, 312 -> 10 epochs.
    "mobile_cpu": TransferPreset(
        Recipe(
            repeats=2,
            filters=8,
            stem_multiplier=1.0,
            weight_decay=4e-5,
            drop_path_keep=1.0,
            **{**_IMAGENET, "epochs": 10, "batch_size": 64, "lr": 0.025, "eval_batch_size": 500},
        ),
        image_size=64,
        num_classes=10,
        description="imagenet_mobile shrunk for a CPU: 2@192 at 64 px, 10 epochs, same regularisation",
        reference="imagenet_mobile, scaled down (this project)",
    ),
}


def penultimate_filters(genotype: Genotype, filters: int) -> int:
    """P, the last normal cell's output channels: 4 x F x the normal cell's output multiplier."""
    return 4 * filters * output_multiplier(genotype.normal)


# -- the largest network in a budget -------------------------------------------------------------
# The smallest F that builds: the ImageNet stem cells run at F/4 filters, so F >= 4 there.
MIN_FILTERS = {"cifar": 2, "imagenet": 4}
# The widest F tried (P = 24,576 for NASNet-A); a budget beyond that gets this F.
MAX_FILTERS = 1024
# N tried when it is not fixed: the paper's 4, 6 and 7 and everything smaller.
REPEATS_TRIED = range(1, 8)


def fit_to_budget(
    genotype: Genotype,
    *,
    kind: str,
    image_size: int,
    num_classes: int,
    in_channels: int = 3,
    max_params: float | None = None,
    max_mult_adds: float | None = None,
    repeats: int | Sequence[int] | None = None,
    stem_multiplier: float | None = None,
    skip_reduction_input: bool = False,
) -> tuple[int, int, Counts]:
    """(N, F, counts) of the largest network of `genotype` within the budget.

    Counts (inference network, no aux head, as in the paper's tables) grow with F at a
    fixed N, so for each N the widest F within every given budget is found by a bracketed
    search (`_widest`, a few describes per N). Any F >= MIN_FILTERS gives a valid P
    (P = 4 x F x the normal cell's output multiplier), up to MAX_FILTERS.

    N is `repeats` when it is an int. Otherwise each N of `repeats` (default
    REPEATS_TRIED, 1 to 7) is tried and the largest network wins: the most mult-adds when
    `max_mult_adds` is given, else the most parameters; a tie goes to the smaller N.
    Between neighbouring N the winner is whichever F lands closest under the budget (a
    step of F moves the counts by a few per cent), so fix N to compare like with like.
    A full sweep costs about 25 describes: 10-30 s for ImageNet-sized networks.

    `stem_multiplier` defaults to 3 for cifar and 1 for imagenet (as in MacroConfig's
    docs); pass the preset's, and `skip_reduction_input` for the large ImageNet wiring.

    Raises BudgetError (field max_params or max_mult_adds) for a budget that is not a
    positive number, or one below the smallest network: the smallest N tried at
    MIN_FILTERS; the message gives that network's count, the smallest reachable value.
    """
    budgets = _check_budgets(max_params, max_mult_adds)
    tried = _repeats_tried(repeats)
    count = _counter(
        genotype, kind=kind, image_size=image_size, num_classes=num_classes, in_channels=in_channels,
        stem_multiplier=stem_multiplier, skip_reduction_input=skip_reduction_input,
    )  # fmt: skip

    def ratio(counts: Counts) -> float:  # <= 1: within every budget
        return max(getattr(counts, name) / limit for name, limit in budgets.items())

    f_min = MIN_FILTERS.get(kind, 2)
    best: tuple[int, int, Counts] | None = None
    guess, ceiling, offset = f_min, MAX_FILTERS, 0.0
    for n in tried:
        f, offset = _widest(lambda f, n=n: ratio(count(n, f)), f_min, guess, ceiling, offset)
        if f is None:  # not even the narrowest network at this N fits; a deeper one fits less
            if best is None:
                raise _unreachable(budgets, count(n, f_min), n, f_min, penultimate_filters(genotype, f_min))
            break
        rank = "mult_adds" if max_mult_adds is not None else "params"
        if best is None or getattr(count(n, f), rank) > getattr(best[2], rank):
            best = (n, f, count(n, f))
        guess = ceiling = f  # one more cell per stack: the widest F can only shrink
    return best


def fit_recipe(genotype: Genotype, recipe: Recipe, shape, budget: dict, repeats: int | None) -> tuple[Recipe, Counts]:
    """`recipe` with the N and F of the largest network within `budget` ({max_params,
    max_mult_adds}) on a data set of `shape` (anything with num_classes, channels and
    image_size: a DatasetSplit or a DatasetShape); N is fixed when `repeats` is given."""
    n, f, counts = fit_to_budget(genotype, repeats=repeats, **_sizing(recipe, shape), **budget)
    return replace(recipe, repeats=n, filters=f), counts


def check_recipe_budget(genotype: Genotype, recipe: Recipe, shape, budget: dict, repeats: int | None) -> None:
    """Raise the BudgetError `fit_recipe` would raise for an invalid or unreachable budget,
    at the cost of one count (the smallest network tried), so a web request can refuse it
    before a worker spends a fit on it."""
    budgets = _check_budgets(budget.get("max_params"), budget.get("max_mult_adds"))
    n, f = _repeats_tried(repeats)[0], MIN_FILTERS.get(recipe.macro, 2)
    smallest = _counter(genotype, **_sizing(recipe, shape))(n, f)
    if any(getattr(smallest, name) > limit for name, limit in budgets.items()):
        raise _unreachable(budgets, smallest, n, f, penultimate_filters(genotype, f))


def _sizing(recipe: Recipe, shape) -> dict:
    """What fit_to_budget needs to know of the recipe and the data set."""
    return {
        "kind": recipe.macro,
        "image_size": shape.image_size,
        "num_classes": shape.num_classes,
        "in_channels": shape.channels,
        "stem_multiplier": recipe.stem_multiplier,
        "skip_reduction_input": recipe.skip_reduction_input,
    }


_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def parse_count(text: object) -> int:
    """A budget as people write it: 564M, 5.3m, 23.8B, 600e6, 3300000 (or a number) -> a
    positive whole count. ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"expected a positive count such as 600M, 5.3M or 600e6, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+?)\s*([kKmMgGbB]?)\s*", str(text))
        try:
            value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()] if match else math.nan
        except ValueError:
            value = math.nan
    if not value >= 1 or value == math.inf:
        raise ValueError(f"expected a positive count such as 600M, 5.3M or 600e6, got {text!r}")
    return int(value)


def _repeats_tried(repeats: int | Sequence[int] | None) -> list[int]:
    tried = sorted(set([repeats] if isinstance(repeats, int) else (repeats or REPEATS_TRIED)))
    if not tried or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in tried):
        raise NetworkError("repeats", f"must be integers >= 1, got {repeats!r}")
    return tried


def _counter(
    genotype: Genotype,
    *,
    kind: str,
    image_size: int,
    num_classes: int,
    in_channels: int,
    stem_multiplier: float | None,
    skip_reduction_input: bool,
) -> Callable[[int, int], Counts]:
    """count(N, F): the network's counts, memoised. `stem_multiplier` defaults to 3 for
    cifar and 1 for imagenet (as in MacroConfig's docs)."""
    stem = stem_multiplier if stem_multiplier is not None else (3.0 if kind == "cifar" else 1.0)
    cache: dict[tuple[int, int], Counts] = {}

    def count(n: int, f: int) -> Counts:
        if (n, f) not in cache:
            macro = MacroConfig(
                kind=kind, repeats=n, filters=f, stem_multiplier=stem, num_classes=num_classes,
                in_channels=in_channels, image_size=image_size, skip_reduction_input=skip_reduction_input,
            )  # fmt: skip
            cache[(n, f)] = describe(genotype, macro)
        return cache[(n, f)]

    return count


def _check_budgets(max_params: float | None, max_mult_adds: float | None) -> dict[str, float]:
    budgets = {"params": max_params, "mult_adds": max_mult_adds}
    if max_params is None and max_mult_adds is None:
        raise BudgetError("max_params", "give max_params, max_mult_adds or both")
    for name, value in budgets.items():
        ok = value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        )
        if not ok:
            raise BudgetError(f"max_{name}", f"must be a positive number, got {value!r}")
    return {name: value for name, value in budgets.items() if value is not None}


def _unreachable(budgets: dict[str, float], smallest: Counts, n: int, f: int, p: int) -> BudgetError:
    name = next(name for name, limit in budgets.items() if getattr(smallest, name) > limit)
    need = getattr(smallest, name)
    return BudgetError(
        f"max_{name}",
        f"{budgets[name]:,.0f} is below the smallest network of this cell, {n}@{p} (N={n}, F={f}), "
        f"which counts {need:,} {name.replace('_', '-')}; the smallest reachable value is {need:,}",
    )


def _widest(
    ratio_at: Callable[[int], float], f_min: int, guess: int, ceiling: int = MAX_FILTERS, offset: float = 0.0
) -> tuple[int | None, float]:
    """The largest F in [f_min, ceiling] with ratio_at(F) <= 1 (None if f_min is over), and
    the `offset` that describes the curve near it, for the next N.

    ratio_at grows with F, about quadratically (every conv has about F x F weights and the
    spatial sizes do not depend on F), so sqrt(ratio) is nearly a line, a (F + offset):
    probes interpolate it between a fitting and a non-fitting F, extrapolate it from two
    probes on one side, or from one probe and the offset (0 at first: a parabola through
    the origin, which overshoots from above and undershoots from below), and fall back to
    bisection when two probes did not halve the bracket. 2-5 describes per N.
    """
    root: dict[int, float] = {}
    widths: list[int] = []
    probe = max(f_min, min(guess, ceiling))
    while True:
        root[probe] = math.sqrt(ratio_at(probe))
        fits = sorted(f for f, r in root.items() if r <= 1)
        over = sorted(f for f, r in root.items() if r > 1)
        lo, hi = (fits[-1] if fits else None), (over[0] if over else None)
        if hi == f_min:
            return None, offset
        if lo == ceiling:
            return lo, offset
        if lo is not None and hi is not None:
            if hi - lo == 1:
                slope = root[hi] - root[lo]
                return lo, root[lo] / slope - lo
            widths.append(hi - lo)
            if len(widths) >= 3 and widths[-1] > widths[-3] / 2:
                probe = (lo + hi) // 2
            else:
                probe = min(hi - 1, max(lo + 1, round(_crossing(root, lo, hi))))
        elif hi is None:  # every probe fits: reach past the estimate to bracket the budget
            estimate = _crossing(root, fits[-2], lo) if len(fits) > 1 else (lo + offset) / root[lo] - offset
            probe = min(ceiling, max(lo + 1, math.ceil(estimate * (1.2 if len(fits) == 1 and not offset else 1))))
        else:  # no probe fits yet
            estimate = _crossing(root, hi, over[1]) if len(over) > 1 else (hi + offset) / root[hi] - offset
            probe = max(f_min, min(hi - 1, math.floor(estimate)))


def _crossing(root: dict[int, float], a: int, b: int) -> float:
    """Where the line through (a, root[a]) and (b, root[b]) reaches 1."""
    slope = (root[b] - root[a]) / (b - a)
    return b + 1 if slope <= 0 else a + (1 - root[a]) / slope
