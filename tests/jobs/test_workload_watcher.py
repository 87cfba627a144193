"""Issue #12 (reconcile at 10,000 Jobs): the workload watcher — list once, then watch; the beat's pass
leaves the cluster to a healthy watcher and lists it itself when there is none.

The watcher's watch threads run against the emulator; its main thread's rounds (`watcher.step()`) run
in the test's thread, so they see the test's database transaction (the sweep too: `background_sweep`
off; a background sweep's thread would have a connection of its own). No change may be lost: one during
the list, a 410, a dropped connection, a watcher that dies.
"""
from __future__ import annotations

import uuid

import pytest

from jobs import k8s_heartbeat, launching, scheduler
from jobs.k8s_informer import CachedObserver, Informer
from jobs.k8s_watch import WorkloadWatcher
from jobs.launchers import _build as build_launcher
from jobs.launchers import get_launcher
from queues.models import QueueRequest, StepState
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def watch_settings(settings, k8s_settings, emulator, kube):
    settings.JOB_LAUNCHER = "kubernetes"
    token = kube.manager_client.configuration.api_key["authorization"]
    settings.K8S_API_URL, settings.K8S_API_TOKEN, settings.KUBECONFIG = emulator.url, token, None
    settings.KAFKA_ENABLED = False
    # A heartbeat of its own: tests elsewhere (and other runs on this Redis) must never see this one.
    settings.K8S_MANAGER_ID = f"watch-test-{uuid.uuid4().hex[:8]}"
    settings.K8S_WATCH_HEALTHY_SECONDS = 2.0
    settings.LAUNCH_RETRY_BACKOFF_SECONDS = 0.5
    build_launcher.cache_clear()
    yield settings
    k8s_heartbeat.clear()
    build_launcher.cache_clear()


@pytest.fixture
def running_queue(watch_settings, historical_queue, controller):
    """A queue whose ready steps are launched (pending, their Jobs created)."""
    scheduler.queue_advance(historical_queue.pk)
    for pk in historical_queue.steps.filter(state=StepState.LAUNCHING).values_list("pk", flat=True):
        assert launching.step_launch(pk) == "launched"
    assert historical_queue.steps.filter(state=StepState.PENDING).exists()
    return historical_queue


@pytest.fixture
def watcher(watch_settings):
    w = WorkloadWatcher(background_sweep=False)
    w.start()
    yield w
    w.stop()


def launched(queue):
    return list(queue.steps.filter(state__in=StepState.LAUNCHED).exclude(state=StepState.LAUNCHING))


def step_until(watcher, condition):
    """Run the watcher's main-thread rounds until `condition()` holds."""
    def round_():
        watcher.step()
        return condition()
    wait_until(round_, timeout=20)


def lists(emulator):
    """The full lists of this manager's Jobs and pods (not a step's pods read for its log)."""
    return [r for r in emulator.requests if r[0] == "GET" and r[1].endswith(("/jobs", "/pods"))
            and not r[2].get("watch") and "managed-by" in r[2].get("labelSelector", "")]


def test_a_job_change_reaches_its_step_by_the_watch_without_listing_again(running_queue, controller, emulator, watcher):
    """Issue #12 "list once, then watch from the list's resourceVersion": after the first lists, a Job
    becoming running and then succeeding moves its step by watch events alone (no list request)."""
    step_until(watcher, watcher.healthy)
    listed = len(lists(emulator))
    step = launched(running_queue)[0]
    controller.mark_running(step.job_name)
    step_until(watcher, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING)
    controller.mark_succeeded(step.job_name)
    step_until(watcher, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.SUCCEEDED)
    assert len(lists(emulator)) == listed
    assert watcher.stats["events"] >= 2


def test_the_beat_pass_leaves_the_cluster_to_a_healthy_watcher_and_lists_when_it_is_gone(
        running_queue, controller, emulator, watch_settings):
    """Issue #12 "fall back to today's full relist pass when no healthy watcher" and "a watcher killed
    (the beat falls back)": with a fresh heartbeat the pass makes no list request; once the watcher
    dies without a word (its heartbeat expires) the pass lists and observes every step again — and
    applies a change the dead watcher never saw."""
    before = len(lists(emulator))
    assert "watcher" not in scheduler.reconcile()  # no watcher yet: the pass as it always was
    assert len(lists(emulator)) == before + 2
    watcher = WorkloadWatcher(background_sweep=False)
    watcher.start()
    step_until(watcher, lambda: k8s_heartbeat.healthy_watcher() is not None)
    before = len(lists(emulator))
    summary = scheduler.reconcile()
    assert summary["watcher"]["versions"].keys() == {"jobs", "pods"} and summary["observed"] == 0
    assert len(lists(emulator)) == before

    watcher.stopping.set()  # killed: no more rounds, the heartbeat is not cleared but expires
    step = launched(running_queue)[0]
    controller.mark_running(step.job_name)
    wait_until(lambda: k8s_heartbeat.healthy_watcher() is None, timeout=10)
    summary = scheduler.reconcile()
    assert "watcher" not in summary and summary["observed"] == len(launched(running_queue))
    assert QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING


