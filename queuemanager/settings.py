"""Settings for the StreamForge Queue Manager.

Everything an operator may change comes from the environment (or an optional `.env` beside
manage.py); `.env.example` documents every variable. Integrations switch on by their settings:
Kafka when KAFKA_BOOTSTRAP_SERVERS is set, the ArangoDB mirror when ARANGO_URL is set.
"""
from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from queuemanager.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
    env_url,
    load_dotenv_file,
    load_local_run_env,
)

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv_file(BASE_DIR / ".env")
# manage.py beside a running `make run` (never with DATABASE_URL set, i.e. never deployed or in tests).
load_local_run_env(BASE_DIR / ".data" / "local.env")

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-local-development-key-only-used-with-DEBUG=1"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not ALLOWED_HOSTS and not DEBUG:
    # Django would answer every request 400 (DisallowedHost): fail at start-up instead, naming the fix.
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off (comma-separated host names)")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "console.apps.ConsoleAdminConfig",  # django.contrib.admin with the console's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "queues",
    "jobs",
    "mirror",
    "kafkabus",
    "consumers",
    "console",
]
# The dev tools (manage.py simulate_worker) where they exist: a clone, never the image (.dockerignore).
if (BASE_DIR / "devtools" / "apps.py").exists():
    INSTALLED_APPS.append("devtools")

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "queuemanager.urls"
WSGI_APPLICATION = "queuemanager.wsgi.application"
ASGI_APPLICATION = "queuemanager.asgi.application"

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

_database_url = env_str("DATABASE_URL")
if not _database_url:
    raise ImproperlyConfigured(
        "DATABASE_URL must be set (postgresql://user:password@host:5432/dbname); "
        "`make run` and `make test` start an embedded PostgreSQL and set it for you"
    )
DATABASES = {"default": database_from_url("DATABASE_URL", _database_url)}
DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
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
FORMAT_MODULE_PATH = ["queuemanager.formats"]  # one time format with seconds and zone (console)

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("STATIC_MANIFEST", not DEBUG)  # needs `collectstatic`, as the image runs
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (production defaults; `manage.py check --deploy` passes with DEBUG off) ---
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- REST API ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so unauthenticated requests get 401 with `WWW-Authenticate: Token`.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50, minimum=1),
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
}
# The most rows one API list page may hold (`?page_size=`); larger requests get this many.
API_MAX_PAGE_SIZE = env_int("API_MAX_PAGE_SIZE", 500, minimum=1)
SPECTACULAR_SETTINGS = {
    "TITLE": "StreamForge Queue Manager API",
    "DESCRIPTION": (
        "Start, stop and monitor StreamForge pipelines (queues). A queue is one pipeline run made of "
        "steps; each step runs as one Kubernetes Job. Authenticate with a session (log in to the admin) "
        "or with `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # `<word>` in a description would be eaten as HTML by ReDoc and Swagger UI (issue #15 §9).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.escape_markup_in_descriptions"],
}

# --- Celery (Redis broker) ---
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", REDIS_URL, schemes=("redis", "rediss", "unix"))

# --- Sessions: Redis first, PostgreSQL on a miss or a Redis error (queuemanager/sessions.py) ---
SESSION_CACHE_URL = env_url("SESSION_CACHE_URL", schemes=("redis", "rediss", "unix")) or REDIS_URL
# How long a session may be served from Redis without reading PostgreSQL (bounds a logout missed by an outage).
SESSION_CACHE_SECONDS = env_int("SESSION_CACHE_SECONDS", 60, minimum=0)
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},  # Django's default, unchanged
    "sessions": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": SESSION_CACHE_URL,
        "KEY_PREFIX": "qm",
        # An unreachable Redis must cost a request little: it then falls back to the database.
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    },
}
if SESSION_CACHE_URL and SESSION_CACHE_SECONDS:
    SESSION_ENGINE = "queuemanager.sessions"
    SESSION_CACHE_ALIAS = "sessions"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 60, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 90, minimum=1)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
RECONCILE_INTERVAL_SECONDS = env_float("RECONCILE_INTERVAL_SECONDS", 5.0, minimum=0.5)
CELERY_BEAT_SCHEDULE = {
    # Level-triggered: compares every launched step with what the launcher sees, whatever events were lost.
    "reconcile": {
        "task": "jobs.tasks.reconcile_task",
        "schedule": RECONCILE_INTERVAL_SECONDS,
        "options": {"expires": RECONCILE_INTERVAL_SECONDS * 2},
    },
}

