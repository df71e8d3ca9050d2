from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mred.porter import stem
from mred.rouge import corpus_rouge, lcs_length, lcs_length_reference, rouge_scores, tokenize


def test_tokenize_like_rouge_score() -> None:
    assert tokenize("The cats' RUNNING-fast, 3x!", use_stemmer=False) == [
        "the",
        "cats",
        "running",
        "fast",
        "3x",
    ]
    # stemming only for tokens longer than 3 characters
    assert tokenize("The cats running fast", use_stemmer=True) == ["the", "cat", "run", "fast"]


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("caresses", "caress"),
        ("ponies", "poni"),
        ("ties", "tie"),
        ("cats", "cat"),
        ("agreed", "agre"),
        ("plastered", "plaster"),
        ("motoring", "motor"),
        ("hopping", "hop"),
        ("falling", "fall"),
        ("filing", "file"),
        ("happy", "happi"),
        ("relational", "relat"),
        ("generalization", "gener"),
        ("dying", "die"),
        ("skies", "sky"),
        ("news", "news"),
        ("proceed", "proceed"),
        ("controlling", "control"),
        ("enjoy", "enjoy"),
    ],
)
def test_porter_known_stems(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_porter_matches_nltk_on_a_vocabulary() -> None:
    porter = pytest.importorskip("nltk.stem.porter")
    nltk_stemmer = porter.PorterStemmer()
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    suffixes = [
        "",
        "s",
        "es",
        "ies",
        "ed",
        "ied",
        "ing",
        "ly",
        "ness",
        "ation",
        "ational",
        "izer",
        "alli",
        "fulli",
        "logi",
        "ement",
        "ical",
        "ous",
        "ive",
        "ize",
        "ll",
        "y",
        "eed",
        "bli",
        "iviti",
        "biliti",
        "ism",
        "ant",
        "ence",
        "ance",
        "ion",
        "er",
    ]
    words = {
        "".join(rng.choice(letters) for _ in range(rng.randint(1, 7))) + rng.choice(suffixes)
        for _ in range(1500)
    }
    words |= {"yyyy", "syzygy", "toy", "ivy", "oaten", "sky", "lying", "inning", "a", "is"}
    mismatches = [w for w in words if stem(w) != nltk_stemmer.stem(w)]
    assert mismatches == []


def test_rouge_by_hand() -> None:
    # target: "the cat sat on the mat" (6 tokens), prediction: "the cat on the mat" (5 tokens)
    scores = rouge_scores("the cat sat on the mat", "the cat on the mat", use_stemmer=False)
    assert scores["rouge1"].precision == pytest.approx(5 / 5)
    assert scores["rouge1"].recall == pytest.approx(5 / 6)
    assert scores["rouge1"].fmeasure == pytest.approx(2 * 1 * (5 / 6) / (1 + 5 / 6))
    # bigrams: target {the cat, cat sat, sat on, on the, the mat}; prediction shares 3 of its 4
    assert scores["rouge2"].precision == pytest.approx(3 / 4)
    assert scores["rouge2"].recall == pytest.approx(3 / 5)
    assert scores["rougeL"].recall == pytest.approx(5 / 6)  # LCS = the cat on the mat
    empty = rouge_scores("", "something", use_stemmer=False)
    assert empty["rouge1"].fmeasure == 0.0 and empty["rougeL"].fmeasure == 0.0
    clipped = rouge_scores("the the cat", "the the the the", use_stemmer=False)["rouge1"]
    assert clipped.precision == pytest.approx(2 / 4) and clipped.recall == pytest.approx(2 / 3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from("abcde"), max_size=30),
    st.lists(st.sampled_from("abcdef"), max_size=30),
)
def test_bit_parallel_lcs_equals_dynamic_programme(a: list[str], b: list[str]) -> None:
    assert lcs_length(a, b) == lcs_length_reference(a, b)


def _random_text(rng: random.Random) -> str:
    words = [
        "model",
        "models",
        "training",
        "trained",
        "the",
        "results",
        "result",
        "paper",
        "reviewers",
        "reviewer",
        "agree",
        "agreed",
        "novel",
        "novelty",
        "strong",
        "weak",
        "experiments",
        "experimental",
        "a",
        "is",
        "of",
        "generalization",
        "generalize",
        "Accept",
        "rejected",
        "ICLR",
        "2019",
        "state-of-the-art",
        "(",
        ")",
        ",",
        ".",
    ]
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))


def test_matches_rouge_score_on_random_texts() -> None:
    pytest.importorskip("rouge_score")
    rng = random.Random(1)
    predictions = [_random_text(rng) for _ in range(300)]
    references = [_random_text(rng) for _ in range(300)]
    ours = corpus_rouge(predictions, references)
    theirs = corpus_rouge(predictions, references, backend="rouge-score")
    assert ours["n"] == theirs["n"] == 300
    for key in ("rouge1", "rouge2", "rougeL"):
        assert abs(ours[key] - theirs[key]) < 0.01
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for prediction, reference in zip(predictions[:50], references[:50], strict=True):
        expected = scorer.score(reference, prediction)
        got = rouge_scores(reference, prediction)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert got[key].fmeasure == pytest.approx(expected[key].fmeasure, abs=1e-12)


def test_corpus_rouge_errors() -> None:
    with pytest.raises(ValueError, match="align"):
        corpus_rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="backend"):
        corpus_rouge(["a"], ["a"], backend="perl")
    assert corpus_rouge(["same text here"], ["same text here"])["rougeL"] == pytest.approx(100.0)
