"""Where requests wait, who goes first and who may wait at all (clients/fairness.py):
tables of waiting requests and the order, or the choice, a user would expect."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from supervisor.clients.fairness import Asker, eta, make_room, order, share


@dataclass(frozen=True)
class W:
    asker: Asker
    since: float
    tag: str


def waiting(*specs: str) -> list[W]:
    """'client:priority@since' each (priority and since optional), tagged client+n."""
    out, seen = [], {}
    for i, spec in enumerate(specs):
        who, _, at = spec.partition("@")
        name, _, priority = who.partition(":")
        bound = None
        if "~" in name:
            name, bound_text = name.split("~")
            bound = float(bound_text)
        seen[name] = seen.get(name, 0) + 1
        out.append(W(Asker(name, int(priority or 0), bound), float(at or i),
                     f"{name}{seen[name]}"))
    return out


@pytest.mark.parametrize(("queue", "now", "served"), [
    # One client: arrival order.
    (["a", "a", "a"], 10, "a1 a2 a3"),
    # Higher priority first, whatever came first.
    (["a", "a", "b:5", "a"], 10, "b1 a1 a2 a3"),
    (["a:-1", "b", "c:2"], 10, "c1 b1 a1"),
    # Within a priority, clients take turns in the order of their oldest request.
    (["a", "a", "a", "a", "b", "b"], 10, "a1 b1 a2 b2 a3 a4"),
    (["a", "a", "b", "c", "a", "c"], 10, "a1 b1 c1 a2 c2 a3"),
    # Turns inside each priority band, bands by priority.
    (["a", "a", "b", "x:1", "x:1", "y:1"], 10, "x1 y1 x2 a1 b1 a2"),
    # Starvation bound: past max_wait, before every priority; the starved oldest first.
    (["low~5@0", "hi:9@1", "hi:9@2"], 4.9, "hi1 hi2 low1"),
    (["low~5@0", "hi:9@1", "hi:9@2"], 5.0, "low1 hi1 hi2"),
    (["a~5@0", "b~3@1", "hi:9@2"], 4.5, "b1 hi1 a1"),
    (["a~5@0", "b~3@1", "hi:9@2"], 6, "a1 b1 hi1"),
    # No bound: waits behind higher priorities however long.
    (["low@0", "hi:1@999"], 10_000, "hi1 low1"),
    ([], 0, ""),
])
def test_order(queue: list[str], now: float, served: str) -> None:
    assert " ".join(w.tag for w in order(waiting(*queue), now)) == served


def test_a_flood_cannot_keep_a_quiet_client_behind_it() -> None:
    queue = waiting(*["flood"] * 200, *["quiet"] * 10)
    served = [w.asker.client for w in order(queue, 1000)]
    # The quiet one's 10 are among the first 20 served.
    assert served[:20] == ["flood", "quiet"] * 10


@pytest.mark.parametrize(("queue", "newcomer", "limit", "displaced"), [
    # A client under its share takes the place of the newest of the fattest client.
    (["a", "a", "a", "a"], "b", 4, "a4"),
    (["a", "a", "b", "b"], "c", 4, "a2"),  # equally fat: the first one (oldest) loses its newest
    (["a", "a", "a", "b"], "b", 4, "a3"),  # share 2: b holds 1
    # At or over its share: refused (None).
    (["a", "a", "b", "b"], "b", 4, None),
    (["a", "a", "a", "a"], "a", 4, None),
    (["a", "b", "c"], "d", 3, None),  # share 3 // 4 -> 1, every holder at it
    # Equally fat: the lower priority gives way.
    (["hi:5", "hi:5", "lo", "lo"], "c", 4, "lo2"),
    # Nothing is held when max_held is 0.
    ([], "a", 0, None),
])
def test_make_room(queue: list[str], newcomer: str, limit: int, displaced: str | None) -> None:
    found = make_room(waiting(*queue), Asker(newcomer), limit)
    assert (found.tag if found else None) == displaced


def test_a_flooder_keeps_no_more_than_its_share_of_a_full_hold() -> None:
    """200 from a flood then 10 quiet, max_held 50: all 10 quiet ones get a place."""
    held: list[W] = []
    refused = {"flood": 0, "quiet": 0}
    for i, name in enumerate(["flood"] * 200 + ["quiet"] * 10):
        me = W(Asker(name), float(i), f"{name}{i}")
        if len(held) < 50:
            held.append(me)
            continue
        out = make_room(held, me.asker, 50)
        if out is None:
            refused[name] += 1
        else:
            held.remove(out)
            held.append(me)
    assert refused == {"flood": 150, "quiet": 0}
    assert sum(w.asker.client == "quiet" for w in held) == 10
    assert share(held, Asker("other"), 50) == 16


@pytest.mark.parametrize(("expected", "elapsed", "left"), [
    (6.0, 0.0, 6.0), (6.0, 4.5, 1.5), (6.0, 9.0, 0.0), (None, 3.0, None)])
def test_eta(expected: float | None, elapsed: float, left: float | None) -> None:
    assert eta(expected, elapsed) == left
