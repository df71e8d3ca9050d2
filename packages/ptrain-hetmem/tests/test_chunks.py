"""Chunk layout and the chunk-size search."""

from __future__ import annotations

import pytest

from ptrain.core.models.gpt import GPT, GPTConfig
from ptrain.hetmem import build_layout, module_param_lists, search_chunk_size
from ptrain.hetmem.chunks import ModuleParams


def _lists(*sizes: tuple[int, ...]) -> list[ModuleParams]:
    return [
        ModuleParams(f"m{i}", tuple(f"m{i}.p{j}" for j in range(len(s))), s)
        for i, s in enumerate(sizes)
    ]


def test_module_lists_go_atomically_in_order() -> None:
    layout = build_layout(_lists((10, 15), (5,), (20,)), 30)
    offsets = {s.name: (s.group, s.offset) for s in layout.slots}
    assert offsets == {
        "m0.p0": (0, 0),
        "m0.p1": (0, 10),
        "m1.p0": (0, 25),
        "m2.p0": (1, 0),  # 30 + 20 does not fit chunk 0: a new chunk, never split
    }
    assert layout.group_used == (30, 20)
    assert layout.wasted_elements == 10


def test_module_larger_than_chunk_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'m1'.*25 parameter elements.*chunk_size >= 25"):
        build_layout(_lists((5,), (20, 5)), 24)


def test_search_returns_the_minimum_waste_size() -> None:
    lists = _lists((300,), (500,), (200,), (700,), (100,), (600,))
    report = search_chunk_size(lists, search_range=2000, interval=100)
    brute = min((build_layout(lists, size).wasted_elements, size) for size in range(700, 2701, 100))
    assert (
        build_layout(lists, report.chosen).wasted_elements,
        report.chosen,
    ) == brute
    assert report.min_size == 700


def test_gpt_search_report() -> None:
    model = GPT(GPTConfig(vocab_size=1024, seq_len=64, dim=256, n_layers=2), device="meta")
    report = search_chunk_size(module_param_lists(model), search_range=32 * 1024)
    summary = report.to_dict()
    assert summary["chosen_chunk_size"] >= summary["min_chunk_size"] == 256 * 1024 + 1024
    assert 0.9 < summary["chosen_utilisation"] <= 1.0
    assert summary["best"][0]["chunk_size"] == summary["chosen_chunk_size"]
