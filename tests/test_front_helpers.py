"""Helpers for the web page and admin tests (no tests here): searches and architectures
written straight as rows, the way the workers would leave them."""

from __future__ import annotations

from nas_engine.cells import AMOEBANET_A, NASNET_A
from webapp.searches import models as m

SPEC = {
    "dataset": {"name": "digits", "subset_per_class": None, "val_size": None, "image_size": None},
    "objective": {"name": "accuracy"},
    "strategy": {"name": "ppo", "settings": {"batch_size": 4}},
    "child": {"repeats": 1, "filters": 8, "epochs": 1, "lr": 0.1, "batch_size": 64},
    "budget": {"children": 8, "parallel": 2},
    "seed": 0,
}
EPOCHS = [
    {"epoch": 1, "epochs": 2, "train_loss": 1.9, "train_acc": 0.41, "val_loss": 1.5, "val_acc": 0.55, "lr": 0.1,
     "seconds": 1.2},
    {"epoch": 2, "epochs": 2, "train_loss": 1.1, "train_acc": 0.71, "val_loss": 0.9, "val_acc": 0.83, "lr": 0.0,
     "seconds": 1.1},
]  # fmt: skip


def make_search(team, owner, name="digits smoke", status=m.RUNNING, children=8) -> m.Search:
    return m.Search.objects.create(team=team, owner=owner, name=name, spec=SPEC, status=status, children_total=children)


def make_architecture(search, index, reward=None, run_status=m.RUN_SUCCEEDED, genotype=None) -> m.Architecture:
    genotype = genotype or (NASNET_A if index % 2 == 0 else AMOEBANET_A)
    arch = m.Architecture.objects.create(
        search=search,
        sample_index=index,
        genotype=genotype.to_dict(),
        canonical_hash=genotype.canonical_hash()[:58] + f"{index:06d}",
        params=123456 + index,
        mult_adds=7890123 + index,
        reward=reward,
        told=reward is not None,
    )
    m.ChildRun.objects.create(
        architecture=arch, status=run_status, attempt=1, reward=reward, epochs=EPOCHS if reward else []
    )
    if reward is not None:
        search.children_done += 1
        if search.best_reward is None or reward > search.best_reward:
            search.best_reward, search.best_architecture = reward, arch
        search.save()
    return arch


def login(client, user) -> None:
    client.force_login(user)


# -- early stopping and the team reward cache (issue #13), as the workers will leave them ------
ES_SPEC = {
    **SPEC,
    "child": {**SPEC["child"], "epochs": 9},
    "early_stop": {"rule": "asha", "min_epochs": 1, "reduction_factor": 3, "stopped_reward": "rung"},
}


def curve(done: int, total: int) -> list[dict]:
    """Per-epoch rows of a child trained `done` of its `total` epochs."""
    return [{"epoch": e, "epochs": total, "val_acc": round(0.3 + 0.05 * e, 4)} for e in range(1, done + 1)]


def make_child(search, index, status, *, done=0, value=None, reward=None, reused_from=None) -> m.Architecture:
    """A child of an early-stopping search: `done` epochs of the search's child epochs
    trained, `value` its run's reward (a stopped child's rung value), `reward` the
    architecture's final reward (None for a stopped child)."""
    total = search.spec["child"]["epochs"]
    arch = make_architecture(search, index, run_status=status)
    m.Architecture.objects.filter(pk=arch.pk).update(reward=reward, reused_from=reused_from, told=True)
    m.ChildRun.objects.filter(architecture=arch).update(reward=value, epochs=curve(done, total))
    arch.refresh_from_db()
    return arch
