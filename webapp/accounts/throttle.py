"""Login throttling glue for django-axes (settings: "login throttling" in webapp/settings.py).

Axes counts failed logins per (username, client address) and refuses the pair once
NAS_LOGIN_FAILURE_LIMIT is reached, for NAS_LOGIN_COOLOFF_MINUTES. This module tells it
which address a request came from behind the TLS proxy, and answers a refused login.
"""

from __future__ import annotations

import ipaddress
import math

from axes.helpers import get_cool_off
from django.conf import settings
from django.shortcuts import render


def client_ip_behind_proxy(request) -> str | None:
    """The right-most X-Forwarded-For entry: the address the proxy itself saw and appended
    (nginx's $proxy_add_x_forwarded_for; Caddy replaces the header with it). Entries to its
    left come from the client and are not believed, or a new fake address per try would
    escape the count. Not an address (a port appended, a garbled header, none at all): the
    peer's address, so the request is still counted, with everyone's behind that peer."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return request.META.get("REMOTE_ADDR")


def lockout_response(request, original_response=None, credentials=None):
    """The page for a refused login: 429, how long to wait, and Retry-After. Axes calls this
    with (request, response, credentials), or with shifted arguments on its async path: none
    of them is needed here."""
    seconds = int(get_cool_off(request).total_seconds())
    context = {"minutes": math.ceil(seconds / 60), "failure_limit": settings.AXES_FAILURE_LIMIT}
    response = render(request, "registration/locked_out.html", context, status=429)
    # Every refused try restarts the wait (axes' AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT),
    # so the whole cool-off is what is left from now.
    response["Retry-After"] = str(seconds)
    return response
