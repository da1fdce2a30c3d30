"""What the search and architecture pages say about a child beyond its reward: how far it
trained, whether early stopping stopped it or holds it at a rung, whose reward it reused;
and, for a search with early stopping, its settings in words (what each rung decided is
Search.rung_counts).

A stopped child's `run.reward` is its validation accuracy at the rung it reached (issue
#13), not a reward: it is shown as a rung value, apart from the final rewards, everywhere.
"""

from __future__ import annotations

from nas_engine.early_stopping import EarlyStop, decision_epochs
from webapp.searches import models as m
from webapp.searches.models import latest_epoch

# A run whose `reward` is a final reward: trained in full, or reused from one that was.
FINAL = (m.RUN_SUCCEEDED, m.RUN_REUSED)

STOPPED_REWARD_WORDS = {
    "rung": "its value at the rung, against a baseline kept per rung",
    "normalised": "its value at the rung, against a per-rung baseline, rescaled to the spread of final rewards",
    "drop": "nothing: the strategy learns from completed children only",
}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def epoch_progress(run, planned: int | None) -> tuple[int, int | None]:
    """(epochs done, epochs of its full training) of a child run, from its latest epoch row;
    without one, the rows it has (a stopped child's rung is len(run.epochs))."""
    if run is None:
        return 0, planned
    last = latest_epoch(run.epochs)
    done = _count(last.get("epoch"))
    if done is None:
        done = len(run.epochs) if isinstance(run.epochs, list) else 0
    total = _count(last.get("epochs"))
    return done, total or planned


def reused_origin(arch: m.Architecture, search: m.Search) -> dict | None:
    """Where a reused child's reward was measured: {architecture, sample_index, search,
    search_name}; search_name is None when that is this search. Only within the search's
    team (the team reward cache never crosses teams; a row that did would name nothing)."""
    origin = arch.reused_from
    if origin is None or origin.search.team_id != search.team_id:
        return None
    return {
        "architecture": origin.id,
        "sample_index": origin.sample_index,
        "search": origin.search_id,
        "search_name": None if origin.search_id == search.id else origin.search.name,
    }


def child_row(arch: m.Architecture, run, search: m.Search, planned: int | None) -> dict:
    """One child as the children table shows it (the page and chart.json's `children`).
    `reward` is a final reward only; a stopped child's value at its rung is `rung_value`."""
    status = run.status if run else None
    epoch, epochs = epoch_progress(run, planned)
    reward = None
    if status != m.RUN_STOPPED:
        reward = arch.reward
        if reward is None and status in FINAL:
            reward = run.reward
    return {
        "architecture": arch.id,
        "sample_index": arch.sample_index,
        "status": status,
        "epoch": epoch,
        "epochs": epochs,
        "reward": reward,
        "rung_value": run.reward if status == m.RUN_STOPPED else None,
        "reused_from": reused_origin(arch, search) if arch.reused_from_id else None,
        "params": arch.params,
        "mult_adds": arch.mult_adds,
    }


def with_origin(architectures):
    """A queryset of architectures that reads each one's reused_from (and its search) in the
    same query, without the bulky fields."""
    return architectures.select_related("reused_from__search").defer(
        "genotype", "reused_from__genotype", "reused_from__search__spec"
    )


def early_stop_words(settings: EarlyStop, epochs: int | None) -> str:
    """The rule and its settings, as a sentence for the search page."""
    of = f" of {epochs}" if epochs else ""
    if settings.rule == "asha":
        rungs = decision_epochs(settings, epochs) if epochs else (settings.min_epochs,)
        at = ", ".join(str(e) for e in rungs)
        return (
            f"ASHA: after epoch{'s' if len(rungs) > 1 else ''} {at}{of}, a child goes on only if its validation "
            f"accuracy is in the top 1/{settings.reduction_factor} of the children judged there before it "
            f"(min epochs {settings.min_epochs}, reduction factor {settings.reduction_factor})."
        )
    if settings.rule == "median":
        span = f"{settings.min_epochs} to {epochs - 1}{of}" if epochs else str(settings.min_epochs)
        return (
            f"Median rule: after every epoch from {span}, a child stops if its best validation "
            f"accuracy is below the median of its peers' running means, once at least {settings.min_peers} "
            f"earlier children reached that epoch (min epochs {settings.min_epochs}, min peers "
            f"{settings.min_peers})."
        )
    return "None: every child trains in full."
