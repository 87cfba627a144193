#!/bin/sh
# One image, every role: the first argument chooses what this container runs.
#   web | worker | beat | consume-queue-control | consume-queue-events | watch-workloads | flower | migrate
#   metrics (exporter for the pod's multiprocess metrics) | manage <args> | healthcheck
set -eu

role="${1:-web}"
[ "$#" -gt 0 ] && shift

# Each process of a pod writes its metrics here (see ops/metrics.py); stale files from a previous
# run of this container would be summed with the new ones, so the main roles start clean.
prepare_metrics_dir() {
    if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
        mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
        find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -type f -delete
    fi
}

# Tells the image HEALTHCHECK which role runs here.
mark_role() {
    printf '%s\n' "$role" > "${TMPDIR:-/tmp}/streamforge-role"
}

case "$role" in
    web)
        prepare_metrics_dir; mark_role
        exec gunicorn queuemanager.wsgi:application -c python:ops.gunicorn_config "$@"
        ;;
    worker)
        prepare_metrics_dir; mark_role
        exec celery -A queuemanager worker --loglevel "${CELERY_LOG_LEVEL:-info}" \
            --concurrency "${CELERY_CONCURRENCY:-2}" "$@"
        ;;
    beat)
        prepare_metrics_dir; mark_role
        exec celery -A queuemanager beat --loglevel "${CELERY_LOG_LEVEL:-info}" \
            --schedule "${TMPDIR:-/tmp}/celerybeat-schedule" "$@"
        ;;
    consume-queue-control)
        prepare_metrics_dir; mark_role
        exec python manage.py consume_queue_control "$@"
        ;;
    consume-queue-events)
        prepare_metrics_dir; mark_role
        exec python manage.py consume_queue_events "$@"
        ;;
    watch-workloads)
        prepare_metrics_dir; mark_role
        exec python manage.py watch_workloads "$@"
        ;;
    flower)
        mark_role
        exec celery -A queuemanager flower --port="${FLOWER_PORT:-5555}" "$@"
        ;;
    migrate)
        exec python manage.py migrate --noinput "$@"
        ;;
    metrics)
        exec python -m ops.metrics_server
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    healthcheck)
        exec python -m ops.healthcheck
        ;;
    *)
        echo "unknown role: $role (web, worker, beat, consume-queue-control, consume-queue-events, watch-workloads, flower, migrate, metrics, manage, healthcheck)" >&2
        exit 64
        ;;
esac
