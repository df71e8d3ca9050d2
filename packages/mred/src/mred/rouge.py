"""ROUGE-1/2/L F1 as ``rouge-score`` computes it, without depending on it.

Tokenisation follows ``rouge_score.tokenize``: lower-case, every run of characters outside
``[a-z0-9]`` becomes a space, split on white space, Porter-stem tokens longer than three
characters (``mred.porter``), drop empty tokens. ROUGE-N counts clipped n-gram overlaps;
ROUGE-L uses the longest common subsequence of the two token lists (``rougeL``, not
``rougeLsum``). Precision, recall and F1 are 0 when either side has no n-grams.

``corpus_rouge`` averages the per-line F1 × 100 (the arithmetic mean; ``rouge-score``'s
``BootstrapAggregator`` mid value, which the paper reports, equals it up to resampling noise of
a few hundredths). ``backend="rouge-score"`` runs the reference implementation instead when it
is installed (``pip install 'mred[rouge]'``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from mred.porter import stem

__all__ = ["RougeScore", "corpus_rouge", "lcs_length", "rouge_scores", "tokenize"]

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_VALID = re.compile(r"^[a-z0-9]+$")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass(frozen=True, slots=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


def tokenize(text: str, use_stemmer: bool = True) -> list[str]:
    """rouge-score's tokenisation: lower, non-alphanumerics → space, stem words of > 3 chars."""
    tokens = _NON_ALPHANUMERIC.sub(" ", text.lower()).split()
    if use_stemmer:
        tokens = [stem(token) if len(token) > 3 else token for token in tokens]
    return [token for token in tokens if _VALID.match(token)]


def _score(overlap: int, target_total: int, prediction_total: int) -> RougeScore:
    precision = overlap / max(prediction_total, 1)
    recall = overlap / max(target_total, 1)
    if precision + recall > 0:
        return RougeScore(precision, recall, 2 * precision * recall / (precision + recall))
    return RougeScore(precision, recall, 0.0)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): one big-int word
    of len(a) bits, O(len(b)) big-int operations instead of a len(a)·len(b) table."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def lcs_length_reference(a: Sequence[str], b: Sequence[str]) -> int:
    """The textbook dynamic programme (O(len(a)·len(b))); the reference in tests."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[-1]))
        previous = current
    return previous[-1]


def _rouge_n(target: Sequence[str], prediction: Sequence[str], n: int) -> RougeScore:
    target_ngrams = _ngrams(target, n)
    prediction_ngrams = _ngrams(prediction, n)
    overlap = sum(min(count, prediction_ngrams[g]) for g, count in target_ngrams.items())
    return _score(overlap, sum(target_ngrams.values()), sum(prediction_ngrams.values()))


def rouge_scores(target: str, prediction: str, use_stemmer: bool = True) -> dict[str, RougeScore]:
    """ROUGE-1, ROUGE-2 and ROUGE-L of one prediction against one reference.

    Returns:
        ``{"rouge1", "rouge2", "rougeL"}`` → ``RougeScore`` (fractions, not percentages).
    """
    target_tokens = tokenize(target, use_stemmer)
    prediction_tokens = tokenize(prediction, use_stemmer)
    lcs = lcs_length(target_tokens, prediction_tokens)
    return {
        "rouge1": _rouge_n(target_tokens, prediction_tokens, 1),
        "rouge2": _rouge_n(target_tokens, prediction_tokens, 2),
        "rougeL": _score(lcs, len(target_tokens), len(prediction_tokens)),
    }


def corpus_rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    use_stemmer: bool = True,
    backend: str = "ours",
) -> dict[str, float | int]:
    """Mean ROUGE-1/2/L F1 × 100 over aligned lines: ``{"rouge1", "rouge2", "rougeL", "n"}``.

    Args:
        predictions: one system text per item.
        references: the reference texts, aligned with ``predictions``.
        use_stemmer: Porter-stem tokens longer than three characters (the paper: True).
        backend: ``"ours"`` or ``"rouge-score"`` (the reference implementation, if installed).

    Raises:
        ValueError: the two lists differ in length, or the backend is unknown / not installed.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must align"
        )
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    if backend == "ours":
        for prediction, reference in zip(predictions, references, strict=True):
            for key, score in rouge_scores(reference, prediction, use_stemmer).items():
                totals[key] += score.fmeasure
    elif backend == "rouge-score":
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise ValueError(
                "backend 'rouge-score' needs the rouge-score package: pip install 'mred[rouge]'"
            ) from None
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
        for prediction, reference in zip(predictions, references, strict=True):
            for key, value in scorer.score(reference, prediction).items():
                totals[key] += value.fmeasure
    else:
        raise ValueError(f"unknown ROUGE backend {backend!r}; expected 'ours' or 'rouge-score'")
    count = len(predictions)
    result: dict[str, float | int] = {
        key: (100.0 * total / count if count else 0.0) for key, total in totals.items()
    }
    result["n"] = count
    return result
