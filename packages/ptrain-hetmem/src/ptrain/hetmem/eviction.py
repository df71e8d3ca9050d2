"""Victim selection (OPT/Belady from the trace, LRU) and an offline Belady replay.

``belady_traffic`` replays a recorded steady-state event list on the fast tier with the same
per-moment chunk budget the engine had, evicting the chunk whose next fast-tier use is furthest
away (ties: a clean one first); it counts bytes moved in and out with the engine's cost model:
allocation of a released chunk and a release are free, and so is evicting a *clean* chunk (one
brought in from the slower tier and not written since, whose copy there is still valid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["AccessEvent", "belady_traffic", "order_victims"]


def order_victims(
    candidates: Sequence[str],
    policy: str,
    next_use: Callable[[str], int],
    last_access: Callable[[str], int],
    cost: Callable[[str], int] | None = None,
) -> list[str]:
    """Candidates in eviction order: OPT = furthest next use first (ties: the cheaper eviction
    by ``cost``, then label order), LRU = least recently accessed first."""
    if policy == "opt":
        price = cost or (lambda _c: 0)
        return sorted(candidates, key=lambda c: (-next_use(c), price(c), c))
    return sorted(candidates, key=lambda c: (last_access(c), c))


@dataclass(frozen=True)
class AccessEvent:
    """One event of a recorded iteration.

    ``kind``: ``"fast"`` (the chunk must be on the fast tier), ``"slow"`` (it must be off it),
    ``"alloc"`` (a released chunk is created on the fast tier), ``"release"`` (payload freed),
    ``"write"`` (the fast-tier payload is written: its copy below goes stale).
    """

    moment: int
    kind: str
    label: str
    nbytes: int


def belady_traffic(
    events: Sequence[AccessEvent],
    budgets: Sequence[int],
    initial_fast: set[str],
    initial_clean: set[str] | None = None,
    cycles: int = 3,
) -> int:
    """Bytes moved between the fast tier and the next one in the last of ``cycles`` replays of
    ``events`` (a cyclic iteration), evicting by furthest next ``fast`` use.

    Args:
        events: one iteration's events in order; moments index ``budgets``.
        budgets: chunk bytes the fast tier may hold at each moment.
        initial_fast: labels on the fast tier when the first replay starts.
        initial_clean: those of them whose copy below is valid (default: none).
        cycles: replays; the traffic of the last one is returned.
    """
    sizes = {e.label: e.nbytes for e in events}
    n = len(events)
    fast_uses: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        if e.kind in ("fast", "alloc"):
            fast_uses.setdefault(e.label, []).append(i)

    def next_fast(label: str, position: int) -> int:
        uses = fast_uses.get(label, [])
        for u in uses:
            if u > position:
                return u
        return n + uses[0] if uses else 3 * n

    fast = set(initial_fast)
    clean = set(initial_clean or ()) & fast
    released: set[str] = set()

    def out_cost(label: str) -> int:
        return 0 if label in clean else sizes[label]

    traffic = 0
    for _cycle in range(cycles):
        traffic = 0
        current_moment = -1
        in_moment: set[str] = set()
        for i, e in enumerate(events):
            if e.moment != current_moment:
                current_moment = e.moment
                in_moment = set()
            if e.kind == "release":
                fast.discard(e.label)
                clean.discard(e.label)
                released.add(e.label)
                continue
            if e.kind == "write":
                clean.discard(e.label)
                continue
            if e.kind == "slow":
                if e.label in fast:
                    fast.discard(e.label)
                    traffic += out_cost(e.label)
                    clean.discard(e.label)
                continue
            if e.label not in fast:
                if e.label not in released and e.kind != "alloc":
                    traffic += e.nbytes
                    clean.add(e.label)
                released.discard(e.label)
                fast.add(e.label)
            in_moment.add(e.label)
            budget = budgets[e.moment] if e.moment < len(budgets) else budgets[-1]
            used = sum(sizes[c] for c in fast)
            if used > budget:
                victims = sorted(
                    (c for c in fast if c not in in_moment),
                    key=lambda c: (-next_fast(c, i), out_cost(c), c),
                )
                for victim in victims:
                    if used <= budget:
                        break
                    fast.discard(victim)
                    used -= sizes[victim]
                    traffic += out_cost(victim)
                    clean.discard(victim)
    return traffic
