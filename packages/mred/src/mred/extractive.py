"""Extractive LexRank, TextRank and MMR, uncontrolled and controlled (numpy/scipy only).

Shapes: ``S`` sentences of one source, ``V`` vocabulary terms.

* ``lexrank_scores``: IDF-modified cosine between TF-IDF sentence vectors, edges where the cosine
  exceeds ``threshold`` (0.03, the ``lexrank`` package default), no self-loops, row-normalised
  (a sentence without edges jumps uniformly), stationary distribution by power iteration with
  damping 0.85.
* ``textrank_scores``: gensim-3.8-style TextRank: BM25 (k1 = 1.5, b = 0.75, ε = 0.25) weights
  between sentences, edges where either direction weighs ≥ 1e-3, weighted PageRank, d = 0.85.
* ``mmr_ranking``: the query is the document's top-8 TF-IDF terms; greedy maximal marginal
  relevance ``λ·sim(s, q) − (1 − λ)·max_{t selected} sim(s, t)`` with λ = 0.9.

Every method turns a source into a ranking (best first). ``select_uncontrolled`` takes the top
``n`` (the upstream protocol uses the reference's sentence count, an oracle length);
``select_controlled`` follows the control sequence: for each label in order, the best-ranked
unused sentence with that label, else the best-ranked unused sentence whose label is not needed
later in the control, else the best-ranked unused sentence.

Text is pre-processed as in ``mred.rouge`` (lower-case alphanumeric tokens, Porter stems) with
English stop words removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from mred.rouge import tokenize

__all__ = [
    "METHODS",
    "IdfModel",
    "lexrank_scores",
    "mmr_ranking",
    "rank_sentences",
    "select_controlled",
    "select_uncontrolled",
    "summarize",
    "textrank_scores",
    "tfidf_matrix",
]

METHODS = ("lexrank", "textrank", "mmr")

STOP_WORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "also",
        "may",
        "might",
        "must",
        "shall",
        "us",
    ]
)


def _terms(text: str) -> list[str]:
    return [t for t in tokenize(text, use_stemmer=False) if t not in STOP_WORDS and len(t) > 1]


def _stemmed_terms(sentence: str) -> list[str]:
    from mred.porter import stem

    return [stem(t) if len(t) > 3 else t for t in _terms(sentence)]


@dataclass(slots=True)
class IdfModel:
    """Inverse document frequencies over an explicit corpus (``log(N / df)``; unseen terms get
    ``log(N + 1)``, i.e. as rare as possible)."""

    idf: dict[str, float]
    documents: int

    @classmethod
    def fit(cls, documents: Sequence[str | Sequence[str]]) -> IdfModel:
        """Fits on documents given as texts, or as lists of sentences."""
        frequency: dict[str, int] = {}
        for document in documents:
            text = document if isinstance(document, str) else " ".join(document)
            for term in set(_stemmed_terms(text)):
                frequency[term] = frequency.get(term, 0) + 1
        n = max(len(documents), 1)
        return cls({t: float(np.log(n / df)) for t, df in frequency.items()}, n)

    def __call__(self, term: str) -> float:
        return self.idf.get(term, float(np.log(self.documents + 1)))


def _term_counts(sentences: Sequence[str]) -> tuple[sparse.csr_matrix, list[str]]:
    """(S, V) term-count matrix and the vocabulary."""
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for i, sentence in enumerate(sentences):
        for term in _stemmed_terms(sentence):
            rows.append(i)
            cols.append(vocabulary.setdefault(term, len(vocabulary)))
    data = np.ones(len(rows))
    counts = sparse.csr_matrix((data, (rows, cols)), shape=(len(sentences), len(vocabulary)))
    counts.sum_duplicates()
    return counts, list(vocabulary)


def tfidf_matrix(texts: Sequence[str], idf: IdfModel | None = None) -> np.ndarray:
    """(S, V) dense TF-IDF rows (IDF over ``texts`` themselves when ``idf`` is None)."""
    counts, vocabulary = _term_counts(texts)
    model = idf if idf is not None else IdfModel.fit(list(texts))
    weights = np.array([model(term) for term in vocabulary])
    return np.asarray(counts.multiply(weights[None, :]).todense())


def _cosine(matrix_SV: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix_SV, axis=1, keepdims=True)
    unit = matrix_SV / np.where(norms == 0, 1.0, norms)
    return unit @ unit.T  # (S, S)


def _stationary(transition_SS: np.ndarray, damping: float, tol: float = 1e-10) -> np.ndarray:
    """PageRank vector of a row-stochastic matrix (rows of isolated nodes may be zero)."""
    s = transition_SS.shape[0]
    scores = np.full(s, 1.0 / s)
    for _ in range(1000):
        updated = (1 - damping) / s + damping * (scores @ transition_SS)
        if np.abs(updated - scores).sum() < tol:
            return updated
        scores = updated
    return scores


def lexrank_scores(
    sentences: Sequence[str], idf: IdfModel | None = None, threshold: float = 0.03
) -> np.ndarray:
    """LexRank centrality of each sentence, shape (S,)."""
    if len(sentences) == 0:
        return np.zeros(0)
    similarity = _cosine(tfidf_matrix(sentences, idf))  # (S, S)
    adjacency = (similarity > threshold).astype(np.float64)
    np.fill_diagonal(adjacency, 0.0)
    degree = adjacency.sum(axis=1, keepdims=True)
    # a sentence similar to no other one jumps uniformly (a self-loop would trap the walk there)
    transition = np.where(degree > 0, adjacency / np.maximum(degree, 1.0), 1.0 / len(sentences))
    return _stationary(transition, damping=0.85)


def bm25_weights(
    sentences: Sequence[str], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25
) -> np.ndarray:
    """(S, S) gensim-3.8 BM25: row i is sentence i's terms scored against every sentence j."""
    counts, _ = _term_counts(sentences)
    counts_SV = np.asarray(counts.todense())
    s = counts_SV.shape[0]
    lengths = counts_SV.sum(axis=1)
    average = lengths.mean() if s else 0.0
    df = (counts_SV > 0).sum(axis=0)
    idf = np.log(s - df + 0.5) - np.log(df + 0.5)
    if idf.size:
        idf = np.where(idf < 0, epsilon * idf.mean(), idf)
    denominator = counts_SV + k1 * (1 - b + b * lengths[:, None] / max(average, 1e-12))
    term_scores_SV = (
        idf[None, :] * counts_SV * (k1 + 1) / np.where(denominator == 0, 1, denominator)
    )
    query_SV = counts_SV  # each query counts a term once per occurrence, as gensim's loop does
    return query_SV @ term_scores_SV.T  # (S, S)


