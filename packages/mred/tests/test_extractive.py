from __future__ import annotations

import numpy as np
import pytest

from mred.extractive import (
    IdfModel,
    lexrank_scores,
    mmr_ranking,
    rank_sentences,
    select_controlled,
    select_uncontrolled,
    summarize,
    textrank_scores,
)

# A star: sentence 0 shares words with every other sentence; the others share nothing with each
# other (and sentence 4 with nobody), so 0 must rank first and 4 last.
STAR = [
    "neural network training optimization generalization",
    "neural network architecture",
    "training schedule tricks",
    "optimization landscape generalization",
    "completely unrelated bananas",
]


@pytest.mark.parametrize("method", ["lexrank", "textrank"])
def test_graph_methods_rank_the_hub_first(method: str) -> None:
    ranking = rank_sentences(STAR, method)
    assert ranking[0] == 0
    assert ranking[-1] == 4
    assert sorted(ranking) == list(range(5))


def test_textrank_isolated_sentence_scores_zero() -> None:
    scores = textrank_scores(STAR)
    assert scores[4] == 0.0 and scores[0] == scores.max()


def test_lexrank_is_a_distribution() -> None:
    scores = lexrank_scores(STAR)
    assert scores.sum() == pytest.approx(1.0) and (scores > 0).all()


def test_mmr_prefers_relevance_then_novelty() -> None:
    sentences = [
        "graph neural networks for molecules graph neural",
        "graph neural networks for molecules graph neural",  # a duplicate of 0
        "molecules property prediction benchmark",
        "weather today",
    ]
    order = mmr_ranking(sentences, lambda_=0.5)
    assert order[0] == 0  # most relevant (ties: earlier)
    assert order[1] == 2  # the duplicate 1 is redundant once 0 is chosen
    assert mmr_ranking(sentences, lambda_=1.0)[:2] == [0, 1]  # pure relevance keeps it


def test_select_uncontrolled() -> None:
    assert select_uncontrolled([3, 0, 2, 1], 2) == [0, 3]
    assert select_uncontrolled([3, 0, 2, 1], 2, source_order=False) == [3, 0]


def test_controlled_selection_follows_requested_order() -> None:
    ranking = [4, 2, 0, 3, 1]
    labels = ["abstract", "weakness", "strength", "decision", "abstract"]
    control = ["decision", "abstract", "strength", "abstract"]
    chosen = select_controlled(ranking, labels, control)
    assert chosen == [3, 4, 2, 0]
    assert [labels[i] for i in chosen] == control


def test_controlled_fallback_avoids_labels_needed_later() -> None:
    ranking = [0, 1, 2]
    labels = ["decision", "weakness", "abstract"]
    # no 'suggestion' sentence: take the best unused one whose label is not needed later
    # (0 is a decision, needed later; so 1)
    assert select_controlled(ranking, labels, ["suggestion", "decision"]) == [1, 0]
    # more control labels than sentences: stops when sentences run out
    assert select_controlled(ranking, labels, ["abstract"] * 5) == [2, 0, 1]


@pytest.mark.parametrize("method", ["lexrank", "textrank", "mmr"])
def test_summarize_controlled_and_uncontrolled(method: str) -> None:
    labels = ["abstract", "strength", "weakness", "weakness", "misc"]
    chosen = summarize(STAR, method, labels=labels, control=["weakness", "abstract"])
    assert [labels[i] for i in chosen] == ["weakness", "abstract"]
    assert len(summarize(STAR, method, n=3)) == 3
    with pytest.raises(ValueError):
        summarize(STAR, method)


def test_idf_model_is_explicit() -> None:
    idf = IdfModel.fit(["a rare word", "common words here", "common words there"])
    assert idf("common") < idf("rare")
    assert idf("unseen") == pytest.approx(np.log(4))
