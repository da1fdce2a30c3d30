"""Starting points for the submission form, and the recipe for training a cell at scale.

A preset is a whole search spec (nas_engine/spec.py shape). The form shows its main
values as fields; what the form does not show (strategy settings, objective noise,
the child's learning rate...) comes from the preset the user picked.

"paper" follows Zoph et al. 2017 (NASNet): CIFAR-10, search-time children with N = 2
trained for 20 epochs, the PPO controller with the paper's settings (Adam lr 0.00035,
entropy weight 0.00001, baseline decay 0.95, minibatches of 20), 20,000 children and
450 children trained in parallel. The paper's F at search time is not restated here;
F = 32 is our choice. Children and parallelism are capped by this deployment's limits
(NAS_MAX_CHILDREN_PER_SEARCH, NAS_MAX_PARALLEL_PER_SEARCH), so with the default limit of
64 parallel children the preset asks for 64, not 450.
"""

from __future__ import annotations

import copy

from django.conf import settings

from nas_engine.early_stopping import parse_early_stop
from nas_engine.spec import DEFAULT_CHILD
from webapp.searches import services

DEFAULT_PRESET = "smoke"

PRESETS: dict[str, dict] = {
    "smoke": {
        "label": "CPU smoke test",
        "help": "digits, 8 tiny children (N=1, F=8, 3 epochs, about 0.9-1.0 validation accuracy): "
        "a minute or two on a laptop CPU",
        "spec": {
            "dataset": {"name": "digits"},
            "objective": {"name": "accuracy"},
            "strategy": {"name": "ppo", "settings": {"batch_size": 4}},
            "child": dict(DEFAULT_CHILD),
            "budget": {"children": 8, "parallel": 2},
            "seed": 0,
        },
    },
    "paper": {
        "label": "paper CIFAR-10 search",
        "help": "NASNet's search: CIFAR-10, N=2 children for 20 epochs, PPO, 20,000 children, 450 in parallel "
        "(capped by this deployment's limits). Needs many GPUs.",
        "spec": {
            "dataset": {"name": "cifar10"},
            "objective": {"name": "accuracy"},
            "strategy": {
                "name": "ppo",
                "settings": {"lr": 0.00035, "entropy_weight": 0.00001, "baseline_decay": 0.95, "batch_size": 20},
            },
            "child": {"repeats": 2, "filters": 32, "epochs": 20, "batch_size": 128, "lr": 0.025},
            "budget": {"children": 20000, "parallel": 450},
            "seed": 0,
        },
    },
    "synthetic": {
        "label": "synthetic load test",
        "help": "no training: a fake reward with noise and 5% failures, to exercise the queue and the pages",
        "spec": {
            "dataset": {"name": "digits"},
            "objective": {"name": "synthetic", "noise": 0.02, "duration_s": 0.5, "failure_rate": 0.05},
            "strategy": {"name": "ppo", "settings": {}},
            "child": {"repeats": 1, "filters": 8, "epochs": 1},
            "budget": {"children": 500, "parallel": 16},
            "seed": 0,
        },
    },
}

PRESET_CHOICES = [(key, preset["label"]) for key, preset in PRESETS.items()]


def preset_spec(key: str) -> dict:
    """A copy of a preset's spec, its budget capped by this deployment's limits."""
    spec = copy.deepcopy(PRESETS.get(key, PRESETS[DEFAULT_PRESET])["spec"])
    budget = spec["budget"]
    budget["children"] = min(budget["children"], settings.NAS_MAX_CHILDREN_PER_SEARCH)
    budget["parallel"] = min(budget["parallel"], settings.NAS_MAX_PARALLEL_PER_SEARCH)
    return spec


def preset_initial(key: str) -> dict:
    """The form fields' values for a preset."""
    spec = preset_spec(key)
    child = spec["child"]
    early_stop = parse_early_stop(spec.get("early_stop"))  # none in a preset yet: the defaults
    return {
        "preset": key if key in PRESETS else DEFAULT_PRESET,
        "dataset": spec["dataset"]["name"],
        "objective": spec["objective"]["name"],
        "strategy": spec["strategy"]["name"],
        "children": spec["budget"]["children"],
        "parallel": spec["budget"]["parallel"],
        "child_epochs": child["epochs"],
        "child_repeats": child["repeats"],
        "child_filters": child["filters"],
        "seed": spec["seed"],
        "early_stop_rule": early_stop.rule,
        "early_stop_min_epochs": early_stop.min_epochs,
        "early_stop_reduction_factor": early_stop.reduction_factor,
        "early_stop_min_peers": early_stop.min_peers,
        "early_stop_stopped_reward": early_stop.stopped_reward,
        "reuse_team_rewards": spec.get("reuse_team_rewards", True),
    }


# -- training a found cell at scale (the transfer step) ----------------------------------------
# NASNet-A's CIFAR-10 model is 6@768, i.e. N = 6 cells per stack and F = 32; the paper
# trains it for 600 epochs with an auxiliary head (0.4), ScheduledDropPath and cutout.
SCALE_DEFAULTS = {"repeats": 6, "filters": 32, "epochs": 600}


def scale_recipe(child: dict | None, dataset_name: str, *, repeats: int, filters: int, epochs: int) -> dict:
    """A final-training recipe: the search's child recipe at a larger N/F, longer, regularised."""
    recipe = dict(child or {})
    recipe.update(repeats=repeats, filters=filters, epochs=epochs, aux_weight=0.4, drop_path_keep=0.6)
    recipe["cutout"] = 16 if dataset_name == "cifar10" else 0
    return recipe


def promote(
    architecture,
    *,
    user,
    name: str | None = None,
    dataset_name: str | None = None,
    preset: str | None = None,
    budget: dict | None = None,
    **scale,
) -> object:
    """Queue a TrainingJob for an architecture at scale (services.create_training_job).

    The data set defaults to the search's (with its subset and sizes); another name
    trains on that data set whole. `scale` (repeats, filters, epochs; None: not given)
    overrides the preset's recipe, or without a preset SCALE_DEFAULTS over the search's
    child recipe. With a `budget` the width is the budget's to pick, and N too unless given.
    """
    search = architecture.search
    given = {key: value for key, value in scale.items() if value is not None}
    spec = search.parsed_spec
    dataset = dict(spec.dataset)
    if dataset_name and dataset_name != dataset.get("name"):
        dataset = {"name": dataset_name}
    if preset:
        recipe = dict(given)
    else:
        recipe = scale_recipe(spec.child.to_dict(), dataset["name"], **{**SCALE_DEFAULTS, **given})
        if budget:
            recipe = {key: value for key, value in recipe.items() if key not in ("repeats", "filters") or key in given}
    if not name:
        name = f"{search.name} #{architecture.sample_index} at {_size_words(preset, given, recipe, budget)}"
        name = name[: services.NAME_MAX]
    return services.create_training_job(
        user=user,
        team=search.team,
        name=name,
        genotype=architecture.genotype,
        dataset=dataset,
        recipe=recipe,
        architecture=architecture,
        preset=preset,
        budget=budget,
    )


def _size_words(preset: str | None, given: dict, recipe: dict, budget: dict | None) -> str:
    """How a job's default name says its size: "cifar_final_cpu N=4 within 50k params"."""
    words = [preset] if preset else []
    sizes = given if preset else recipe
    words += [f"{label}={sizes[key]}" for key, label in (("repeats", "N"), ("filters", "F")) if key in sizes]
    if budget:
        limits = [f"{value} {key.removeprefix('max_').replace('_', '-')}" for key, value in budget.items()]
        words.append("within " + ", ".join(limits))
    return " ".join(words) or "scale"