def textrank_scores(sentences: Sequence[str], damping: float = 0.85) -> np.ndarray:
    """TextRank score of each sentence, shape (S,); isolated sentences score 0."""
    if len(sentences) == 0:
        return np.zeros(0)
    weights = bm25_weights(sentences)
    np.fill_diagonal(weights, 0.0)
    edges = (weights >= 1e-3) | (weights.T >= 1e-3)
    weights = np.where(edges, np.maximum(weights, 0.0), 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    transition = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
    scores = _stationary(transition, damping)
    scores[~edges.any(axis=1)] = 0.0
    return scores


def _query_vector(tfidf_SV: np.ndarray, top_terms: int) -> np.ndarray:
    document = tfidf_SV.sum(axis=0)
    query = np.zeros_like(document)
    top = np.argsort(-document, kind="stable")[:top_terms]
    query[top] = document[top]
    return query


def mmr_ranking(
    sentences: Sequence[str],
    idf: IdfModel | None = None,
    *,
    lambda_: float = 0.9,
    top_terms: int = 8,
    candidates: Sequence[int] | None = None,
    selected: Sequence[int] = (),
    limit: int | None = None,
) -> list[int]:
    """Greedy MMR order of ``candidates`` (all sentences by default) given already ``selected``."""
    if len(sentences) == 0:
        return []
    tfidf_SV = tfidf_matrix(sentences, idf)
    query = _query_vector(tfidf_SV, top_terms)
    unit = tfidf_SV / np.maximum(np.linalg.norm(tfidf_SV, axis=1, keepdims=True), 1e-12)
    relevance = unit @ (query / max(float(np.linalg.norm(query)), 1e-12))  # (S,)
    similarity = unit @ unit.T  # (S, S)
    pool = list(range(len(sentences))) if candidates is None else list(candidates)
    chosen = list(selected)
    order: list[int] = []
    while pool and (limit is None or len(order) < limit):
        redundancy = similarity[np.ix_(pool, chosen)].max(axis=1) if chosen else np.zeros(len(pool))
        score = lambda_ * relevance[pool] - (1 - lambda_) * redundancy
        best = pool[int(np.argmax(score))]
        order.append(best)
        chosen.append(best)
        pool.remove(best)
    return order


def rank_sentences(sentences: Sequence[str], method: str, idf: IdfModel | None = None) -> list[int]:
    """Sentence indices, best first (ties: earlier sentence first)."""
    if method == "lexrank":
        scores = lexrank_scores(sentences, idf)
    elif method == "textrank":
        scores = textrank_scores(sentences)
    elif method == "mmr":
        return mmr_ranking(sentences, idf)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return [int(i) for i in np.argsort(-scores, kind="stable")]


def select_uncontrolled(ranking: Sequence[int], n: int, *, source_order: bool = True) -> list[int]:
    """The top ``n`` of a ranking, in source order (default) or rank order."""
    chosen = list(ranking[: max(n, 0)])
    return sorted(chosen) if source_order else chosen


def select_controlled(
    ranking: Sequence[int], labels: Sequence[str], control: Sequence[str]
) -> list[int]:
    """One sentence per control label, in control order (see the module docstring).

    Args:
        ranking: sentence indices, best first.
        labels: the label of every sentence (indexed like the source).
        control: the requested label sequence.

    Returns:
        Sentence indices, one per control label while sentences remain.
    """
    used: set[int] = set()
    chosen: list[int] = []
    for position, wanted in enumerate(control):
        needed_later = set(control[position + 1 :])
        pick = next((i for i in ranking if i not in used and labels[i] == wanted), None)
        if pick is None:
            pick = next(
                (i for i in ranking if i not in used and labels[i] not in needed_later), None
            )
        if pick is None:
            pick = next((i for i in ranking if i not in used), None)
        if pick is None:
            break
        used.add(pick)
        chosen.append(pick)
    return chosen


def _mmr_controlled(
    sentences: Sequence[str], labels: Sequence[str], control: Sequence[str], idf: IdfModel | None
) -> list[int]:
    """MMR inside each label group, in control order, redundancy against what is chosen."""
    chosen: list[int] = []
    for position, wanted in enumerate(control):
        unused = [i for i in range(len(sentences)) if i not in chosen]
        if not unused:
            break
        needed_later = set(control[position + 1 :])
        for group in (
            [i for i in unused if labels[i] == wanted],
            [i for i in unused if labels[i] not in needed_later],
            unused,
        ):
            if group:
                chosen += mmr_ranking(sentences, idf, candidates=group, selected=chosen, limit=1)
                break
    return chosen


def summarize(
    sentences: Sequence[str],
    method: str,
    *,
    n: int | None = None,
    labels: Sequence[str] | None = None,
    control: Sequence[str] | None = None,
    idf: IdfModel | None = None,
) -> list[int]:
    """Selects source sentences: uncontrolled (top ``n``) or controlled (``labels`` + ``control``).

    Returns:
        The chosen sentence indices in output order.
    """
    if control is not None:
        if labels is None or len(labels) != len(sentences):
            raise ValueError("controlled selection needs one label per source sentence")
        if method == "mmr":
            return _mmr_controlled(sentences, labels, control, idf)
        return select_controlled(rank_sentences(sentences, method, idf), labels, control)
    if n is None:
        raise ValueError("uncontrolled selection needs n (the number of sentences to take)")
    return select_uncontrolled(rank_sentences(sentences, method, idf), n)
