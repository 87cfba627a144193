"""Both seed pipelines mirrored: documents equal PostgreSQL, lineage answers the two README queries."""
import pytest

from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from queues.models import QueueRequest, StepState, TelemetryEvent
from jobs.services import queue_refresh_status
from jobs.submission import queue_create

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db

# The two README queries (written in the emulator's AQL subset; they run unchanged on ArangoDB).
# collection <-step_writes- step <-queue_steps- queue; `symbol` is only on queue vertices (depth 2 also
# reaches the collections the writing step reads).
WHO_WROTE = "FOR v IN 2..2 INBOUND @collection GRAPH 'lineage' FILTER v.symbol != null RETURN DISTINCT v.queue_id"
# Everything upstream of a model: steps and data collections; `target` is only on step vertices.
WHAT_FEEDS = "FOR v IN 1..10 INBOUND @model GRAPH 'lineage' FILTER v.name != null AND v.target == null " \
             "RETURN DISTINCT v.name"


def run_pipeline(queue, *, finish=True):
    """Drive the steps the way the scheduler and telemetry would: launch, run, report, succeed."""
    for step in queue.steps.all():
        step.transition(StepState.LAUNCHING, from_states=[StepState.WAITING])
        step.transition(StepState.RUNNING, from_states=[StepState.LAUNCHING])
        QueueRequest.objects.filter(pk=step.pk).update(records_written=100 + step.position)
        TelemetryEvent.objects.create(queue=queue, step=step, event_key=f"{queue.queue_id}-{step.position}-progress",
                                      status="progress", producer=step.telemetry_id, records_written=100 + step.position,
                                      payload={"status": "progress", "records_written": 100 + step.position})
        if finish:
            step.refresh_from_db()
            step.transition(StepState.SUCCEEDED, from_states=[StepState.RUNNING], message="done")
    queue_refresh_status(queue=queue)


def test_it_mirrors_both_seed_pipelines_with_their_lineage(mirror, historical_payload, realtime_payload):
    historical, _ = queue_create(payload=historical_payload, queue_id="hist-btc-2024-06")
    realtime, _ = queue_create(payload=realtime_payload, queue_id="rt-btc-2024-08-01")
    run_pipeline(historical)
    run_pipeline(realtime, finish=False)

    result = mirror_drain()

    assert result.failed == 0 and result.synced > 0
    assert not MirrorOutbox.objects.exists()
    docs = assert_mirror_matches_postgres(mirror)
    assert docs["queues"]["hist-btc-2024-06"]["status"] == "succeeded"
    assert docs["queues"]["rt-btc-2024-08-01"]["status"] == "running"
    assert len(docs["steps"]) == 6 + 7 and len(docs["telemetry"]) == 13

    writes = {(e["_from"].split("/", 1)[1], e["collection"]) for e in docs["step_writes"].values()}
    reads = {(e["collection"], e["_to"].split("/", 1)[1]) for e in docs["step_reads"].values()}
    hist = {s.target + ":" + s.type: f"hist-btc-2024-06__{s.name}" for s in historical.steps.all()}
    rt = {s.target + ":" + s.type: f"rt-btc-2024-08-01__{s.name}" for s in realtime.steps.all()}
    assert {
        (hist["arango-connector:api_candles_5m"], "btc_candles_5m_2024_06"),
        (hist["arango-connector:api_trades"], "btc_trades_2024_06"),
        (hist["graph-builder:gnn_graph"], "btc_graph_2024_06"),
        (hist["gnn-trainer:gnn_train"], "gnn_model_btc_2024_06"),
        (rt["arango-connector:ws_candles_1m"], "btc_ws_candles_1m_2024_08_01"),
        (rt["arango-connector:ws_trades"], "btc_ws_trades_2024_08_01"),
        (rt["graph-builder:realtime_graph"], "btc_graph_rt_2024_08_01"),
    } == writes
    assert {
        ("btc_candles_5m_2024_06", hist["graph-builder:gnn_graph"]),
        ("btc_trades_2024_06", hist["graph-builder:gnn_graph"]),
        ("btc_graph_2024_06", hist["gnn-trainer:gnn_train"]),
        ("btc_ws_candles_1m_2024_08_01", rt["graph-builder:realtime_graph"]),
        ("btc_ws_trades_2024_08_01", rt["graph-builder:realtime_graph"]),
        ("btc_graph_rt_2024_08_01", rt["gnn-trainer:realtime_gnn_infer"]),
        ("btc_graph_rt_2024_08_01", rt["visualizer:graph_metrics_stream"]),
    } == reads
    # One shared vertex per data collection.
    assert set(docs["collections"]) == {c for _, c in writes} | {c for c, _ in reads}

    # README query 1: which queues wrote btc_candles_5m_2024_06 (collection <- step <- queue).
    assert mirror.query(WHO_WROTE, collection="collections/btc_candles_5m_2024_06") == ["hist-btc-2024-06"]
    assert mirror.query(WHO_WROTE, collection="collections/btc_graph_2024_06") == ["hist-btc-2024-06"]
    # README query 2: what feeds this model (everything upstream: steps and the collections they read).
    feeds = mirror.query(WHAT_FEEDS, model="collections/gnn_model_btc_2024_06")
    assert set(feeds) == {"btc_graph_2024_06", "btc_candles_5m_2024_06", "btc_trades_2024_06"}
