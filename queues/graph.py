"""Dependency inference between the steps of one pipeline (DESIGN §5 rules 1–3).

1. Same topic: a producer (loader) waits until the consumer (connector) of its topic is *ready*.
2. Data: a reader waits for the writer of its collection: *success* if the writer is batch,
   *ready* if it is streaming.
3. `depends_on` adds explicit edges with the same kind rule. Inputs nobody writes are warnings.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from queues import catalogue


class StepSpec(Protocol):
    """What the graph reads of a step (contract.StepSpec has it), so graph needs no contract import."""

    index: int
    name: str
    type: str
    streaming: bool
    kafka_topic: str | None
    depends_on: list[str]

    @property
    def target_spec(self) -> catalogue.Target: ...

    def reads(self) -> list[str]: ...

    def writes(self) -> list[str]: ...


READY = "ready"
SUCCESS = "success"


@dataclass
class Edge:
    upstream: int  # step index
    downstream: int
    kind: str  # READY or SUCCESS
    reasons: list[str]


def infer_edges(steps: list[StepSpec], key: str = "requests", *, unparsed_names=frozenset()
                ) -> tuple[list[Edge], list[str], list[tuple[str, str]]]:
    """Return (edges, warnings, problems); a problem is (field path, message) and makes the payload invalid.

    `steps` may be the requests that parsed, not all of them (their `index` keeps its place in the
    payload); a `depends_on` naming one of `unparsed_names` (a request that failed on its own) is
    skipped, not reported as unknown: that request already has its error.
    """
    edges: dict[tuple[int, int], Edge] = {}
    warnings: list[str] = []
    problems: list[tuple[str, str]] = []

    def add(upstream: StepSpec, downstream: StepSpec, kind: str, reason: str) -> None:
        edge = edges.get((upstream.index, downstream.index))
        if edge is None:
            edges[(upstream.index, downstream.index)] = Edge(upstream.index, downstream.index, kind, [reason])
        else:
            if kind == SUCCESS:
                edge.kind = SUCCESS
            if reason not in edge.reasons:
                edge.reasons.append(reason)

    def upstream_kind(upstream: StepSpec) -> str:
        return READY if upstream.streaming else SUCCESS

    # Rule 1: group topic users by topic key (an explicit topic, else the shared default of the type).
    by_topic: dict[str, dict[str, list[StepSpec]]] = defaultdict(lambda: defaultdict(list))
    for step in steps:
        role = step.target_spec.topic_role
        if role:
            by_topic[step.kafka_topic or f"type:{step.type}"][role].append(step)
    for topic, roles in by_topic.items():
        for producer in roles.get("producer", []):
            for consumer in roles.get("consumer", []):
                add(consumer, producer, READY, f"topic {topic.removeprefix('type:')}")

    # Rule 2: collections.
    writers: dict[str, list[StepSpec]] = defaultdict(list)
    for step in steps:
        for collection in step.writes():
            writers[collection].append(step)
    for step in steps:
        for collection in step.reads():
            sources = [w for w in writers.get(collection, []) if w.index != step.index]
            if not sources:
                warnings.append(
                    f"{key}[{step.index}] ({step.name}) reads {collection!r}, which no step of this queue "
                    f"writes; it is assumed to exist already."
                )
            for writer in sources:
                add(writer, step, upstream_kind(writer), f"collection {collection}")

    # Rule 3: explicit edges.
    by_name = {step.name: step for step in steps}
    for step in steps:
        for name in step.depends_on:
            upstream = by_name.get(name)
            if upstream is None and name in unparsed_names:
                continue
            if upstream is None:
                problems.append((f"{key}[{step.index}].depends_on", f"No step named {name!r} in this queue."))
            elif upstream.index == step.index:
                problems.append((f"{key}[{step.index}].depends_on", "A step cannot depend on itself."))
            else:
                add(upstream, step, upstream_kind(upstream), "depends_on")

    # Checked whatever else is wrong: edges to unknown steps were never added, so a cycle found is real.
    by_index = {step.index: step for step in steps}
    cycle = find_cycle(max(by_index, default=-1) + 1, edges.values())
    if cycle:
        names = " → ".join(by_index[i].name for i in cycle)
        problems.append((key, f"Dependency cycle: {names}."))
    return sorted(edges.values(), key=lambda e: (e.downstream, e.upstream)), warnings, problems


def find_cycle(count: int, edges) -> list[int] | None:
    """A cycle as a list of indexes (first repeated at the end), or None.

    Depth-first with an explicit stack, not recursion: a long dependency chain must not reach
    Python's recursion limit (a RecursionError was a 500), whatever MAX_STEPS_PER_QUEUE allows.
    """
    children: dict[int, list[int]] = defaultdict(list)
    for edge in edges:
        children[edge.upstream].append(edge.downstream)
    state = [0] * count  # 0 new, 1 on the current path, 2 done
    for root in range(count):
        if state[root]:
            continue
        path: list[int] = [root]
        pending = [iter(children[root])]  # the children still to visit, per node on the path
        state[root] = 1
        while pending:
            child = next(pending[-1], None)
            if child is None:
                state[path.pop()] = 2
                pending.pop()
            elif state[child] == 1:
                return path[path.index(child):] + [child]
            elif state[child] == 0:
                state[child] = 1
                path.append(child)
                pending.append(iter(children[child]))
    return None


def topological_order(count: int, edges) -> list[int]:
    """Indexes in an order where every upstream precedes its downstreams (stable by index).

    Kahn's algorithm with a heap: O(E log N) and no recursion, whatever the chain length.
    """
    children: dict[int, set[int]] = defaultdict(set)
    waiting_on = [0] * count
    for edge in edges:
        if edge.downstream not in children[edge.upstream]:
            children[edge.upstream].add(edge.downstream)
            waiting_on[edge.downstream] += 1
    ready = [i for i in range(count) if waiting_on[i] == 0]
    heapq.heapify(ready)
    done: list[int] = []
    while ready:
        node = heapq.heappop(ready)
        done.append(node)
        for child in children[node]:
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                heapq.heappush(ready, child)
    if len(done) < count:  # a cycle; validation prevents this
        done += [i for i in range(count) if waiting_on[i] > 0]
    return done
