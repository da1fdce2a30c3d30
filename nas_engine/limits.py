"""What one search or one training job may ask of the shared workers: a deployment's limits.

Every bound lives here and is applied in one place per kind of work: `spec.validate_spec`
for a search (its child recipe, its strategy, its budget) and the training-job service
for a job (its recipe and the estimated cost of its network); the web form, the REST API
and the CLI all go through those two. A refusal names the field, the limit and the
setting that raises it, and happens before anything is stored or built.

The cost of training one network is estimated as

    mult-adds of one forward pass x training images x epochs

(a backward pass costs about twice a forward one, so the real work is about 3x this;
the bound only needs to be proportional). A search child is estimated with NASNet-A's
cell at the child's N, F and image size, as the children are not sampled yet; a training
job with its own cell. Counting builds the network on the meta device (no memory, no
compute) at N <= 3 only (counting.describe extrapolates deeper ones exactly), so it
costs a fraction of a second whatever the N.

Reference points for the defaults: the paper's search child (N=2, F=32, 20 epochs on
45,000 CIFAR-10 images) costs about 2e14; its final CIFAR-10 model (6@768, 600 epochs)
about 1.6e16; NASNet-A Large on ImageNet (23.8B mult-adds, 312 epochs of 1.28M images)
about 1e19.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from nas_engine.counting import describe
from nas_engine.data import DataError, DatasetShape, peek_dataset
from nas_engine.errors import FieldError
from nas_engine.genotype import Genotype
from nas_engine.network import NetworkError
from nas_engine.trainer import Recipe

# The deployment setting (webapp/settings.py, docker/env.example) behind each limit: named
# in refusals so an operator knows what to raise.
SETTING_NAMES = {
    "max_children": "NAS_MAX_CHILDREN_PER_SEARCH",
    "max_parallel": "NAS_MAX_PARALLEL_PER_SEARCH",
    "max_repeats": "NAS_MAX_REPEATS",
    "max_filters": "NAS_MAX_FILTERS",
    "max_epochs": "NAS_MAX_EPOCHS",
    "max_batch_size": "NAS_MAX_BATCH_SIZE",
    "max_image_size": "NAS_MAX_IMAGE_SIZE",
    "max_controller_hidden": "NAS_MAX_CONTROLLER_HIDDEN",
    "max_child_cost": "NAS_MAX_CHILD_COST",
    "max_job_cost": "NAS_MAX_JOB_COST",
}

# Recipe fields bounded by a limit.
_RECIPE_LIMITS = {
    "repeats": "max_repeats",
    "filters": "max_filters",
    "epochs": "max_epochs",
    "batch_size": "max_batch_size",
    "eval_batch_size": "max_batch_size",
}


class LimitError(FieldError):
    """A training the workers will not run: over a deployment limit, or a network that
    cannot be built on its data set. `field` names what to change."""


@dataclass(frozen=True)
class Limits:
    """A deployment's bounds; None: unbounded (a stored spec, which passed them once)."""

    max_children: int | None = 20000
    max_parallel: int | None = 64
    max_repeats: int | None = 12  # N; the paper's largest is 7
    max_filters: int | None = 1024  # F; NASNet-A Large is 168
    max_epochs: int | None = 1000  # the paper's CIFAR-10 final training is 600
    max_batch_size: int | None = 4096
    max_image_size: int | None = 512  # NASNet-A Large reads 331 px
    max_controller_hidden: int | None = 512  # the controller LSTM's width; the paper's is 100
    max_child_cost: float | None = 1e15  # per search child (module docstring)
    max_job_cost: float | None = 1e19  # per training job

    @classmethod
    def unbounded(cls) -> Limits:
        return cls(**dict.fromkeys((f.name for f in fields(cls)), None))

    def check(self, name: str, value: float, field: str, what: str = "") -> None:
        """Refuse `value` above the limit `name` (a no-op when that limit is None)."""
        limit = getattr(self, name)
        if limit is not None and value > limit:
            shown = f"{limit:.3g}" if isinstance(limit, float) else f"{limit:,}"
            raise LimitError(
                field,
                f"{what or f'{value:,}'} is more than this deployment allows: at most {shown} ({SETTING_NAMES[name]})",
            )

    def check_recipe(self, recipe: Recipe, prefix: str) -> None:
        """N, F, epochs and batch sizes of a recipe; fields are `<prefix>.<name>`."""
        for attr, name in _RECIPE_LIMITS.items():
            self.check(name, getattr(recipe, attr), f"{prefix}.{attr}")


def estimate_cost(genotype: Genotype, recipe: Recipe, shape, images: int) -> float:
    """mult-adds x images x epochs of training `genotype` with `recipe` on a data set of
    `shape` (num_classes, channels, image_size: a DatasetShape or DatasetSplit)."""
    return training_cost(forward_mult_adds(genotype, recipe, shape), images, recipe.epochs)


def training_cost(mult_adds: int, images: int, epochs: int) -> float:
    """The cost every limit on training compares: forward mult-adds x images x epochs."""
    return float(mult_adds) * images * epochs


def forward_mult_adds(genotype: Genotype, recipe: Recipe, shape) -> int:
    """Mult-adds of one inference pass at the recipe's N and F on a data set of `shape`."""
    return describe(genotype, recipe.macro_config(shape)).mult_adds


def check_cost(limits: Limits, name: str, cost: float, field: str, recipe: Recipe, images: int) -> None:
    """Refuse a training whose estimated cost exceeds the limit `name`, saying what it is made of."""
    what = (
        f"the estimated cost, {cost:.3g} (forward mult-adds x {images:,} training images x {recipe.epochs} "
        f"epochs at N={recipe.repeats}, F={recipe.filters}),"
    )
    limits.check(name, cost, field, what)


def check_training(
    genotype: Genotype,
    recipe: Recipe,
    dataset: dict,
    data_root: str | Path,
    limits: Limits,
    *,
    prefix: str,
    cost_limit: str,
) -> DatasetShape:
    """Admit one training (a search's child, with NASNet-A standing in for the cell, or a
    training job): its recipe within the limits, its network buildable on the data set
    (an ImageNet stem needs 32 px), its estimated cost within `cost_limit`. Returns the
    data set's shape. Errors name `<prefix>.<field>` or `dataset.<field>`."""
    limits.check_recipe(recipe, prefix)
    try:
        shape = peek_dataset(dataset["name"], data_root=data_root, image_size=dataset.get("image_size"))
        recipe.macro_config(shape)
    except DataError as exc:
        raise LimitError("dataset" if exc.field == "dataset" else f"dataset.{exc.field}", exc.reason) from None
    except NetworkError as exc:
        where = {"image_size": "dataset.image_size", "num_classes": "dataset", "in_channels": "dataset"}
        raise LimitError(where.get(exc.field, f"{prefix}.{exc.field}"), exc.reason) from None
    images = training_images(dataset, shape)
    check_cost(limits, cost_limit, estimate_cost(genotype, recipe, shape, images), prefix, recipe, images)
    return shape


def training_images(dataset: dict, shape: DatasetShape) -> int:
    """Images a training reads per epoch, at most: the subset if one is asked for, else the set."""
    per_class = dataset.get("subset_per_class")
    return min(shape.images, per_class * shape.num_classes) if per_class else shape.images
