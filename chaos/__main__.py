"""`make chaos` / `python -m chaos [--seed N] [--only R3,R7] [--scale F]`: the fault-injection suite.

Starts its own PostgreSQL, Redis and Kafka-protocol broker under `.data/chaos/`, then for each
scenario a system of its own on them (own database, own topics), injects the faults, waits for
quiescence and checks the invariants. Prints one JSON line per scenario, then a table; exits 1 on
any violation. Everything it started is stopped at the end, also on Ctrl-C or an error.
"""
from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import threading
import time
import traceback

from chaos import (scenario_broker, scenario_clients, scenario_fuzz, scenario_hostile, scenario_kube, scenario_mirror,
                   scenario_storm)
from chaos.common import Result, Run
from chaos.harness import LIVE, ROOT, say, start_servers
from devtools.process import one_run_at_a_time

SCENARIOS = {
    "R3": scenario_hostile.run,
    "R7": scenario_clients.run,
    "R1": scenario_storm.run,  # local launcher
    "R1k": scenario_storm.run_kube,  # the same storm on the Kubernetes emulator
    "R2": scenario_broker.run,  # its own tansu, every connection to it cut mid-stream
    "R4": scenario_fuzz.run,
    "R5": scenario_mirror.run,
    "R6": scenario_kube.run,
}


def table(results: list[Result]) -> str:
    rows = ["| scenario | seed | load | faults injected | violations | seconds |", "|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.scenario} | {r.seed} | {r.load} | {'; '.join(r.faults) or '–'} | {len(r.violations)} | "
                    f"{r.seconds:.0f} |")
    return "\n".join(rows)


# Scenarios that mostly wait (an outage, paced traffic, a slow API) rather than load the CPU; `--lanes 2`
# runs them one after another beside the others, each on a system, database, topics and Redis database
# of its own.
WAITING = {"R2", "R5", "R6"}


def _lane(names: list[str], run: Run, done: dict[str, Result]) -> None:
    for name in names:
        started = time.monotonic()
        try:
            result = SCENARIOS[name](run)
        except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a finding, not the end of the suite
            traceback.print_exc()
            result = Result(name, run.seed, violations=[f"scenario crashed: {type(exc).__name__}: {exc}"[:500]],
                            seconds=time.monotonic() - started)
        done[name] = result
        print(result.line(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="reproduce a run (default: a new random seed)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full load (CI uses ~0.02)")
    parser.add_argument("--lanes", type=int, choices=(1, 2), default=2,
                        help=f"2 (default): {', '.join(sorted(WAITING))}, which mostly wait (an outage, paced "
                             "traffic, a slow API), run beside the others; 1: one scenario at a time")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    by_name = {name.upper(): name for name in SCENARIOS}  # `--only r1k` or `--only R1K` picks R1k
    chosen = [by_name.get(s.strip().upper(), s.strip()) for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    base = ROOT / ".data" / "chaos"
    # One run at a time per work tree: a second one would delete the first one's folder under it.
    lock = one_run_at_a_time(base.parent / "chaos.lock", say)  # noqa: F841 - held until the run ends
    shutil.rmtree(base, ignore_errors=True)
    say(f"seed {seed}; scenarios {', '.join(chosen)}; reproduce with: make chaos ARGS=\"--seed {seed} --only ...\"")
    servers = start_servers(base)
    run = Run(seed=seed, scale=args.scale, servers=servers, base=base)
    waiting = [n for n in chosen if n in WAITING] if args.lanes == 2 else []
    lanes = [[n for n in chosen if n not in waiting], waiting]
    done: dict[str, Result] = {}
    side = threading.Thread(target=_lane, args=(lanes[1], run, done), name="lane-2", daemon=True)
    try:
        side.start()
        _lane(lanes[0], run, done)
        side.join()
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        for system in list(LIVE):  # the other lane's too: its scenario then ends and cleans up
            system.stop()
        side.join(timeout=60)
        return 130
    finally:
        for server in reversed(servers.owned):
            server.stop()
    results = [done[name] for name in chosen if name in done]
    print(table(results), flush=True)
    return 1 if any(r.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