# --- Pipeline behaviour (DESIGN §5) ---
JOB_LAUNCHER = env_choice("JOB_LAUNCHER", "local", ("local", "kubernetes"))
STOP_GRACE_SECONDS = env_float("STOP_GRACE_SECONDS", 30.0, minimum=0)
DRAIN_IDLE_SECONDS = env_float("DRAIN_IDLE_SECONDS", 30.0, minimum=0)
FAILURE_POLICY = env_choice("FAILURE_POLICY", "stop_queue", ("stop_queue", "continue"))
LAUNCH_MAX_ATTEMPTS = env_int("LAUNCH_MAX_ATTEMPTS", 5, minimum=1)
LAUNCH_RETRY_BACKOFF_SECONDS = env_float("LAUNCH_RETRY_BACKOFF_SECONDS", 2.0, minimum=0)
# A step still `launching` after this long (its task lost with a killed worker) is launched again.
LAUNCH_STUCK_SECONDS = env_float("LAUNCH_STUCK_SECONDS", 30.0, minimum=1)
# Payloads with more steps are refused (400): validation and graph cost grow with the step count.
MAX_STEPS_PER_QUEUE = env_int("MAX_STEPS_PER_QUEUE", 100, minimum=1)
STEP_LOG_TAIL_BYTES = env_int("STEP_LOG_TAIL_BYTES", 64 * 1024, minimum=1024)
LOCAL_LAUNCHER_DIR = Path(env_str("LOCAL_LAUNCHER_DIR", str(BASE_DIR / ".data" / "steps")))
# How simulated workers reach the manager when Kafka is off (POST /api/telemetry/).
MANAGER_BASE_URL = env_url("MANAGER_BASE_URL", "http://127.0.0.1:8000", schemes=("http", "https"))
TELEMETRY_TOKEN = env_str("TELEMETRY_TOKEN")
# The console links to Flower when set (make run: its local Flower).
FLOWER_URL = env_url("FLOWER_URL", "http://127.0.0.1:5555/" if DEBUG else "", schemes=("http", "https"))
# Each step run reports with its own credential (jobs/credentials.py), an HMAC made with this key
# (empty: derived from SECRET_KEY with a salt of its own). The shared TELEMETRY_TOKEN lets its
# holder report for any step, so it is accepted only when switched on for legacy workers.
TELEMETRY_SIGNING_KEY = env_str("TELEMETRY_SIGNING_KEY")
TELEMETRY_SHARED_TOKEN_ALLOWED = env_bool("TELEMETRY_SHARED_TOKEN_ALLOWED", False)

# --- Kubernetes ---
K8S_NAMESPACE = env_str("K8S_NAMESPACE", "streamforge")
KUBECONFIG = env_path("KUBECONFIG")
K8S_API_URL = env_url("K8S_API_URL", schemes=("http", "https"))
K8S_API_TOKEN = env_str("K8S_API_TOKEN")
# CA bundle that verifies K8S_API_URL (default: the service account's CA when running in a pod).
K8S_API_CA_CERT = env_path("K8S_API_CA_CERT")
K8S_CREDENTIALS_SECRET = env_str("K8S_CREDENTIALS_SECRET", "streamforge-credentials")
K8S_CA_CONFIGMAP = env_str("K8S_CA_CONFIGMAP")
K8S_IMAGE_REGISTRY = env_str("K8S_IMAGE_REGISTRY", "registry.local/streamforge")
K8S_IMAGE_TAG = env_str("K8S_IMAGE_TAG", "latest")
# Registries (host or host/path prefixes) a request's `image` may name; others need the permission
# queues.override_image, because a step's container receives the platform's credentials.
ALLOWED_IMAGE_REGISTRIES = env_list("ALLOWED_IMAGE_REGISTRIES") or [K8S_IMAGE_REGISTRY]  # empty: the default
K8S_DELETE_ORPHANS = env_bool("K8S_DELETE_ORPHANS", False)
K8S_MANAGER_ID = env_str("K8S_MANAGER_ID", "queue-manager")
# Steps of one batch (a queue's steps ready together) launched at once by one worker process.
K8S_LAUNCH_CONCURRENCY = env_int("K8S_LAUNCH_CONCURRENCY", 3, minimum=1)
# The workload watcher (manage.py watch_workloads): each watch request lasts at most this long, the
# cache is relisted this often anyway, and its heartbeat counts for this long (the beat's reconcile
# lists the cluster itself when no heartbeat is fresh); a watch silent for K8S_WATCH_IDLE_SECONDS
# (possibly half-open) is ended and watched again.
K8S_WATCH_TIMEOUT_SECONDS = env_int("K8S_WATCH_TIMEOUT_SECONDS", 300, minimum=1)
K8S_RELIST_SECONDS = env_float("K8S_RELIST_SECONDS", 600.0, minimum=1.0)
K8S_WATCH_HEALTHY_SECONDS = env_float("K8S_WATCH_HEALTHY_SECONDS", 15.0, minimum=1.0)
K8S_WATCH_IDLE_SECONDS = env_float("K8S_WATCH_IDLE_SECONDS", 60.0, minimum=1.0)

