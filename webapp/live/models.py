"""The stored live events of a search: the truth a reconnecting client catches up from.

`seq` is dense and consecutive per search (1, 2, 3, ...): it is allocated from
`SearchEventCounter` inside the transaction that writes the events, so a rolled-back
transaction gives its numbers back, and the counter row stays locked until commit, so
the events of one search commit in `seq` order. The counter is a table of its own (not a
column on Search) because the advance (workers/advance.py) saves whole Search rows it loaded earlier.
"""

from __future__ import annotations

from django.db import models

from webapp.searches.models import Search


class SearchEvent(models.Model):
    search = models.ForeignKey(Search, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveBigIntegerField()
    type = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["search", "seq"]
        constraints = [models.UniqueConstraint(fields=["search", "seq"], name="one_event_per_seq")]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} of search {self.search_id}"

    def message(self) -> dict:
        """The event as sent to clients: the envelope (seq, type, search_id) and the payload
        (webapp.live.events), whose keys ("search", "run", ...) never collide with it."""
        return {"seq": self.seq, "type": self.type, "search_id": self.search_id, **self.payload}


class SearchEventCounter(models.Model):
    """The last `seq` given out per search."""

    search = models.OneToOneField(Search, on_delete=models.CASCADE, primary_key=True, related_name="+")
    last_seq = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"search {self.search_id}: {self.last_seq} events"
