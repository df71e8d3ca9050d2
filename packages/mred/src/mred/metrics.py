"""Classification metrics and control accuracy (all percentages, × 100)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mred.data import LABELS

__all__ = ["classification_metrics", "control_accuracy", "edit_distance"]


def classification_metrics(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Per-sentence accuracy, micro-F1, macro-F1 over the nine labels and per-label F1 / support.

    Labels absent from both gold and prediction have F1 0 and still count in the macro average
    (the 9-class macro-F1 of the design reference).

    Raises:
        ValueError: a document's gold and predicted lengths differ.
    """
    pairs = []
    for index, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"document {index}: {len(g)} gold labels but {len(p)} predicted")
        pairs += list(zip(g, p, strict=True))
    correct = sum(g == p for g, p in pairs)
    per_label: dict[str, dict[str, float | int]] = {}
    for label in LABELS:
        tp = sum(g == label and p == label for g, p in pairs)
        fp = sum(g != label and p == label for g, p in pairs)
        fn = sum(g == label and p != label for g, p in pairs)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"f1": 100 * f1, "support": tp + fn}
    accuracy = 100 * correct / len(pairs) if pairs else 0.0
    return {
        "accuracy": accuracy,
        "micro_f1": accuracy,  # single-label: micro-F1 equals accuracy
        "macro_f1": sum(float(v["f1"]) for v in per_label.values()) / len(LABELS),
        "per_label": per_label,
        "sentences": len(pairs),
    }


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two label sequences (insert, delete, substitute: cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def control_accuracy(
    requested: Sequence[Sequence[str]], produced: Sequence[Sequence[str]]
) -> dict[str, float | int]:
    """How well generated label sequences follow the requested control sequences.

    Args:
        requested: the control label sequence of every item.
        produced: the classifier's labels of the generated sentences of every item.

    Returns:
        ``exact_match`` (% of items whose label sequence equals the control),
        ``edit_distance`` (mean Levenshtein distance / max(len(control), len(produced))),
        ``sentence_accuracy`` (% of control positions whose generated sentence at the same
        position carries that label; a missing sentence counts as wrong, extra ones as wrong
        too: divided by the larger of the two lengths), and ``n``.
    """
    if len(requested) != len(produced):
        raise ValueError(f"{len(requested)} control sequences but {len(produced)} outputs")
    exact = 0
    distance = 0.0
    matched = 0
    positions = 0
    for want, got in zip(requested, produced, strict=True):
        exact += list(want) == list(got)
        longest = max(len(want), len(got))
        distance += edit_distance(want, got) / longest if longest else 0.0
        matched += sum(w == g for w, g in zip(want, got, strict=False))
        positions += longest
    n = len(requested)
    return {
        "exact_match": 100 * exact / n if n else 0.0,
        "edit_distance": distance / n if n else 0.0,
        "sentence_accuracy": 100 * matched / positions if positions else 0.0,
        "n": n,
    }
