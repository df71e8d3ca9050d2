"""Row-level extractive summarisation of generation CSVs (what ``mred summarize`` runs).

For every row: split the source into sentences (``mred.data.split_sentences``), rank them with
LexRank/TextRank/MMR, and select

* uncontrolled: as many sentences as the row's control sequence has labels, or without a
  control as many as the reference summary has sentences (the upstream oracle-length protocol),
  output in source order;
* controlled: for each label of the control sequence in order, the best-ranked unused source
  sentence that the classifier labels so (fallback rule in ``mred.extractive``), in control order.

LexRank and MMR weight terms by an IDF fit over all sources of the input file (as upstream fits
over all test documents: transductive, but it uses no reference text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mred.data import GenerationExample, split_sentences
from mred.extractive import IdfModel, summarize

if TYPE_CHECKING:
    from mred.classify import SentenceClassifier

__all__ = ["ExtractiveSummary", "summarize_examples"]


@dataclass(frozen=True, slots=True)
class ExtractiveSummary:
    """The chosen sentences of one row, their classifier labels (controlled only) and the
    control sequence that was requested (empty when none)."""

    sentences: tuple[str, ...]
    labels: tuple[str, ...]
    control: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(" ".join(s.split()) for s in self.sentences)


def summarize_examples(
    examples: Sequence[GenerationExample],
    method: str,
    *,
    classifier: SentenceClassifier | None = None,
    controlled: bool = False,
    idf: IdfModel | None = None,
    show_progress: bool = False,
) -> list[ExtractiveSummary]:
    """One extractive summary per example.

    Args:
        examples: rows of a generation CSV.
        method: ``lexrank``, ``textrank`` or ``mmr``.
        classifier: labels the source sentences (needed when ``controlled``).
        controlled: follow each row's control sequence (rows without one use the labels of the
            reference as predicted by the classifier: the gold-free equivalent).
        idf: IDF model; fit over all sources of ``examples`` when None.
        show_progress: a progress bar over rows.
    """
    from ptrain.core.cli import progress

    if controlled and classifier is None:
        raise ValueError("controlled summarisation needs a classifier to label source sentences")
    sources = [split_sentences(example.source) for example in examples]
    if idf is None and method in ("lexrank", "mmr"):
        idf = IdfModel.fit(sources)
    out = []
    for example, sentences in progress(
        list(zip(examples, sources, strict=True)), desc=method, disable=not show_progress
    ):
        control = tuple(example.control)
        if not sentences:
            out.append(ExtractiveSummary((), (), control))
            continue
        if controlled:
            assert classifier is not None
            if not control:
                control = tuple(classifier.predict([split_sentences(example.summary)])[0])
            labels = classifier.predict([sentences])[0]
            chosen = summarize(sentences, method, labels=labels, control=control, idf=idf)
            out.append(
                ExtractiveSummary(
                    tuple(sentences[i] for i in chosen), tuple(labels[i] for i in chosen), control
                )
            )
        else:
            n = len(control) if control else len(split_sentences(example.summary))
            chosen = summarize(sentences, method, n=n, idf=idf)
            out.append(ExtractiveSummary(tuple(sentences[i] for i in chosen), (), control))
    return out
