"""One remediation's timeline, from its events (oldest first): the tree by `parent_event_id`, the
time between steps, where each event sits on the time axis, and the services involved.

Pure: the correlation page queries, this shapes. Parent links come from producers, so they may
point outside the correlation, at nothing, or round in a cycle; every event still appears once.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# Nesting deeper than this is drawn at this depth (the depth itself is still shown).
MAX_DRAWN_DEPTH = 12


@dataclass(frozen=True)
class Step:
    event: dict
    depth: int
    since_previous: timedelta | None  # after the event before it in time
    since_parent: timedelta | None  # after its parent, when the parent is in this timeline
    position: float  # 0 (the first event) to 1 (the last) on the time axis
    lane: int  # the service's row on the axis

    @property
    def drawn_depth(self) -> int:
        return min(self.depth, MAX_DRAWN_DEPTH)


@dataclass(frozen=True)
class Timeline:
    steps: list[Step]  # in tree order: each event followed by its children, oldest first
    services: list[tuple[str, int]]  # (service_name, events), in order of first appearance
    outcomes: dict[str, int]
    first: datetime | None = None
    last: datetime | None = None
    axis_ticks: list[tuple[float, datetime]] = field(default_factory=list)

    @property
    def span(self) -> timedelta | None:
        return None if self.first is None or self.last is None else self.last - self.first


def build_timeline(events: list[dict], ticks: int = 5) -> Timeline:
    """`events` in time order (event_timestamp, event_id)."""
    if not events:
        return Timeline([], [], {})
    first, last = events[0]["event_timestamp"], events[-1]["event_timestamp"]
    span = (last - first).total_seconds()
    services = Counter(e["service_name"] for e in events)
    lanes = {name: lane for lane, name in enumerate(services)}  # Counter keeps first-seen order
    previous = {e["event_id"]: events[n - 1] if n else None for n, e in enumerate(events)}
    by_id = {e["event_id"]: e for e in events}

    def step(event: dict, depth: int) -> Step:
        before = previous[event["event_id"]]
        parent = by_id.get(event["parent_event_id"])
        at = event["event_timestamp"]
        return Step(
            event=event,
            depth=depth,
            since_previous=None if before is None else at - before["event_timestamp"],
            since_parent=None if parent is None or parent is event else at - parent["event_timestamp"],
            position=(at - first).total_seconds() / span if span > 0 else 0.0,
            lane=lanes[event["service_name"]],
        )

    return Timeline(
        steps=[step(event, depth) for event, depth in tree_order(events)],
        services=list(services.items()),
        outcomes=dict(Counter(e["event_outcome"] for e in events)),
        first=first,
        last=last,
        axis_ticks=[(n / (ticks - 1), first + (last - first) * n / (ticks - 1)) for n in range(ticks)]
        if span > 0
        else [(0.0, first)],
    )


def tree_order(events: list[dict]) -> list[tuple[dict, int]]:
    """(event, depth) depth-first from the roots (events whose parent is not in the list), children
    in time order. Events in a cycle of parents have no root above them: the oldest of what is left
    starts a tree of its own, until every event is placed once."""
    ids = {e["event_id"] for e in events}
    children: dict[object, list[dict]] = {}
    for event in events:
        parent = event["parent_event_id"]
        if parent in ids and parent != event["event_id"]:
            children.setdefault(parent, []).append(event)
    ordered: list[tuple[dict, int]] = []
    placed: set = set()

    def walk(root: dict) -> None:
        stack = [(root, 0)]
        while stack:  # a loop, not recursion: a chain of a thousand parents is no problem
            event, depth = stack.pop()
            if event["event_id"] in placed:
                continue
            placed.add(event["event_id"])
            ordered.append((event, depth))
            stack.extend((child, depth + 1) for child in reversed(children.get(event["event_id"], [])))

    for event in events:
        parent = event["parent_event_id"]
        if parent not in ids or parent == event["event_id"]:
            walk(event)
    for event in events:
        if event["event_id"] not in placed:
            walk(event)
    return ordered
