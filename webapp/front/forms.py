"""Forms of the web pages. They collect input; services validate and write.

`SearchForm.spec_data()` builds a spec (nas_engine/spec.py shape) from the chosen preset
and the visible fields (early stopping and the team reward cache included); a non-empty
"advanced: spec JSON" replaces it entirely. A
`ServiceError` from the service is put back on the field it names (`error_to_field`).
"""

from __future__ import annotations

import json
import math

from django import forms

from nas_engine.data import BUILTIN
from nas_engine.early_stopping import RULES
from nas_engine.spec import OBJECTIVES
from nas_engine.strategies import STRATEGIES
from nas_engine.strategies.base import STOPPED_REWARDS
from nas_engine.transfer import TRANSFER_PRESETS
from webapp.accounts.models import Team
from webapp.front.presets import DEFAULT_PRESET, PRESET_CHOICES, SCALE_DEFAULTS, preset_spec

# ServiceError.field -> form field. Anything else lands on the form as a whole.
SEARCH_ERROR_FIELDS = {
    "team": "team",
    "name": "name",
    "spec.dataset.name": "dataset",
    "spec.objective.name": "objective",
    "spec.strategy.name": "strategy",
    "spec.budget.children": "children",
    "spec.budget.parallel": "parallel",
    "spec.child.epochs": "child_epochs",
    "spec.child.repeats": "child_repeats",
    "spec.child.filters": "child_filters",
    "spec.seed": "seed",
    "spec.early_stop": "early_stop_rule",
    "spec.early_stop.rule": "early_stop_rule",
    "spec.early_stop.min_epochs": "early_stop_min_epochs",
    "spec.early_stop.reduction_factor": "early_stop_reduction_factor",
    "spec.early_stop.min_peers": "early_stop_min_peers",
    "spec.early_stop.stopped_reward": "early_stop_stopped_reward",
    "spec.reuse_team_rewards": "reuse_team_rewards",
}
# nas_engine.early_stopping.RULES and strategies.base.STOPPED_REWARDS, as the form words them.
EARLY_STOP_RULES = {
    "none": "none: every child trains in full",
    "asha": "ASHA (asynchronous successive halving)",
    "median": "median stopping rule",
}
STOPPED_REWARD_CHOICES = {
    "rung": "rung: its value at the rung, against a baseline per rung",
    "normalised": "normalised: as rung, rescaled to the spread of final rewards",
    "drop": "drop: nothing (learn from completed children only)",
}
EARLY_STOP_FIELDS = ("min_epochs", "reduction_factor", "min_peers")
TRAIN_ERROR_FIELDS = {
    "name": "name",
    "dataset.name": "dataset",
    "recipe.repeats": "repeats",
    "recipe.filters": "filters",
    "recipe.epochs": "epochs",
    "preset": "preset",
    "budget.max_params": "max_params",
    "budget.max_mult_adds": "max_mult_adds",
}


def error_to_field(form: forms.Form, error, mapping: dict[str, str]) -> None:
    """Attach a ServiceError to the form field it names, or to the whole form with its path."""
    field = mapping.get(error.field)
    form.add_error(field, error.reason if field else f"{error.field}: {error.reason}")


