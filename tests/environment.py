"""Environment of the test process; each value may be overridden from the real environment."""
import os

TEST_ENV = {
    "DJANGO_SETTINGS_MODULE": "queuemanager.settings",
    "SECRET_KEY": "test-secret-key-not-for-production-0123456789abcdef",
    "DEBUG": "0",
    "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "SECURE_SSL_REDIRECT": "0",
    "STATIC_MANIFEST": "0",
    "LOG_FORMAT": "text",
    "TELEMETRY_TOKEN": "test-telemetry-token",
    "STOP_GRACE_SECONDS": "3",
    "DRAIN_IDLE_SECONDS": "5",
    "RECONCILE_INTERVAL_SECONDS": "1",
    "LAUNCH_RETRY_BACKOFF_SECONDS": "0.2",
    # Probes and scrapes answer fresh in tests; tests/ops/test_probe_cache.py switches the cache on.
    "OPS_CACHE_SECONDS": "0",
}


def apply_test_env() -> None:
    for key, value in TEST_ENV.items():
        os.environ.setdefault(key, value)
