"""Docker healthcheck of the web server: `python docker/healthcheck.py [URL]`, exit 0 when healthy.

GETs /healthz (database and broker reachable; default http://127.0.0.1:8000/healthz) the way a
client behind the TLS proxy would: with a Host header Django accepts (the first entry of
DJANGO_ALLOWED_HOSTS) and `X-Forwarded-Proto: https` (honoured only with
DJANGO_BEHIND_PROXY=1). Healthy: 200, or the redirect to https:// that Django sends when
DJANGO_SECURE_SSL_REDIRECT is on and no proxy is declared. Anything else (400: the Host was
refused, 5xx, no answer in 5 seconds) is unhealthy, with one line saying why.
"""

from __future__ import annotations

import http.client
import os
import sys
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def host_header(allowed_hosts: str | None) -> str:
    """A host Django's ALLOWED_HOSTS accepts: the first listed one ('.example.com' -> 'example.com')."""
    hosts = [h.strip() for h in (allowed_hosts or "").split(",") if h.strip()]
    first = hosts[0] if hosts else "localhost"
    if first == "*":
        return "localhost"
    return first.lstrip(".")


def check(url: str, allowed_hosts: str | None, timeout: float = 5.0) -> tuple[bool, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request(
            "GET",
            parts.path or "/",
            headers={"Host": host_header(allowed_hosts), "X-Forwarded-Proto": "https", "User-Agent": "healthcheck"},
        )
        response = conn.getresponse()
        location = response.getheader("Location") or ""
        response.read()
    except OSError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if response.status == 200:
        return True, f"{url}: 200"
    if response.status in (301, 302, 307, 308) and location.startswith("https://"):
        return True, f"{url}: {response.status} to {location} (HTTPS redirect)"
    return False, f"{url}: HTTP {response.status} {response.reason}"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    ok, line = check(url, os.environ.get("DJANGO_ALLOWED_HOSTS"))
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