def test_a_change_made_while_the_list_is_read_is_not_lost(running_queue, controller, watch_settings, monkeypatch):
    """Issue #12 "a change during the relist": a Job changes after the list was read but before the
    watch starts; the watch from the list's resourceVersion delivers it."""
    launcher = get_launcher("kubernetes")
    step = launched(running_queue)[0]
    real = launcher.list_labelled_versioned
    changed = []

    def list_then_change(kind, selector=None):
        result = real(kind, selector)
        if kind == "jobs" and not changed:
            controller.mark_running(step.job_name)
            changed.append(True)
        return result

    monkeypatch.setattr(launcher, "list_labelled_versioned", list_then_change)
    w = WorkloadWatcher(launcher, background_sweep=False)
    w.start()
    try:
        step_until(w, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING)
    finally:
        w.stop()


def test_a_410_lists_again_and_loses_nothing(running_queue, controller, emulator, watcher):
    """Issue #12 "on 410 relist": the watch's resourceVersion is compacted away while its connection is
    down; the watch gets ERROR 410 Expired, lists again, and the change made meanwhile reaches its step."""
    step_until(watcher, watcher.healthy)
    listed = len(lists(emulator))
    step = launched(running_queue)[0]
    emulator.drop_watches()
    controller.mark_running(step.job_name)
    emulator.compact_watch_history()
    step_until(watcher, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING)
    assert watcher.stats["expired"] >= 1 and len(lists(emulator)) > listed


def test_a_dropped_watch_continues_from_its_last_version(running_queue, controller, emulator, watcher):
    """Issue #12 "a dropped watch connection (watch restarts from the last resourceVersion)": no list
    again, the next watch asks for the version the broken one had reached, and the change made while
    it was down arrives."""
    from tests.ops.test_metrics import value

    step_until(watcher, watcher.healthy)
    listed = len(lists(emulator))
    at = watcher.informer.versions["jobs"]
    def broken_watches():
        return sum(value("streamforge_workload_watch_total", kind=kind, outcome="broken") for kind in ("jobs", "pods"))

    broken = broken_watches()
    emulator.drop_watches()
    step = launched(running_queue)[0]
    controller.mark_running(step.job_name)
    step_until(watcher, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING)
    assert len(lists(emulator)) == listed and watcher.stats["broken"] >= 1
    assert broken_watches() > broken  # counted for ops/metrics
    resumed = [r[2] for r in emulator.requests if r[2].get("watch") and r[1].endswith("/jobs")]
    assert any(q.get("resourceVersion") == at for q in resumed[1:])


def test_a_job_the_cache_lacks_is_read_before_its_step_counts_as_lost(running_queue, controller, watch_settings):
    """Issue #12 (nothing lost): a step launched a moment ago may be in the database before its Job's
    ADDED event is in the cache; the cached observer reads that Job before calling it missing."""
    informer = Informer()
    informer.replace("jobs", [], "1")
    informer.replace("pods", [], "1")
    steps = launched(running_queue)
    observer = CachedObserver(informer, get_launcher("kubernetes"), handle_orphans=False)
    observations = observer.observe_many(steps)
    assert {o.phase for o in observations.values()} == {"pending"} and observer.live_reads == len(steps)
    scheduler.reconcile_workloads(observer=observer, job_names=[s.job_name for s in steps])
    assert all(s.state == StepState.PENDING for s in launched(running_queue))


def test_the_watcher_lists_again_every_relist_period(running_queue, controller, emulator, watch_settings):
    """Issue #12 "periodic full relist as a safety net": with K8S_RELIST_SECONDS elapsed, each watch ends
    and its kind is listed again (the resync), and the watcher stays healthy throughout."""
    watch_settings.K8S_RELIST_SECONDS = 1.0
    w = WorkloadWatcher(background_sweep=False)
    w.start()
    try:
        step_until(w, w.healthy)
        listed, counted = len(lists(emulator)), w.stats["lists"]
        # Both counts: the emulator logs a list when it arrives, the watcher counts it once answered, so
        # waiting on the emulator's alone and then reading the watcher's raced a list in flight.
        step_until(w, lambda: len(lists(emulator)) >= listed + 2 and w.stats["lists"] >= max(counted + 2, 4)
                   and w.healthy())
        assert w.stats["expired"] == 0
    finally:
        w.stop()


