"""A search's strategy checkpoint in the database, in pieces (StrategyCheckpointPart).

    save(search, strategy)   # in the advance's transaction: writes the pieces that changed
    load(search)             # the strategy as last saved (or built from the spec if never)

The pieces: each large tensor entry of the strategy's state_dict() on its own (PPO's
controller weights and its optimizer's moments: 2.2 MB, changed once per PPO update), and
the envelope (nas_engine's checkpoint_payload) holding everything else (pending proposals,
RNG states, counters: a few kB, changed every advance), each as torch.save bytes with its
BLAKE2b digest. An advance serialises every piece (milliseconds) but writes only those
whose digest differs from the stored one. Reassembled, the pieces are the same payload a
checkpoint file holds, checked by the same code (check_envelope, restore_into).
"""

from __future__ import annotations

import hashlib

import torch
from django.utils import timezone

from nas_engine.spec import SearchSpec
from nas_engine.strategies import Strategy, restore_into
from nas_engine.strategies.base import StrategyError, check_envelope, checkpoint_payload, from_bytes, to_bytes
from webapp.searches import models as m

ENVELOPE = "envelope"
STATE = "state."  # prefix of the keys of the state_dict() pieces
# A state entry with at least this many tensor elements is a piece of its own: below it, a
# piece's own serialisation and row cost more than rewriting it inside the envelope.
HEAVY_ELEMENTS = 16_384


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def _tensor_elements(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, dict):
        return sum(_tensor_elements(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_elements(v) for v in value)
    return 0


def pieces(strategy: Strategy) -> dict[str, bytes]:
    """The checkpoint of `strategy` as {piece key: bytes}."""
    state = strategy.state_dict()
    heavy = {key: value for key, value in state.items() if _tensor_elements(value) >= HEAVY_ELEMENTS}
    light = {key: value for key, value in state.items() if key not in heavy}
    out = {ENVELOPE: to_bytes(checkpoint_payload(strategy, light))}
    out.update({STATE + key: to_bytes(value) for key, value in heavy.items()})
    return out


def save(search: m.Search, strategy: Strategy, stored: dict[str, str] | None = None) -> dict[str, str]:
    """Write the pieces that changed since the last save (and drop pieces the state no longer
    has); returns the digests now stored, by key. `stored`: the digests the caller knows to
    be in the database (what the last save returned), saving their read. Call inside the
    transaction that holds the Search row lock (the advance's), so writers never interleave."""
    new = {key: (data, _digest(data)) for key, data in pieces(strategy).items()}
    if stored is None:
        stored = dict(m.StrategyCheckpointPart.objects.filter(search=search).values_list("key", "digest"))
    changed = [
        m.StrategyCheckpointPart(search=search, key=key, digest=digest, data=data)
        for key, (data, digest) in new.items()
        if stored.get(key) != digest
    ]
    if changed:
        m.StrategyCheckpointPart.objects.bulk_create(
            changed,
            update_conflicts=True,
            unique_fields=["search", "key"],
            update_fields=["digest", "data", "updated_at"],
        )
    gone = set(stored) - set(new)
    if gone:
        m.StrategyCheckpointPart.objects.filter(search=search, key__in=gone).delete()
    search.checkpoint_at = timezone.now()
    return {key: digest for key, (_, digest) in new.items()}


def payload(search_id: int) -> dict | None:
    """The stored checkpoint as one payload (None: never saved), its envelope checked."""
    parts = dict(m.StrategyCheckpointPart.objects.filter(search_id=search_id).values_list("key", "data"))
    if not parts:
        return None
    where = f"checkpoint of search {search_id}"
    if ENVELOPE not in parts:
        raise StrategyError("checkpoint", f"{where}: its envelope is missing")
    envelope = check_envelope(from_bytes(parts.pop(ENVELOPE), where), where)
    for key, data in parts.items():
        envelope["state"][key.removeprefix(STATE)] = from_bytes(data, f"{where}, {key}")
    return envelope


def load(search: m.Search, spec: SearchSpec | None = None) -> Strategy:
    """The strategy as last saved, or a new one from the spec when the search has none."""
    spec = spec or search.parsed_spec
    strategy = spec.make_strategy()
    stored = payload(search.id) if search.checkpoint_at is not None else None
    if stored is not None:
        restore_into(strategy, stored)
    return strategy
