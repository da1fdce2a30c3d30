"""The event relay: live events across processes without Redis (local mode).

Workers store every live event as a `SearchEvent` row (webapp.live.events.publish_many,
in the transaction that caused it) and then send it through the channel layer. With
Redis that layer is shared by every process. Local mode has no Redis, and an in-memory
layer lives inside one process: what a worker sends never reaches the web server.

So with NAS_CHANNEL_LAYER=relay (the local-mode default when REDIS_URL is not set) the
web server relays the rows instead: while at least one websocket watches a search, one
asyncio task in the server's loop reads the search's new rows (`seq` greater than the
last one relayed) every NAS_EVENT_RELAY_INTERVAL seconds and group_sends them exactly as
events.send would, as one "live.events" message to the group `search-<id>`. The
consumer is the production one: it dedups by seq and fills gaps from the rows.

Polling by per-search `seq` never skips an event: a search's counter row stays locked
until the transaction that allocated the numbers commits, so its events become visible
in seq order (on SQLite every write transaction is serialized anyway).

`RelayChannelLayer` is the in-memory layer with one difference: it drops "live.events"
messages that do not come from the relay. Workers send into their own, empty layer (a
no-op), and events published by the web process itself (a cancel from a page) arrive
through the relay like every other, once and in order.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer
from django.conf import settings
from django.db.models import Q

from webapp.live.events import group_name, last_stored_seq
from webapp.live.models import SearchEvent

log = logging.getLogger("nasnet.live")

RELAYED = "relayed"  # marks the messages the relay sends
BATCH = 1000  # rows read per poll at most; the rest comes on the next poll


last_seq = database_sync_to_async(last_stored_seq)


@database_sync_to_async
def new_events(after: dict[int, int]) -> dict[int, list[dict]]:
    """The stored events with seq > after[search], per search, in seq order."""
    if not after:
        return {}
    where = Q()
    for search_id, seq in after.items():
        where |= Q(search_id=search_id, seq__gt=seq)
    out: dict[int, list[dict]] = {}
    for row in SearchEvent.objects.filter(where).order_by("search_id", "seq")[:BATCH]:
        out.setdefault(row.search_id, []).append(row.message())
    return out


class Relay:
    """Polls the rows of the watched searches and sends them to the layer's groups."""

    def __init__(self, layer: InMemoryChannelLayer, interval: float):
        self.layer = layer
        self.interval = interval
        self.watchers: dict[int, int] = {}  # search id -> websockets watching it
        self.last: dict[int, int] = {}  # search id -> last seq relayed
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def watch(self, search_id: int) -> None:
        if search_id not in self.last:
            # From now on: a client catches up on older events from the rows itself.
            seq = await last_seq(search_id)
            self.last.setdefault(search_id, seq)
        self.watchers[search_id] = self.watchers.get(search_id, 0) + 1
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.loop is not loop:
            self.loop = loop
            self.task = loop.create_task(self.run(), name="live-events-relay")

    def unwatch(self, search_id: int) -> None:
        left = self.watchers.get(search_id, 0) - 1
        if left > 0:
            self.watchers[search_id] = left
        else:
            self.watchers.pop(search_id, None)
            self.last.pop(search_id, None)

    async def run(self) -> None:
        """Until nobody watches (the next watch starts it again)."""
        while self.watchers:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a locked database or the like: try again next poll
                log.warning("event relay: poll failed", exc_info=True)
            await asyncio.sleep(self.interval)

    async def poll(self) -> int:
        """Relay what is new; returns how many events were sent."""
        sent = 0
        for search_id, messages in (await new_events(dict(self.last))).items():
            if search_id not in self.last:  # nobody watches it any more
                continue
            messages = [m for m in messages if m["seq"] > self.last[search_id]]
            if not messages:
                continue
            self.last[search_id] = messages[-1]["seq"]
            message = {"type": "live.events", "events": messages, RELAYED: True}
            await InMemoryChannelLayer.group_send(self.layer, group_name(search_id), message)
            sent += len(messages)
        return sent


class RelayChannelLayer(InMemoryChannelLayer):
    """The in-memory layer whose live events come only from its relay (see above)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relay = Relay(self, getattr(settings, "NAS_EVENT_RELAY_INTERVAL", 0.25))

    async def group_send(self, group, message):
        if isinstance(message, dict) and message.get("type") == "live.events" and not message.get(RELAYED):
            return  # sent from this process's own publish: the relay sends it from the rows
        await super().group_send(group, message)

    async def watch(self, search_id: int) -> None:
        await self.relay.watch(search_id)

    def unwatch(self, search_id: int) -> None:
        self.relay.unwatch(search_id)