@pytest.mark.django_db(transaction=True)
def test_the_background_sweep_applies_what_no_event_announces(running_queue, controller, watch_settings):
    """Issue #12 (periodic sweep, on its own thread): a step whose row disagrees with the cache while no
    watch event comes (here: put back to pending by hand after its Job ran) is brought in line by the
    sweep, which runs beside the event path with a database connection of its own."""
    watch_settings.RECONCILE_INTERVAL_SECONDS = 0.5
    w = WorkloadWatcher()  # background_sweep on, as deployed
    w.start()
    try:
        step = launched(running_queue)[0]
        controller.mark_running(step.job_name)
        step_until(w, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING)
        sweeps = w.stats.get("sweeps", 0)
        QueueRequest.objects.filter(pk=step.pk).update(state=StepState.PENDING)
        # Both: the sweep commits the step before it counts itself, so the row could be seen in line while
        # `sweeps` was not yet incremented (a flake under load).
        step_until(w, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING
                   and w.stats["sweeps"] > sweeps)
        assert w._sweeper is not None
    finally:
        w.stop()
        if w._sweeper:
            w._sweeper.join(timeout=10)


def watch_requests(emulator, plural: str) -> list[dict]:
    return [r[2] for r in emulator.requests if r[2].get("watch") and r[1].endswith(f"/{plural}")]


def _silent_watches() -> float:
    from tests.ops.test_metrics import value

    return sum(value("streamforge_workload_watch_total", kind=kind, outcome="silent") for kind in ("jobs", "pods"))


def test_a_half_open_watch_is_ended_and_resumed_from_its_last_version(running_queue, controller, emulator,
                                                                      watch_settings):
    """Issue #12 watcher, case "half-open connection, the server still reachable": every open watch goes
    silent (no bytes, no FIN, no RST) while a Job changes; the watcher ends the silent streams after
    K8S_WATCH_IDLE_SECONDS, watches again from the last resourceVersion delivered (no list), and the change
    reaches its step. Without the bound the stream's read would wait out timeoutSeconds + 30 s."""
    silent = _silent_watches()
    watch_settings.K8S_WATCH_IDLE_SECONDS = 1.0
    w = WorkloadWatcher(background_sweep=False)
    w.start()
    try:
        step_until(w, w.healthy)
        listed, at, watches = len(lists(emulator)), w.informer.versions["jobs"], len(watch_requests(emulator, "jobs"))
        emulator.stall_watches()
        step = launched(running_queue)[0]
        controller.mark_running(step.job_name)  # the stalled stream never delivers this
        step_until(w, lambda: QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING)
        assert w.stats["silent"] >= 1 and len(lists(emulator)) == listed
        assert _silent_watches() > silent  # counted for ops/metrics
        assert watch_requests(emulator, "jobs")[watches].get("resourceVersion") == at
        step_until(w, w.healthy)
    finally:
        w.stop()
        emulator.unstall_watches()


def test_a_watcher_behind_a_silent_network_stops_its_heartbeat_and_the_beat_lists(running_queue, controller,
                                                                                  emulator, watch_settings):
    """Issue #12 watcher, case "half-open connection, the server unreachable": open watches go silent and
    new watch requests get no answer; the watcher is no longer healthy, its heartbeat lapses while it keeps
    running its rounds, and the beat's pass lists the cluster itself (and applies a change the watcher
    missed). When the network is back, the watcher resumes and beats again."""
    watch_settings.K8S_WATCH_IDLE_SECONDS = 1.0
    w = WorkloadWatcher(background_sweep=False)
    w.start()
    try:
        step_until(w, lambda: k8s_heartbeat.healthy_watcher() is not None)
        emulator.stall_watches(new=True)
        step = launched(running_queue)[0]
        controller.mark_running(step.job_name)
        step_until(w, lambda: k8s_heartbeat.healthy_watcher() is None)
        assert not w.healthy()
        summary = scheduler.reconcile()
        assert "watcher" not in summary and QueueRequest.objects.get(pk=step.pk).state == StepState.RUNNING
        emulator.unstall_watches()
        step_until(w, lambda: k8s_heartbeat.healthy_watcher() is not None)
    finally:
        w.stop()
        emulator.unstall_watches()
