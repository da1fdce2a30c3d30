"""Forms of the web pages. They collect input; services validate and write.

`SearchForm.spec_data()` builds a spec (nas_engine/spec.py shape) from the chosen preset
and the visible fields; a non-empty "advanced: spec JSON" replaces it entirely. A
`ServiceError` from the service is put back on the field it names (`error_to_field`).
"""

from __future__ import annotations

import json
import math

from django import forms

from nas_engine.data import BUILTIN
from nas_engine.spec import OBJECTIVES
from nas_engine.strategies import STRATEGIES
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
}
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
        return spec

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
