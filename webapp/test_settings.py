"""Settings for the test suite: the real PostgreSQL and Redis of the machine.

Tests must talk to the services the product uses, so the default here is PostgreSQL
(trust auth on localhost, database `test`; pytest-django creates `test_test`).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")

from webapp.settings import *  # noqa: E402,F403

# Tests create many users; full-strength password hashing would cost seconds per test.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