# --- Kafka (on when KAFKA_BOOTSTRAP_SERVERS is set) ---
KAFKA_BOOTSTRAP_SERVERS = env_str("KAFKA_BOOTSTRAP_SERVERS")
KAFKA_USER = env_str("KAFKA_USER")
KAFKA_PASSWORD = env_str("KAFKA_PASSWORD")
CA_PATH = env_path("CA_PATH")
QUEUE_CONTROL_TOPIC = env_str("QUEUE_CONTROL_TOPIC", "queue-control")
QUEUE_EVENTS_TOPIC = env_str("QUEUE_EVENTS_TOPIC", "queue-events")
QUEUE_CONTROL_DLQ_TOPIC = env_str("QUEUE_CONTROL_DLQ_TOPIC", f"{QUEUE_CONTROL_TOPIC}-dlq")
QUEUE_EVENTS_DLQ_TOPIC = env_str("QUEUE_EVENTS_DLQ_TOPIC", f"{QUEUE_EVENTS_TOPIC}-dlq")
KAFKA_CONSUMER_GROUP = env_str("KAFKA_CONSUMER_GROUP", "queue-manager")
KAFKA_ENABLED = bool(KAFKA_BOOTSTRAP_SERVERS)
if KAFKA_USER and not KAFKA_PASSWORD:
    raise ImproperlyConfigured("KAFKA_PASSWORD must be set when KAFKA_USER is set")
# Consumer tuning (kafkabus): small timeouts make a consumer join its group in seconds (tests, local).
KAFKA_SESSION_TIMEOUT_MS = env_int("KAFKA_SESSION_TIMEOUT_MS", 45000, minimum=1000)
KAFKA_MAX_POLL_INTERVAL_MS = env_int("KAFKA_MAX_POLL_INTERVAL_MS", 300000, minimum=1000)
KAFKA_BATCH_SIZE = env_int("KAFKA_BATCH_SIZE", 5000, minimum=1)
KAFKA_DELIVERY_TIMEOUT_SECONDS = env_float("KAFKA_DELIVERY_TIMEOUT_SECONDS", 10.0, minimum=1)
KAFKA_LAG_LOG_SECONDS = env_float("KAFKA_LAG_LOG_SECONDS", 30.0, minimum=1)

# --- ArangoDB mirror (on when ARANGO_URL is set) ---
ARANGO_URL = env_url("ARANGO_URL", schemes=("http", "https"))
ARANGO_DB = env_str("ARANGO_DB", "streamforge")
ARANGO_USER = env_str("ARANGO_USER", "root")
ARANGO_PASSWORD = env_str("ARANGO_PASSWORD")
ARANGO_ENABLED = bool(ARANGO_URL)
# Mirror drain (mirror app): beat runs it periodically so a backlog left by an outage drains
# even when nothing changes; each change also enqueues it on commit.
MIRROR_SYNC_INTERVAL_SECONDS = env_float("MIRROR_SYNC_INTERVAL_SECONDS", 30.0, minimum=1)
MIRROR_BATCH_SIZE = env_int("MIRROR_BATCH_SIZE", 500, minimum=1)
if ARANGO_ENABLED:
    CELERY_BEAT_SCHEDULE["mirror-sync"] = {
        "task": "mirror.tasks.mirror_drain_task",
        "schedule": MIRROR_SYNC_INTERVAL_SECONDS,
        "options": {"expires": MIRROR_SYNC_INTERVAL_SECONDS * 2},
    }

# --- Logging: JSON in production, readable locally ---
LOG_FORMAT = env_choice("LOG_FORMAT", "text" if DEBUG else "json", ("text", "json"))
LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Operations (ops/, issue #7): probes, metrics, log context and redaction ---
INSTALLED_APPS += ["ops"]
# Probes and scrapes are answered before host validation and the SSL redirect (see ops/middleware.py).
MIDDLEWARE.insert(
    MIDDLEWARE.index("django_prometheus.middleware.PrometheusBeforeMiddleware") + 1, "ops.middleware.ProbeMiddleware"
)
LOGGING["filters"] = {
    "log_context": {"()": "ops.logging.ContextFilter"},
    "redact_secrets": {"()": "ops.logging.RedactingFilter"},
}
LOGGING["handlers"]["console"]["filters"] = ["log_context", "redact_secrets"]
LOGGING["formatters"]["text"]["()"] = "ops.logging.ContextTextFormatter"
# Keep Django's LOGGING (JSON, filters) in Celery processes instead of Celery's own handlers.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# /metrics' database-backed state and /health/ready's checks are computed at most once per this many
# seconds per process (they answer anonymous requests); 0 computes them per request.
OPS_CACHE_SECONDS = env_float("OPS_CACHE_SECONDS", 5.0, minimum=0)

# --- Retention (ops/retention.py): beat prunes old telemetry events and processed commands in batches,
# keeping every row of a queue that is not finished. 0 days keeps that table's history forever.
TELEMETRY_RETENTION_DAYS = env_int("TELEMETRY_RETENTION_DAYS", 30, minimum=0)
COMMAND_RETENTION_DAYS = env_int("COMMAND_RETENTION_DAYS", 30, minimum=0)
RETENTION_BATCH_SIZE = env_int("RETENTION_BATCH_SIZE", 5000, minimum=1)
RETENTION_INTERVAL_SECONDS = env_float("RETENTION_INTERVAL_SECONDS", 600.0, minimum=60)
CELERY_BEAT_SCHEDULE["prune-history"] = {
    "task": "ops.tasks.prune_history",
    "schedule": RETENTION_INTERVAL_SECONDS,
    "options": {"expires": RETENTION_INTERVAL_SECONDS},
}
