"""Victim choice: OPT from a scripted trace, LRU, and the Belady replay."""

from __future__ import annotations

import itertools

from ptrain.hetmem.eviction import AccessEvent, belady_traffic, order_victims
from ptrain.hetmem.tracer import MemoryTrace


def _trace(accesses: list[list[str]]) -> MemoryTrace:
    trace = MemoryTrace(nonmodel=[0] * len(accesses), accesses=accesses)
    trace.finalize()
    return trace


def test_patrickstar_two_chunk_case() -> None:
    # chunk 0 used at moment 0, chunk 1 at moment 1 (PatrickStar's unit test)
    trace = _trace([["c0"], ["c1"]])
    pick = lambda moment: order_victims(  # noqa: E731
        ["c0", "c1"], "opt", lambda c: trace.next_use(c, moment), lambda c: 0
    )[0]
    assert pick(0) == "c0"  # c0 is next needed in the next iteration, c1 at moment 1
    assert pick(1) == "c1"


def test_opt_evicts_furthest_next_use_and_lru_the_oldest() -> None:
    trace = _trace([["a"], ["b"], ["c"], ["d"], ["b"], ["a"], ["c"]])
    last = {"a": 0, "b": 1, "c": 2}
    opt = order_victims(["a", "b", "c"], "opt", lambda c: trace.next_use(c, 3), last.__getitem__)
    assert opt == ["c", "a", "b"]  # next uses: b at 4, a at 5, c at 6
    lru = order_victims(["a", "b", "c"], "lru", lambda c: trace.next_use(c, 3), last.__getitem__)
    assert lru == ["a", "b", "c"]


def _brute_force_misses(sequence: list[str], capacity: int) -> int:
    """Fewest misses over every eviction choice (tiny inputs only)."""
    best = None

    def walk(position: int, cache: frozenset[str], misses: int) -> None:
        nonlocal best
        if best is not None and misses >= best:
            return
        if position == len(sequence):
            best = misses
            return
        item = sequence[position]
        if item in cache:
            walk(position + 1, cache, misses)
            return
        if len(cache) < capacity:
            walk(position + 1, cache | {item}, misses + 1)
            return
        for victim in cache:
            walk(position + 1, (cache - {victim}) | {item}, misses + 1)

    walk(0, frozenset(), 0)
    assert best is not None
    return best


def test_belady_replay_is_optimal_on_small_uniform_traces() -> None:
    sequences = [list("abcabdacbd"), list("abcdabcdbd"), list("aabcbcadda")]
    for sequence, capacity in itertools.product(sequences, (2, 3)):
        misses = _brute_force_misses(sequence, capacity)
        evictions = max(0, misses - capacity)
        budgets = [capacity] * len(sequence)
        # every access writes: one cycle from an empty cache moves misses (in) + evictions (out)
        written = [
            AccessEvent(i, kind, label, 1)
            for i, label in enumerate(sequence)
            for kind in ("fast", "write")
        ]
        assert belady_traffic(written, budgets, set(), cycles=1) == misses + evictions
        # read-only accesses: evicting a clean chunk is free, only the misses move bytes
        read = [AccessEvent(i, "fast", label, 1) for i, label in enumerate(sequence)]
        assert belady_traffic(read, budgets, set(), cycles=1) == misses