def non_finite_path(data: object, root: str) -> str | None:
    """The dotted path of the first NaN or +-Infinity in `data` (json.loads reads those
    literals, and 1e400 as inf), or None. PostgreSQL's JSON column stores neither, so such a
    spec would fail on save with a 500. Iterative: as deep as json.loads could read."""
    stack = [(root, data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}", item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


class SearchForm(forms.Form):
    """Numbers are not range-checked here: the spec validator is the one judge, and its
    errors come back on these fields (SEARCH_ERROR_FIELDS)."""

    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label=None)
    name = forms.CharField(
        max_length=200, required=False, help_text="blank: named after the cell, the recipe and the size"
    )
    preset = forms.ChoiceField(
        choices=PRESET_CHOICES,
        initial=DEFAULT_PRESET,
        help_text="fills the fields below; what they do not show (strategy settings, the child's "
        "learning rate, objective noise) comes from the preset",
    )
    dataset = forms.CharField(max_length=200, help_text=f"{', '.join(BUILTIN)}, or an image folder under the data root")
    objective = forms.ChoiceField(choices=[(o, o) for o in OBJECTIVES])
    strategy = forms.ChoiceField(choices=[(s, s) for s in STRATEGIES])
    children = forms.IntegerField(label="Children (budget)")
    parallel = forms.IntegerField(label="Parallel children")
    child_epochs = forms.IntegerField(label="Child epochs")
    child_repeats = forms.IntegerField(label="Child N (cells per stack)")
    child_filters = forms.IntegerField(label="Child F (filters)")
    seed = forms.IntegerField()
    # Early stopping (nas_engine/early_stopping.py). A blank number takes the engine's default.
    early_stop_rule = forms.ChoiceField(
        label="Rule",
        choices=[(r, EARLY_STOP_RULES.get(r, r)) for r in RULES],
        initial="none",
        help_text="end children clearly worse than their peers before their full training; "
        "the settings below apply only with a rule. ASHA saves the most and suits random search; "
        "with PPO or evolution the median rule came within about 0.01 of full training's best "
        "on our bench, ASHA 0.05 below",
    )
    early_stop_min_epochs = forms.IntegerField(
        label="Min epochs",
        required=False,
        help_text=(
            "ASHA's first rung, the median rule's grace period; below the child epochs (blank: 1). "
            "For real children, a third to a half of the child epochs: on our CIFAR proxy, the accuracy "
            "after one or two epochs did not rank children (docs/early-stopping.md)"
        ),
    )
    early_stop_reduction_factor = forms.IntegerField(
        label="Reduction factor",
        required=False,
        help_text="ASHA: rungs this factor apart, the top 1/factor go on (blank: 3)",
    )
    early_stop_min_peers = forms.IntegerField(
        label="Min peers",
        required=False,
        help_text="median rule: judge a child only once this many earlier children reached the epoch (blank: 3)",
    )
    early_stop_stopped_reward = forms.ChoiceField(
        label="Strategies learn from a stopped child",
        choices=[(r, STOPPED_REWARD_CHOICES.get(r, r)) for r in STOPPED_REWARDS],
        initial="rung",
        help_text="PPO and REINFORCE; evolution ranks a stopped child below those trained further",
    )
    reuse_team_rewards = forms.BooleanField(
        label="Reuse rewards the team already measured",
        required=False,
        initial=True,
        help_text="a cell another search of the team trained on the same data, split, objective, recipe "
        "and seed takes that reward instead of training again",
    )
    spec_json = forms.CharField(
        required=False,
        label="Advanced: spec JSON",
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        help_text="if given, this whole spec is submitted and the spec fields are ignored; "
        "the placeholder shows the preset in full",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = Team.objects.for_user(user)

    def clean_spec_json(self) -> object:
        text = self.cleaned_data["spec_json"].strip()
        if not text:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        except RecursionError:  # json.loads recurses per level: thousands of `[` exhaust the stack
            raise forms.ValidationError("not valid JSON: nested too deeply") from None
        path = non_finite_path(data, "spec")
        if path is not None:
            raise forms.ValidationError(f"{path}: must be a finite number")
        return data

    @property
    def uses_json(self) -> bool:
        return self.cleaned_data.get("spec_json") is not None

    def spec_data(self) -> object:
        if self.uses_json:
            return self.cleaned_data["spec_json"]
        d = self.cleaned_data
        spec = preset_spec(d["preset"])
        if spec["dataset"]["name"] != d["dataset"]:
            spec["dataset"] = {"name": d["dataset"]}
        if spec["objective"]["name"] != d["objective"]:
            spec["objective"] = {"name": d["objective"]}
        if spec["strategy"]["name"] != d["strategy"]:
            spec["strategy"] = {"name": d["strategy"], "settings": {}}
        spec["budget"] = {"children": d["children"], "parallel": d["parallel"]}
        spec["child"].update(epochs=d["child_epochs"], repeats=d["child_repeats"], filters=d["child_filters"])
        spec["seed"] = d["seed"]
        spec["early_stop"] = self.early_stop_data()
        spec["reuse_team_rewards"] = d["reuse_team_rewards"]
        return spec

    def early_stop_data(self) -> dict:
        """The spec's `early_stop`: the rule, and with a rule its settings (blank: the
        engine's default). Without one the settings do nothing, so they are not sent: a
        number left in a field the rule ignores cannot refuse the search."""
        d = self.cleaned_data
        data = {"rule": d["early_stop_rule"]}
        if data["rule"] == "none":
            return data
        data.update({k: d[f"early_stop_{k}"] for k in EARLY_STOP_FIELDS if d.get(f"early_stop_{k}") is not None})
        data["stopped_reward"] = d["early_stop_stopped_reward"]
        return data

    def add_service_error(self, error) -> None:
        if self.uses_json and error.field.startswith("spec"):
            self.add_error("spec_json", f"{error.field}: {error.reason}")
        else:
            error_to_field(self, error, SEARCH_ERROR_FIELDS)


_N, _F, _EPOCHS = SCALE_DEFAULTS["repeats"], SCALE_DEFAULTS["filters"], SCALE_DEFAULTS["epochs"]


class TrainForm(forms.Form):
    """Train an architecture at scale: a TrainingJob from a named final training (a preset)
    or the search's child recipe scaled, at a given N/F or the widest within a budget.
    Blank numbers take the preset's (without one: N=6, F=32, 600 epochs); the service
    judges the rest, and its errors come back on these fields."""

    name = forms.CharField(
        max_length=200, required=False, help_text="blank: named after the cell, the recipe and the size"
    )
    preset = forms.ChoiceField(
        choices=[("", "the search's child recipe, scaled")]
        + [(key, f"{key}: {p.description}") for key, p in TRANSFER_PRESETS.items()],
        required=False,
        label="Recipe",
    )
    repeats = forms.IntegerField(
        min_value=1,
        max_value=20,
        required=False,
        label="N",
        help_text=f"blank: the preset's or {_N}",
        widget=forms.NumberInput(attrs={"placeholder": _N}),
    )
    filters = forms.IntegerField(
        min_value=1,
        max_value=4096,
        required=False,
        label="F",
        help_text=f"blank: the preset's or {_F}",
        widget=forms.NumberInput(attrs={"placeholder": _F}),
    )
    epochs = forms.IntegerField(
        min_value=1, max_value=5000, required=False, help_text=f"blank: the preset's or {_EPOCHS}",
        widget=forms.NumberInput(attrs={"placeholder": _EPOCHS}),
    )  # fmt: skip
    dataset = forms.CharField(max_length=200)
    max_params = forms.CharField(
        max_length=30, required=False, label="Max params", help_text="e.g. 3.3M: the widest F (and N) within it"
    )
    max_mult_adds = forms.CharField(
        max_length=30, required=False, label="Max mult-adds", help_text="e.g. 600M (the paper's mobile setting)"
    )

    def promote_args(self) -> dict:
        """Keyword arguments of front.presets.promote."""
        d = self.cleaned_data
        budget = {k: d[k].strip() for k in ("max_params", "max_mult_adds") if d.get(k) and d[k].strip()}
        return {
            "name": d["name"],
            "dataset_name": d["dataset"],
            "preset": d.get("preset") or None,
            "budget": budget or None,
            "repeats": d.get("repeats"),
            "filters": d.get("filters"),
            "epochs": d.get("epochs"),
        }

    def add_service_error(self, error) -> None:
        error_to_field(self, error, TRAIN_ERROR_FIELDS)


SELECTION_ERROR_FIELDS = {"top_k": "top_k", "seeds": "seeds", "recipe.epochs": "epochs"}


class SelectionForm(forms.Form):
    """A top-K selection of a search (services.create_selection). As with SearchForm, the
    numbers are judged by the service; its errors come back on these fields. A blank field
    takes the service's default."""

    top_k = forms.IntegerField(
        label="K (architectures)",
        required=False,
        help_text="the search's best distinct architectures, trained again",
    )
    seeds = forms.IntegerField(label="Seeds per architecture", required=False)
    epochs = forms.IntegerField(label="Epochs", required=False, help_text="each run's training; the child's, doubled")

    def service_args(self) -> dict:
        d = self.cleaned_data
        recipe = {"epochs": d["epochs"]} if d.get("epochs") is not None else None
        return {"top_k": d.get("top_k"), "seeds": d.get("seeds"), "recipe": recipe}

    def add_service_error(self, error) -> None:
        error_to_field(self, error, SELECTION_ERROR_FIELDS)
