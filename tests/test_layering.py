"""The house reads one way: which app may import which, and no import circles.

Every import counts, also one inside a function (that is how circles used to hide). The map
below is the one the README's *Development* section explains; change both together.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# app -> the apps it may import. Apps not listed here (django, celery, …) are not ours.
ALLOWED = {
    "queues": set(),  # the domain: models, catalogue, contract, names, graph, state rules
    "kafkabus": set(),  # Kafka transport: config, consumer loop, publisher, dead letters
    "jobs": {"queues", "kafkabus"},  # orchestration: services, scheduler, launchers, tasks, telemetry
    "mirror": {"queues", "jobs"},  # listens: ArangoDB mirror
    "consumers": {"queues", "jobs", "kafkabus"},  # entry point: queue-control and queue-events
    "api": {"queues", "jobs"},  # entry point: REST API
    "console": {"queues", "jobs", "api", "mirror"},  # entry point: the admin
    "ops": {"queues", "jobs", "kafkabus", "mirror", "consumers"},  # listens: metrics, health, logging
    "queuemanager": {"queues", "jobs", "kafkabus", "mirror", "consumers", "api", "console", "ops"},
    "devtools": {"queues", "jobs", "kafkabus", "mirror", "consumers", "ops", "queuemanager"},
    "benchmarks": {"queues", "jobs", "kafkabus", "mirror", "consumers", "api", "console", "devtools", "queuemanager"},
    # the fault-injection suite: drives processes; product imports only in chaos/targets.py
    "chaos": {"queues", "jobs", "kafkabus", "mirror", "consumers", "api", "console", "ops", "queuemanager", "devtools"},
}
# Settings name these modules as strings (LOGGING, MIDDLEWARE): configuration, not imports.
PROJECT_WIDE = {"queuemanager.env"}


def _modules() -> dict[str, Path]:
    found = {}
    for app in ALLOWED:
        base = ROOT / app
        for path in base.rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `name` imports anywhere in its body (resolved to the longest known module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
                break
    return targets


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_it_knows_every_top_level_package():
    """A new top-level package gets a place in the map (and the README) before it gets code."""
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert ours <= set(ALLOWED), f"not in the layer map: {sorted(ours - set(ALLOWED))}"


def test_it_keeps_every_app_in_its_room(graph):
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if (src := module.split(".")[0]) != (dst := target.split(".")[0])
        and dst not in ALLOWED[src]
        and target not in PROJECT_WIDE
    )
    assert not wrong, "imports against the layer map:\n" + "\n".join(wrong)


def test_the_domain_imports_no_other_app(graph):
    outside = sorted(
        f"{m} -> {t}" for m, ts in graph.items() if m.split(".")[0] == "queues" for t in ts
        if t.split(".")[0] != "queues"
    )
    assert not outside, "\n".join(outside)


def test_it_has_no_import_circles(graph):
    """Tarjan's strongly connected components over every import, function-level ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0

    for root in graph:  # iterative DFS: (node, iterator over its targets)
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            advanced = False
            for target in targets:
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)
