"""The module dependency graph: checks, start order and who depends on whom. Pure functions.

A graph is `{module: [modules it depends on]}`. Errors are ValueErrors whose text names the
problem the way a person fixes it: the unknown dependency and who asked for it, or the cycle
as `a -> b -> c -> a`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["check", "dependencies", "dependents", "find_cycle", "start_layers", "start_order", "stop_order"]

Graph = Mapping[str, Sequence[str]]


def check(graph: Graph) -> None:
    """Raise ValueError for an unknown dependency or a cycle."""
    for name in sorted(graph):
        for dep in graph[name]:
            if dep not in graph:
                known = ", ".join(sorted(graph)) or "none"
                raise ValueError(f"module {name!r} depends on unknown module {dep!r} (modules: {known})")
            if dep == name:
                raise ValueError(f"dependency cycle: {name} -> {name}")
    cycle = find_cycle(graph)
    if cycle:
        raise ValueError(f"dependency cycle: {' -> '.join(cycle)}")


def find_cycle(graph: Graph) -> list[str]:
    """One cycle as a path that ends where it starts (`[a, b, a]`), or [] when there is none."""
    visiting: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> list[str]:
        if name in done:
            return []
        if name in on_path:
            return [*visiting[visiting.index(name) :], name]
        visiting.append(name)
        on_path.add(name)
        for dep in graph.get(name, ()):
            found = visit(dep)
            if found:
                return found
        visiting.pop()
        on_path.discard(name)
        done.add(name)
        return []

    for name in sorted(graph):
        found = visit(name)
        if found:
            return found
    return []


def start_layers(graph: Graph) -> list[list[str]]:
    """Modules grouped by depth: a layer holds the modules whose dependencies are all in earlier
    layers, so each layer may start in parallel once the one before it is up."""
    check(graph)
    layers: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(graph):
        layer = sorted(n for n, deps in graph.items() if n not in placed and set(deps) <= placed)
        layers.append(layer)
        placed.update(layer)
    return layers


def start_order(graph: Graph) -> list[str]:
    return [name for layer in start_layers(graph) for name in layer]


def stop_order(graph: Graph, started: Sequence[str] = ()) -> list[str]:
    """Dependents before what they depend on. Among modules free to stop, the one that started
    last goes first (`started`: names in the order they came up), so a system stops in exactly
    the reverse of its start order. Modules not in `started` (not up, or adopted) go as early
    as the graph lets them, in reverse start_order, so they hold nothing up."""
    fallback = list(reversed(start_order(graph)))
    rank = {name: i for i, name in enumerate(started)}
    position = {name: i for i, name in enumerate(fallback)}
    remaining_dependents = {name: 0 for name in graph}
    for deps in graph.values():
        for dep in deps:
            remaining_dependents[dep] += 1
    order: list[str] = []
    free = [name for name, count in remaining_dependents.items() if count == 0]
    while free:
        free.sort(key=lambda n: (-rank.get(n, len(rank)), position[n]))
        name = free.pop(0)
        order.append(name)
        for dep in graph[name]:
            remaining_dependents[dep] -= 1
            if remaining_dependents[dep] == 0:
                free.append(dep)
    return order


def dependents(graph: Graph, name: str) -> list[str]:
    """Every module that needs `name`, directly or through others, in the order to stop them
    (a module before what it depends on)."""
    needed_by: set[str] = set()
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for other, deps in graph.items():
            if current in deps and other not in needed_by:
                needed_by.add(other)
                frontier.append(other)
    return [n for n in stop_order(graph) if n in needed_by]


def dependencies(graph: Graph, name: str) -> list[str]:
    """Every module `name` needs, directly or through others, in start order."""
    needs: set[str] = set()
    frontier = list(graph.get(name, ()))
    while frontier:
        current = frontier.pop()
        if current not in needs:
            needs.add(current)
            frontier.extend(graph.get(current, ()))
    return [n for n in start_order(graph) if n in needs]
