"""Django settings, all from environment variables with safe defaults for local use.

Local defaults: SQLite in the repository, Redis on localhost, DEBUG on. Production sets
DJANGO_DEBUG=0, DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS, DATABASE_URL (PostgreSQL) and
REDIS_URL; `manage.py check --deploy` is clean with those. See README, "Settings".
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
import plotly
from django.core.exceptions import ImproperlyConfigured

from webapp.env import env_bool, env_dir, env_float, env_int, env_list, env_str, env_url

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", True)
_DEV_KEY = "dev-only-insecure-key-set-DJANGO_SECRET_KEY-in-production-0123456789abcdef"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", _DEV_KEY if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY: required when DJANGO_DEBUG is off")
if not DEBUG and (SECRET_KEY == _DEV_KEY or len(SECRET_KEY) < 50):
    raise ImproperlyConfigured("DJANGO_SECRET_KEY: use a random value of at least 50 characters in production")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first: its runserver serves the ASGI application (websockets included)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",  # login throttling; see "login throttling" below
    "rest_framework",
    "drf_spectacular",
    "webapp.accounts",
    "webapp.searches",
    "webapp.api",
    "webapp.front",
    "channels",
    "webapp.live",
    "webapp.fleet",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (Plotly.js, the style sheet) from the web process itself, compressed and
    # cached: no separate file server needed in the docker deployment.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as its docs ask: it turns a login that axes refused into the lockout response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Local mode (`python3 local.py`, workers/local.py): NAS_LOCAL=1 keeps every piece of state
# (SQLite, beat's schedule, the embedded Valkey server's folder) under NAS_LOCAL_DIR, and
# SQLite there replaces PostgreSQL unless DATABASE_URL is set. Local mode starts its own
# Valkey server and sets REDIS_URL for every process: nothing below differs for it.
NAS_LOCAL = env_bool("NAS_LOCAL", False)
NAS_LOCAL_DIR = env_dir("NAS_LOCAL_DIR", BASE_DIR / ".local")
if NAS_LOCAL:
    NAS_LOCAL_DIR.mkdir(parents=True, exist_ok=True)

_SQLITE_DEFAULT = NAS_LOCAL_DIR / "db.sqlite3" if NAS_LOCAL else BASE_DIR / "db.sqlite3"
DATABASE_URL = env_url("DATABASE_URL", f"sqlite:///{_SQLITE_DEFAULT}", ("sqlite", "postgres", "postgresql", "pgsql"))
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web server, controller, gpu-queue workers) share the file. SQLite
    # ignores SELECT ... FOR UPDATE, so every transaction starts IMMEDIATE: it takes the
    # database's write lock at BEGIN, and the advance's atomic blocks serialize as the
    # row locks serialize them on PostgreSQL. WAL lets readers run beside the one writer;
    # a writer waits up to `timeout` seconds for the lock instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": env_float("NAS_SQLITE_TIMEOUT", 30.0, minimum=1.0),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
# The web server's connections (compose's web service sets DATABASE_POOL_SIZE): a pool of at
# most that many per process, kept open between requests. A connection per request (the
# default, DATABASE_CONN_MAX_AGE=0) costs PostgreSQL about 7 ms of CPU to start a backend and
# fill its catalog caches, as much as a request's own queries, and as many connections as
# requests in flight; persistent connections (CONN_MAX_AGE > 0) leak under ASGI, where every
# request runs in a thread of its own, so a pool is how Django keeps them there. A request
# holds its connection to the end, and a request (or a websocket's query) that finds none free
# waits for one. Not for the Celery workers: a forked pool process must not inherit its
# parent's pool (they keep persistent connections instead).
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 0, minimum=0)
if DATABASE_POOL_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django refuses both at once
    # A pooled connection is checked (one round trip) before each use: one that a PostgreSQL
    # restart closed is replaced rather than failing a request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": 30.0,  # seconds a request waits for a free connection before it fails
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Plotly.js comes from the plotly package's own bundled copy: no CDN, works offline.
# Templates load it as {% static 'vendor/plotly/plotly.min.js' %}.
STATICFILES_DIRS = [("vendor/plotly", Path(plotly.__file__).resolve().parent / "package_data")]
STATIC_ROOT = env_dir("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles")
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# -- login throttling (django-axes) and API tokens -----------------------------------------------
# Axes' backend comes first: it refuses a locked-out (username, address) before the password
# is even checked. Only logins are throttled (the site's and the admin's, both through
# authenticate()); the API's bearer tokens and open sessions never call it.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("NAS_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("NAS_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
# Per (username, address) pair: per username alone would let anyone lock a user out from
# anywhere, per address alone would lock out everyone behind one NAT.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# A 429 page saying how long to wait (webapp/accounts/throttle.py), not axes' bare text.
AXES_LOCKOUT_CALLABLE = "webapp.accounts.throttle.lockout_response"
# Axes' own admin pages offer an action to anyone who may view them; unlock with
# `manage.py axes_reset_username NAME` (or axes_reset_ip, axes_reset) instead.
AXES_ENABLE_ADMIN = False
# Behind a proxy REMOTE_ADDR is the proxy's for every client: take the address the proxy
# appended to X-Forwarded-For instead. Without django-ipware (not installed) axes ignores its
# AXES_IPWARE_* settings and reads REMOTE_ADDR, which is right without a proxy.
AXES_CLIENT_IP_CALLABLE = (
    "webapp.accounts.throttle.client_ip_behind_proxy" if env_bool("DJANGO_BEHIND_PROXY", False) else None
)
# Days an API token is valid from its issue (`issuetoken --days` overrides); 0: never expires.
NAS_API_TOKEN_DAYS = env_int("NAS_API_TOKEN_DAYS", 90, minimum=0)

# -- security (production) ---------------------------------------------------------------------
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_PROXY", False) else None
SECURE_CONTENT_TYPE_NOSNIFF = True
# Load balancers and docker probe /healthz over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
X_FRAME_OPTIONS = "DENY"

# -- the product ---------------------------------------------------------------------------------
# Data sets named in a search spec must resolve inside this folder.
NAS_DATA_ROOT = env_dir("NAS_DATA_ROOT", BASE_DIR / "data")
# Training-job bundles (weights, metrics) are written here.
NAS_ARTIFACTS_ROOT = env_dir("NAS_ARTIFACTS_ROOT", BASE_DIR / "artifacts")
NAS_CACHE_DIR = env_dir("NAS_CACHE_DIR", BASE_DIR / ".cache" / "datasets")
# Per-team quotas: a submission over them is refused with a 4xx.
NAS_MAX_ACTIVE_SEARCHES_PER_TEAM = env_int("NAS_MAX_ACTIVE_SEARCHES_PER_TEAM", 5, minimum=1)
NAS_MAX_CHILDREN_PER_SEARCH = env_int("NAS_MAX_CHILDREN_PER_SEARCH", 20000, minimum=1)
NAS_MAX_PARALLEL_PER_SEARCH = env_int("NAS_MAX_PARALLEL_PER_SEARCH", 64, minimum=1)
# A child run whose worker has not sent a heartbeat for this long is requeued.
# Selections (the paper's top-K stage, and noise floors): per team at a time, and their size.
NAS_MAX_ACTIVE_SELECTIONS_PER_TEAM = env_int("NAS_MAX_ACTIVE_SELECTIONS_PER_TEAM", 3, minimum=1)
NAS_MAX_SELECTION_RUNS = env_int("NAS_MAX_SELECTION_RUNS", 1000, minimum=1)  # top_k x seeds
NAS_MAX_SELECTION_SEEDS = env_int("NAS_MAX_SELECTION_SEEDS", 10, minimum=1)
# What one search child or training job may ask of the shared workers (nas_engine/limits.py:
# N, F, epochs, batch, image size, controller width, and the estimated cost, forward
# mult-adds x training images x epochs, of one child and of one job).
NAS_MAX_REPEATS = env_int("NAS_MAX_REPEATS", 12, minimum=1)
NAS_MAX_FILTERS = env_int("NAS_MAX_FILTERS", 1024, minimum=2)
NAS_MAX_EPOCHS = env_int("NAS_MAX_EPOCHS", 1000, minimum=1)
NAS_MAX_BATCH_SIZE = env_int("NAS_MAX_BATCH_SIZE", 4096, minimum=1)
NAS_MAX_IMAGE_SIZE = env_int("NAS_MAX_IMAGE_SIZE", 512, minimum=8)
NAS_MAX_CONTROLLER_HIDDEN = env_int("NAS_MAX_CONTROLLER_HIDDEN", 512, minimum=1)
NAS_MAX_CHILD_COST = env_float("NAS_MAX_CHILD_COST", 1e15, minimum=1.0)
NAS_MAX_JOB_COST = env_float("NAS_MAX_JOB_COST", 1e19, minimum=1.0)
# Child runs of one team queued or running at once, over all its searches: the gpu queue
# serves first come first, so this is each team's share of it (workers/advance.py).
NAS_MAX_ACTIVE_RUNS_PER_TEAM = env_int("NAS_MAX_ACTIVE_RUNS_PER_TEAM", 64, minimum=1)
# Training jobs of one team queued or running at once (the gpu queue is shared).
NAS_MAX_ACTIVE_JOBS_PER_TEAM = env_int("NAS_MAX_ACTIVE_JOBS_PER_TEAM", 4, minimum=1)
NAS_LEASE_SECONDS = env_float("NAS_LEASE_SECONDS", 120.0, minimum=1.0)
NAS_MAX_ATTEMPTS = env_int("NAS_MAX_ATTEMPTS", 3, minimum=1)
# Early stopping: how long a child run at a rung waits (polling, heartbeating) for a child
# asked before it that is still training, before it gives its worker back and waits as a
# row (`waiting`, resumed from its checkpoint once decided: workers/rungs.py).
NAS_RUNG_WAIT_SECONDS = env_float("NAS_RUNG_WAIT_SECONDS", 60.0, minimum=0.0)
NAS_REAPER_INTERVAL_SECONDS = env_float("NAS_REAPER_INTERVAL_SECONDS", 30.0, minimum=1.0)

# -- Redis: Celery broker and (from the dashboard on) the Channels layer -------------------------
# (local mode: the Valkey server it starts, which speaks the same protocol)
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", ("redis", "rediss"))

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None  # results live in the database, not in Redis
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]  # never pickle
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "controller"
CELERY_TASK_ROUTES = {
    "workers.tasks.train_child": {"queue": "gpu"},
    "workers.tasks.run_training_job": {"queue": "gpu"},
    "workers.tasks.train_selection_run": {"queue": "gpu"},
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)}
CELERY_BEAT_SCHEDULE = {
    "reap": {"task": "workers.tasks.reap", "schedule": NAS_REAPER_INTERVAL_SECONDS},
}
if NAS_LOCAL:
    # beat runs inside the local controller worker and sleeps until its next task: waking
    # every second lets Ctrl-C stop it at once rather than after up to a reaper interval.
    CELERY_BEAT_MAX_LOOP_INTERVAL = 1.0

# Live events (webapp.live): Redis in every real deployment (local mode included: its own
# Valkey server); NAS_CHANNEL_LAYER=memory gives an in-process layer (one process only:
# events published by workers do not reach it).
NAS_CHANNEL_LAYER = env_str("NAS_CHANNEL_LAYER", "redis")
if NAS_CHANNEL_LAYER not in ("redis", "memory"):
    raise ImproperlyConfigured("NAS_CHANNEL_LAYER: 'redis' or 'memory'")
if NAS_CHANNEL_LAYER == "memory":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # socket_timeout None: a consumer's receive blocks in Redis for 5 s at a time, and
            # redis-py's default 5 s read timeout would drop every idle websocket (1011).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "capacity": 1000,
                "expiry": 60,
                "prefix": "nasnet-live",
            },
        }
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "webapp.accounts.auth.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "NASNet Studio API",
    "DESCRIPTION": "Submit and watch neural architecture searches and training jobs.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "nasnet": {"handlers": ["console"], "level": env_str("NAS_LOG_LEVEL", "INFO"), "propagate": False},
    },
}
