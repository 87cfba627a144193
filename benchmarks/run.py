"""`make bench`: every figure of issue #12, each as one JSON line beside its bare baseline, then a table.

    make bench                      full scale: 100,000 queues (600,000 steps), 500 active (2,000 running Jobs)
    make bench ARGS="--quick"       2,000 queues, 100 active: a few minutes, for development
    make bench ARGS="--only reconcile_pass,launch"    figures whose name contains one of these
    make bench ARGS="--queues 20000 --fresh"          another scale; --fresh reloads the history

JSON lines go to stdout, progress notes (prefixed `#`) to stderr.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class Context:
    kube: object
    arango: object
    quick: bool
    only: list[str]
    scale_label: str
    running_jobs: int
    budget_s: float
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:5])

    def wants(self, figure: str) -> bool:
        return not self.only or any(part in figure for part in self.only)


def _args(argv):
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small scale (2,000 queues) for development")
    parser.add_argument("--queues", type=int, help="history size (default 100,000; 2,000 with --quick)")
    parser.add_argument("--active", type=int, help="running queues of the history (default 500; 100 with --quick)")
    parser.add_argument("--only", default="", help="comma-separated parts of figure names to run")
    parser.add_argument("--fresh", action="store_true", help="start from an empty database (reload the history)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _args(argv)
    # SIGTERM (a `kill`, a CI timeout) cleans up like Ctrl-C: the servers and emulators stop with the run.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from benchmarks import harness

    queues = args.queues or (2_000 if args.quick else 100_000)
    active = min(args.active or (100 if args.quick else 500), queues)
    started = time.monotonic()
    with harness.environment(fresh=args.fresh) as (kube, arango):
        from benchmarks import dataset

        loaded = dataset.ensure(dataset.Scale(queues=queues, active=active,
                                              telemetry_queues=min(dataset.Scale.telemetry_queues, queues)),
                                log=harness.log)
        dataset.remove_bench_queues()
        harness.emit("dataset_load", value=loaded.seconds, unit="s", baseline="none", baseline_value=None,
                     scale=f"{loaded.queues} queues, {loaded.steps} steps, {loaded.edges} edges, {loaded.events} events",
                     target="well under a minute (COPY)", meets=loaded.seconds < 60, reused=loaded.reused,
                     by_status=loaded.by_status)
        ctx = Context(kube=kube, arango=arango, quick=args.quick, only=[p for p in args.only.split(",") if p],
                      scale_label=f"{loaded.queues} queues / {loaded.steps} steps", running_jobs=active * 4,
                      budget_s=8.0 if args.quick else 20.0)
        from benchmarks import figures_http, figures_launch, figures_reconcile, mirror_lag, telemetry_ingest

        for module in (figures_http, figures_launch, figures_reconcile, telemetry_ingest, mirror_lag):
            name = module.__name__.rsplit(".", 1)[-1]
            harness.log(f"{name} ...")
            try:
                module.run(ctx)
            except Exception as exc:  # one broken figure must not hide the others
                harness.log(f"{name} failed: {type(exc).__name__}: {exc}")
                harness.emit(name, value=None, unit="", baseline="", baseline_value=None, scale=ctx.scale_label,
                             target="", meets=False, error=f"{type(exc).__name__}: {exc}"[:500])
    harness.log(f"all figures in {time.monotonic() - started:.0f} s")
    print(harness.summary_table(harness.RESULTS), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
