"""GET /healthz: is this web process able to serve? For load balancers and docker healthchecks.

Checks what a page needs: the database answers a query, and the broker (where searches are
queued) accepts a connection. 200 {"database": "ok", "broker": "ok"} or 503 naming what
failed. No login, no session, nothing about any team: it reveals only that the services are up.
"""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from webapp import dispatch

log = logging.getLogger("nasnet.health")
BROKER_TIMEOUT = 3.0  # seconds


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _broker() -> str:
    dispatch.ping_broker(BROKER_TIMEOUT)
    return "ok"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    report, healthy = {}, True
    for name, probe in (("database", _database), ("broker", _broker)):
        try:
            report[name] = probe()
        except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said in one line
            healthy = False
            report[name] = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("health check: %s unavailable: %s", name, report[name])
    return JsonResponse(report, status=200 if healthy else 503)
