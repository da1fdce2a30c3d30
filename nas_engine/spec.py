"""A search spec: everything a search needs, validated completely before anything runs.

The web form, the REST API and the workers all speak this one JSON shape:

    {"dataset":   {"name": "digits", "subset_per_class": null, "val_size": null, "image_size": null,
                   "test_size": null, "test_dataset": null},   # test split: nas_engine.data
     "objective": {"name": "accuracy"}            # or {"name": "synthetic", "noise": 0, "duration_s": 0,
                                                  #     "failure_rate": 0}
     "strategy":  {"name": "ppo", "settings": {"lr": 0.00035}},
     "space":     {"ops": [...13 ops...], "num_blocks": 5, "combines": ["add", "concat"]},
     "child":     {"repeats": 1, "filters": 8, "epochs": 3, ...},   # a trainer Recipe
     "budget":    {"children": 20, "parallel": 2},
     "seed": 0,
     "reuse_duplicates": true,                    # a duplicate in this search reuses its reward
     "reuse_team_rewards": true,                  # ...and one any search of the team measured
                                                  #     under the same measurement (measurement_key)
     "early_stop": {"rule": "none", ...},          # nas_engine.early_stopping: asha or median
     "selection": null,                            # or {"top_k", "seeds", "epochs"}: run the
                                                  #     top-K stage when the search finishes
     "noise_floor": {"children": 2, "seeds": 2}}   # re-train a few children with other seeds
                                                  #     (default for the accuracy objective)

Shorthands are accepted on input ("dataset": "digits", "objective": "synthetic",
"strategy": "ppo"); `to_dict()` always gives the full form. Errors are `SpecError` with
the dotted path of the offending field (`child.epochs`, `strategy.settings.lr`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nas_engine.cells import NASNET_A
from nas_engine.data import BUILTIN, DataError, resolve_under_root
from nas_engine.early_stopping import EarlyStop, EarlyStopError, check_epochs, parse_early_stop
from nas_engine.errors import FieldError
from nas_engine.limits import LimitError, Limits, check_training
from nas_engine.selection import (
    NOISE_FLOOR_CHILDREN,
    NOISE_FLOOR_SEEDS,
    SelectionError,
    validate_auto_selection,
    validate_noise_floor,
)
from nas_engine.space import SearchSpace, SpaceError
from nas_engine.strategies import StrategyError, checked_settings, make_strategy
from nas_engine.trainer import Recipe, RecipeError

OBJECTIVES = ("accuracy", "synthetic")
# A search-time child small enough for a CPU: N = 1, F = 8, 3 epochs. Batch 32 at lr 0.05
# (against 64 at 0.1) made the reward of one cell over seeds about six times steadier on
# digits, for 1.2x the time: bench/digits_signal.py.
DEFAULT_CHILD = {"repeats": 1, "filters": 8, "epochs": 3, "lr": 0.05, "batch_size": 32}
DATASET_FIELDS = ("name", "subset_per_class", "val_size", "image_size", "test_size", "test_dataset")
# Image counts (subset, validation and test sizes) beyond any data set there is.
MAX_COUNT = 10_000_000


class SpecError(FieldError):
    """A search spec is invalid; `field` is the dotted path inside the spec."""


@dataclass(frozen=True)
class SearchSpec:
    dataset: dict
    objective: dict
    strategy: str
    strategy_settings: dict
    space: SearchSpace
    child: Recipe
    children: int
    parallel: int
    seed: int = 0
    reuse_duplicates: bool = True
    selection: dict | None = None  # nas_engine.selection.validate_auto_selection
    noise_floor: dict | None = None  # nas_engine.selection.validate_noise_floor
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    reuse_team_rewards: bool = True
    extra: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {
            "dataset": dict(self.dataset),
            "objective": dict(self.objective),
            "strategy": {"name": self.strategy, "settings": dict(self.strategy_settings)},
            "space": self.space.to_dict(),
            "child": self.child.to_dict(),
            "budget": {"children": self.children, "parallel": self.parallel},
            "seed": self.seed,
            "reuse_duplicates": self.reuse_duplicates,
            "selection": None if self.selection is None else dict(self.selection),
            "noise_floor": None if self.noise_floor is None else dict(self.noise_floor),
            "early_stop": self.early_stop.to_dict(),
            "reuse_team_rewards": self.reuse_team_rewards,
        }

    def measurement_key(self) -> str:
        """What a child's reward depends on besides its cell: the data set and its split
        (the seed draws the split), the objective and the child's recipe. Two searches of a
        team with the same key measure a cell the same way, so one may reuse the other's
        reward (the team reward cache). The space enters only for the synthetic objective,
        whose reward tables are drawn from it; a trained child depends on its cell alone.
        The strategy and early stopping do not enter: a completed child's final reward is
        the same whoever proposed it and whatever was stopped around it."""
        return measurement_key(self.to_dict())

    def make_strategy(self):
        return make_strategy(self.strategy, self.space, self.strategy_settings, seed=self.seed)


def measurement_key(spec: dict) -> str:
    """SearchSpec.measurement_key of a full-form spec dict (a stored one)."""
    what = {key: spec[key] for key in ("dataset", "objective", "child", "seed")}
    if spec["objective"]["name"] == "synthetic":
        what["space"] = spec["space"]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _obj(data: object, path: str, shorthand_key: str | None = "name") -> dict:
    if isinstance(data, str) and shorthand_key:
        return {shorthand_key: data}
    if not isinstance(data, dict):
        raise SpecError(path, "must be an object" + (" or a name" if shorthand_key else ""))
    return dict(data)


def _unknown(data: dict, allowed: set[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{path}." if path else ""
            raise SpecError(f"{prefix}{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _int(value: object, path: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SpecError(path, f"must be {bound}, got {value}")
    return value


def _number(value: object, path: str, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(path, f"must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SpecError(path, f"must be {bound}, got {value}")
    return float(value)


def validate_dataset(
    data: object, data_root: Path, *, needs_validation: bool = True, limits: Limits | None = None
) -> dict:
    """The `dataset` part of a spec (or of a training job), full form. A search needs a
    validation split (its rewards); a final training may use every training image."""
    d = _obj(data, "dataset")
    _unknown(d, set(DATASET_FIELDS), "dataset")
    name = _folder_name(d.get("name"), "dataset.name", data_root, builtin_ok=True)
    out = dict.fromkeys(DATASET_FIELDS)
    out["name"] = name
    if d.get("subset_per_class") is not None:
        out["subset_per_class"] = _int(d["subset_per_class"], "dataset.subset_per_class", 1, MAX_COUNT)
    if d.get("image_size") is not None:
        out["image_size"] = _int(d["image_size"], "dataset.image_size", 8)
        if limits is not None:
            _admit(lambda: limits.check("max_image_size", out["image_size"], "dataset.image_size"))
    out["val_size"] = _held_out(d.get("val_size"), "dataset.val_size")
    if needs_validation and out["val_size"] == 0:
        raise SpecError("dataset.val_size", "a search needs a validation split: its rewards are validation accuracy")
    out["test_size"] = _held_out(d.get("test_size"), "dataset.test_size")
    if d.get("test_dataset") is not None:
        out["test_dataset"] = _folder_name(d["test_dataset"], "dataset.test_dataset", data_root, builtin_ok=False)
        if out["test_size"]:
            raise SpecError("dataset.test_size", "give test_dataset or test_size, not both")
    return out


def _held_out(value: object, path: str) -> int | float | None:
    """A held-out split's size: null (the data set's default), a count, or a fraction in (0, 1)."""
    if value is None:
        return None
    if isinstance(value, float) and 0 < value < 1:
        return value
    return _int(value, path, 0, MAX_COUNT)


def _folder_name(name: object, path: str, data_root: Path, *, builtin_ok: bool) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SpecError(path, "required: digits, cifar10 or an image folder under the data root")
    if len(name) > 500 or "\x00" in name:
        raise SpecError(path, "must be a path of at most 500 characters without NUL bytes")
    if name in BUILTIN:
        if builtin_ok:
            return name
        raise SpecError(path, f"{name!r} is a built-in data set; name an image folder under the data root")
    try:
        folder = resolve_under_root(name, data_root)
        is_dir = folder.is_dir()
    except DataError:
        # Say why without echoing server paths back to the submitter.
        raise SpecError(path, f"{name!r} leaves the data root; give a folder inside it") from None
    except (OSError, ValueError):  # a name the file system cannot even look up
        is_dir = False
    if not is_dir:
        raise SpecError(path, f"{name!r} is not a folder under the data root")
    # Stored relative to the root, normalised: an absolute path would show the server's
    # layout to every member, and "a/../b" or "./b" would be another name for one set.
    relative = folder.relative_to(Path(data_root).resolve()).as_posix()
    if relative == ".":
        raise SpecError(path, "that is the data root itself; name a folder inside it")
    if relative in BUILTIN:  # "./digits" would be stored as, and then mean, the built-in set
        raise SpecError(path, f"the folder {relative!r} has a built-in data set's name; rename the folder")
    return relative


def _objective(data: object) -> dict:
    o = _obj(data, "objective")
    name = o.get("name")
    if name not in OBJECTIVES:
        raise SpecError("objective.name", f"must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    if name == "accuracy":
        _unknown(o, {"name"}, "objective")
        return {"name": "accuracy"}
    _unknown(o, {"name", "noise", "duration_s", "failure_rate"}, "objective")
    return {
        "name": "synthetic",
        "noise": _number(o.get("noise", 0.0), "objective.noise", 0.0, 1.0),
        "duration_s": _number(o.get("duration_s", 0.0), "objective.duration_s", 0.0, 3600.0),
        "failure_rate": _number(o.get("failure_rate", 0.0), "objective.failure_rate", 0.0, 1.0),
    }


def validate_spec(data: object, *, data_root: Path, limits: Limits | None = None) -> SearchSpec:
    """Parse and check a whole spec; raise SpecError naming the first bad field.

    `limits`: a deployment's bounds (nas_engine.limits), checked with everything they
    imply (the child's network built on the data set, its estimated cost) before anything
    runs. None: a spec that passed them already (a stored one): no bounds, no counting."""
    if not isinstance(data, dict):
        raise SpecError("spec", "must be a JSON object")
    allowed = {
        "dataset",
        "objective",
        "strategy",
        "space",
        "child",
        "budget",
        "seed",
        "reuse_duplicates",
        "selection",
        "noise_floor",
        "early_stop",
        "reuse_team_rewards",
    }
    _unknown(data, allowed, "")
    dataset = validate_dataset(data.get("dataset", "digits"), Path(data_root), limits=limits)
    objective = _objective(data.get("objective", "accuracy"))
    try:
        space = SearchSpace.from_dict(data.get("space"))
    except SpaceError as exc:
        field, _, reason = str(exc).partition(": ")
        raise SpecError(field, reason) from None
    child_data = _obj(data.get("child", {}), "child", shorthand_key=None)
    try:
        child = Recipe.from_dict({**DEFAULT_CHILD, **child_data})
    except RecipeError as exc:
        raise SpecError(f"child.{exc.field}", exc.reason) from None
    budget = _obj(data.get("budget", {}), "budget", shorthand_key=None)
    _unknown(budget, {"children", "parallel"}, "budget")
    children = _int(budget.get("children", 20), "budget.children", 1, limits and limits.max_children)
    parallel = _int(budget.get("parallel", 1), "budget.parallel", 1, limits and limits.max_parallel)
    seed = _int(data.get("seed", 0), "seed", 0, 2**31 - 1)
    reuse = data.get("reuse_duplicates", True)
    if not isinstance(reuse, bool):
        raise SpecError("reuse_duplicates", f"must be true or false, got {reuse!r}")
    reuse_team = data.get("reuse_team_rewards", True)
    if not isinstance(reuse_team, bool):
        raise SpecError("reuse_team_rewards", f"must be true or false, got {reuse_team!r}")
    try:
        early_stop = parse_early_stop(data.get("early_stop"))
        check_epochs(early_stop, child.epochs)
    except EarlyStopError as exc:
        raise SpecError(exc.field, exc.reason) from None
    strategy = _obj(data.get("strategy", "ppo"), "strategy")
    _unknown(strategy, {"name", "settings"}, "strategy")
    settings = strategy.get("settings") or {}
    if not isinstance(settings, dict):
        raise SpecError("strategy.settings", "must be an object")
    # The noise floor is measured by default where rewards are noisy: trained children (the
    # synthetic objective's noise is its own `noise` setting).
    default_floor = {"children": NOISE_FLOOR_CHILDREN, "seeds": NOISE_FLOOR_SEEDS}
    try:
        selection = validate_auto_selection(data.get("selection"))
        noise_floor = validate_noise_floor(
            data.get("noise_floor", default_floor if objective["name"] == "accuracy" else None)
        )
    except SelectionError as exc:
        raise SpecError(exc.field, exc.reason) from None
    spec = SearchSpec(
        dataset=dataset,
        objective=objective,
        strategy=strategy.get("name"),
        strategy_settings=settings,
        space=space,
        child=child,
        children=children,
        parallel=parallel,
        seed=seed,
        reuse_duplicates=reuse,
        selection=selection,
        noise_floor=noise_floor,
        early_stop=early_stop,
        reuse_team_rewards=reuse_team,
    )
    if limits is not None:
        _admit_search(spec, limits, Path(data_root))
    try:  # unknown names and bad settings, without building the strategy (its controller)
        resolved = checked_settings(spec.strategy, settings)
    except StrategyError as exc:
        raise SpecError(exc.field, exc.reason) from None
    return SearchSpec(**{**spec.__dict__, "strategy_settings": resolved})


def _admit_search(spec: SearchSpec, limits: Limits, data_root: Path) -> None:
    """A deployment's limits on what the search will make the workers do: the controller's
    size (checked before the strategy is built: a 4,096-wide LSTM takes seconds and a
    gigabyte), and, for trained children, the child recipe and its estimated cost."""
    hidden = spec.strategy_settings.get("hidden_size")
    if isinstance(hidden, int | float) and not isinstance(hidden, bool):
        _admit(lambda: limits.check("max_controller_hidden", hidden, "strategy.settings.hidden_size"))
    if spec.objective["name"] == "accuracy":
        _admit(
            lambda: check_training(
                NASNET_A, spec.child, spec.dataset, data_root, limits, prefix="child", cost_limit="max_child_cost"
            )
        )
    else:
        _admit(lambda: limits.check_recipe(spec.child, "child"))


def _admit(check) -> None:
    try:
        check()
    except LimitError as exc:
        raise SpecError(exc.field, exc.reason) from None
