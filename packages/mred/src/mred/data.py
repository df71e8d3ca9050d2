"""Readers for every file format of the MReD release, control prefixes and input linearisations.

All readers take the path of one file of the official release (or of a file in the same format)
and return frozen records. Malformed input raises ``MReDFormatError`` whose one-line message
names the file, the line and what was expected (``val.txt:12: expected 3 TAB fields ...``).

Formats (see ``../shared/data/mred/README.md``):

* ``full_data_info.txt``: 12 TAB fields per paper (``read_data_info``).
* classification TSV ``paper_id<TAB>sentence<TAB>label``, blank line between documents
  (``read_labeled_sentences``; also the ``labeled_source`` and ``*_labeled_sentences*`` files).
* BIO files of the LSTM-CRF tagger (``read_bio``): ``B-x``/``I-x``, ``O`` = ``misc``.
* generation CSVs ``text,summary`` with an optional control prefix (``read_generation_csv``).
* extractive ``*.source`` / ``*.target`` (one document per line, ``read_lines``) and
  ``*_sentence_labels*.txt`` (``paper_id<TAB>[label list]``, ``read_sentence_labels``).
"""

from __future__ import annotations

import ast
import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptrain.core.cli import UserError

__all__ = [
    "LABELS",
    "LINEARISATIONS",
    "ControlMode",
    "GenerationExample",
    "LabeledDocument",
    "LabeledSentence",
    "MReDFormatError",
    "MetaReviewInfo",
    "Release",
    "Review",
    "collapse_segments",
    "format_control",
    "linearise",
    "parse_control",
    "read_bio",
    "read_data_info",
    "read_generation_csv",
    "read_labeled_sentences",
    "read_lines",
    "read_sentence_labels",
    "release_stats",
    "seg_ctrl",
    "sent_ctrl",
    "split_reviews",
    "split_sentences",
    "to_hf_dataset",
]

LABELS: tuple[str, ...] = (
    "abstract",
    "strength",
    "weakness",
    "rating_summary",
    "ac_disagreement",
    "rebuttal_process",
    "suggestion",
    "decision",
    "misc",
)
"""The nine sentence categories, in the paper's fixed order."""

LABEL_INDEX = {label: index for index, label in enumerate(LABELS)}

SEP = " <sep> "
"""Paragraph separator inside sources (and inside some classification sentences)."""
REVBREAK = " <REVBREAK> "
"""Review separator of the upstream concat/merge sources."""
CONTROL_ARROW = "==>"

ControlMode = Literal["unctrl", "sent-ctrl", "seg-ctrl"]
LINEARISATIONS = ("concat", "merge", "rate_concat", "rate_merge", "longest")


class MReDFormatError(UserError, ValueError):
    """A file does not follow its MReD format; the message names the file and line."""


def _error(path: str | os.PathLike[str], line: int, message: str) -> MReDFormatError:
    return MReDFormatError(f"{path}:{line}: {message}")


def _check_label(label: str, path: str | os.PathLike[str], line: int) -> str:
    if label not in LABEL_INDEX:
        raise _error(path, line, f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return label


# --------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class MetaReviewInfo:
    """One line of ``full_data_info.txt``: a paper, its ratings, decision and gold labels."""

    split: str
    paper_id: str
    year: int
    openreview_id: str
    ratings: tuple[int, ...]
    average_rating: float
    decision: str
    title: str
    url: str
    word_count: int
    sentence_labels: tuple[str, ...]
    segment_labels: tuple[str, ...]

    @property
    def reviews(self) -> int:
        """Number of reviews of the paper (one rating per review)."""
        return len(self.ratings)


@dataclass(frozen=True, slots=True)
class LabeledSentence:
    """A sentence of a meta-review (or of a review) and its category."""

    paper_id: str
    text: str
    label: str


@dataclass(frozen=True, slots=True)
class LabeledDocument:
    """The sentences of one meta-review (or one paper's reviews), in order."""

    paper_id: str
    sentences: tuple[LabeledSentence, ...]

    @property
    def texts(self) -> list[str]:
        return [sentence.text for sentence in self.sentences]

    @property
    def labels(self) -> list[str]:
        return [sentence.label for sentence in self.sentences]


@dataclass(frozen=True, slots=True)
class Review:
    """One review of a paper: its text and the reviewer's rating when known."""

    index: int
    text: str
    rating: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationExample:
    """One row of a generation CSV: the source, the reference and the parsed control."""

    source: str
    summary: str
    control: tuple[str, ...] = ()
    mode: ControlMode = "unctrl"
    line: int = 0

    @property
    def text(self) -> str:
        """The model input as the CSV holds it: control prefix (if any) + source."""
        if self.mode == "unctrl":
            return self.source
        return format_control(self.control) + self.source


# --------------------------------------------------------------------------- controls
def sent_ctrl(labels: Sequence[str]) -> str:
    """The sent-ctrl prefix ``"a | a | b  ==> "``: one label per target sentence."""
    return format_control(labels)


def seg_ctrl(labels: Sequence[str]) -> str:
    """The seg-ctrl prefix: ``sent_ctrl`` of the labels with consecutive duplicates collapsed."""
    return format_control(collapse_segments(labels))


def format_control(labels: Sequence[str]) -> str:
    """``"a | b  ==> "``: labels joined by ``" | "``, two spaces, ``==>``, one space."""
    for label in labels:
        if label not in LABEL_INDEX:
            raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return " | ".join(labels) + "  " + CONTROL_ARROW + " "


def collapse_segments(labels: Sequence[str]) -> list[str]:
    """Consecutive duplicate labels collapsed: the segment-level sequence."""
    out: list[str] = []
    for label in labels:
        if not out or out[-1] != label:
            out.append(label)
    return out


def parse_control(text: str, *, strict: bool = True) -> tuple[tuple[str, ...] | None, str]:
    """Splits a model input into its control labels (None without a prefix) and the source.

    The control is the text before the first ``==>``; further leading ``==>`` (the release's
    ``"...  ==>  ==> source"`` quirk, from an empty first paragraph) are stripped from the source.

    Args:
        text: a CSV ``text`` field.
        strict: raise when the text before ``==>`` is not a label list; when False such a text
            has no control (reviews may contain ``==>`` themselves).

    Raises:
        ValueError: ``strict`` and the prefix holds something that is not one of ``LABELS``.
    """
    head, arrow, tail = text.partition(CONTROL_ARROW)
    if not arrow:
        return None, text
    labels = tuple(part.strip() for part in head.split("|"))
    for label in labels:
        if label not in LABEL_INDEX:
            if not strict:
                return None, text
            shown = label if len(label) <= 40 else label[:37] + "..."
            raise ValueError(
                f"control prefix holds {shown!r}, not a label (expected one of {', '.join(LABELS)})"
            )
    source = tail.lstrip()
    while source.startswith(CONTROL_ARROW):
        source = source[len(CONTROL_ARROW) :].lstrip()
    return labels, source


# --------------------------------------------------------------------------- sentences
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "etc.", "vs.", "cf.", "Fig.", "Eq.", "Sec.", "resp.")


def split_sentences(text: str, *, split_paragraphs: bool = True) -> list[str]:
    """Splits review or meta-review text into sentences (rule based, no model).

    Paragraphs (`` <sep> ``) and reviews (`` <REVBREAK> ``) always end a sentence when
    ``split_paragraphs``; inside a paragraph a sentence ends at ``.``, ``!`` or ``?`` followed by
    white space and an upper-case letter or digit, except after common abbreviations
    (``e.g.``, ``i.e.``, ``et al.``, ...). Empty pieces are dropped.
    """
    paragraphs = re.split(r"\s*<(?:sep|REVBREAK)>\s*", text) if split_paragraphs else [text]
    sentences: list[str] = []
    for paragraph in paragraphs:
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            piece = paragraph[start : match.start()]
            if any(piece.endswith(abbreviation) for abbreviation in _ABBREVIATIONS):
                continue
            if piece.strip():
                sentences.append(piece.strip())
            start = match.end()
        if paragraph[start:].strip():
            sentences.append(paragraph[start:].strip())
    return sentences


# --------------------------------------------------------------------------- readers
def _read_text_lines(path: str | os.PathLike[str]) -> list[str]:
    with open(path, encoding="utf-8", newline="") as file:
        text = file.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _parse_ratings(field_text: str, path: str | os.PathLike[str], line: int) -> tuple[int, ...]:
    text = field_text.strip().rstrip(".").strip()
    if not text:
        return ()
    ratings = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*R(\d+):\s*(-?\d+)\s*", part)
        if match is None:
            raise _error(path, line, f"expected ratings like 'R1: 8, R2: 7. ', got {field_text!r}")
        ratings.append(int(match.group(2)))
    return tuple(ratings)


def _parse_label_list(text: str, path: str | os.PathLike[str], line: int) -> tuple[str, ...]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise _error(path, line, f"expected a Python list of labels, got {text[:80]!r}") from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _error(path, line, f"expected a Python list of labels, got {text[:80]!r}")
    return tuple(_check_label(label, path, line) for label in value)


def read_data_info(path: str | os.PathLike[str]) -> list[MetaReviewInfo]:
    """Reads ``full_data_info.txt`` (12 TAB fields per paper)."""
    records = []
    for number, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 12:
            raise _error(path, number, f"expected 12 TAB-separated fields, got {len(fields)}")
        try:
            year = int(fields[2])
            average = float(fields[5])
            words = int(fields[9])
        except ValueError:
            raise _error(
                path, number, "expected integer year (3), float rating (6), int word count (10)"
            ) from None
        records.append(
            MetaReviewInfo(
                split=fields[0],
                paper_id=fields[1],
                year=year,
                openreview_id=fields[3],
                ratings=_parse_ratings(fields[4], path, number),
                average_rating=average,
                decision=fields[6],
                title=fields[7],
                url=fields[8],
                word_count=words,
                sentence_labels=_parse_label_list(fields[10], path, number),
                segment_labels=_parse_label_list(fields[11], path, number),
            )
        )
    return records


def _group_documents(
    path: str | os.PathLike[str], rows: Iterable[tuple[int, str, str, str]]
) -> list[LabeledDocument]:
    """Blank lines separate documents; a paper-id change without a blank line also does."""
    documents: list[LabeledDocument] = []
    current: list[LabeledSentence] = []
    for _, paper_id, text, label in rows:
        if paper_id == "":  # blank line
            if current:
                documents.append(LabeledDocument(current[0].paper_id, tuple(current)))
                current = []
            continue
        if current and current[0].paper_id != paper_id:
            documents.append(LabeledDocument(current[0].paper_id, tuple(current)))
            current = []
        current.append(LabeledSentence(paper_id, text, label))
    if current:
        documents.append(LabeledDocument(current[0].paper_id, tuple(current)))
    return documents


def read_labeled_sentences(path: str | os.PathLike[str]) -> list[LabeledDocument]:
    """Reads ``paper_id<TAB>sentence<TAB>label`` lines, blank line between documents.

    This is the layout of ``classification/data/{train,val,test}.txt``, of
    ``target/filtered_*_labeled_sentences*.txt`` and of ``labeled_source/*.txt``.
    """

    def rows() -> Iterable[tuple[int, str, str, str]]:
        for number, line in enumerate(_read_text_lines(path), start=1):
            if not line.strip():
                yield number, "", "", ""
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise _error(
                    path,
                    number,
                    f"expected 3 TAB-separated fields (paper_id, sentence, label), "
                    f"got {len(fields)}",
                )
            yield number, fields[0], fields[1], _check_label(fields[2].strip(), path, number)

    return _group_documents(path, rows())


def bio_to_label(tag: str) -> str:
    """``B-x``/``I-x``/``S-x``/``E-x`` → ``x``; ``O`` → ``misc``."""
    if tag == "O":
        return "misc"
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[2:]
    raise ValueError(f"expected a BIO tag (B-x, I-x or O), got {tag!r}")


def labels_to_bio(labels: Sequence[str]) -> list[str]:
    """Sentence labels → BIO tags over the sequence (``misc`` → ``O``)."""
    tags = []
    previous = None
    for label in labels:
        if label == "misc":
            tags.append("O")
        else:
            tags.append(("I-" if previous == label else "B-") + label)
        previous = label
    return tags


def read_bio(path: str | os.PathLike[str]) -> list[LabeledDocument]:
    """Reads the LSTM-CRF files ``paper_id<TAB>sentence<TAB>BIO tag`` (``O`` = misc)."""

    def rows() -> Iterable[tuple[int, str, str, str]]:
        for number, line in enumerate(_read_text_lines(path), start=1):
            if not line.strip():
                yield number, "", "", ""
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise _error(
                    path,
                    number,
                    f"expected 3 TAB-separated fields (paper_id, sentence, tag), got {len(fields)}",
                )
            try:
                label = bio_to_label(fields[2].strip())
            except ValueError as error:
                raise _error(path, number, str(error)) from None
            yield number, fields[0], fields[1], _check_label(label, path, number)

    return _group_documents(path, rows())


def read_generation_csv(path: str | os.PathLike[str]) -> list[GenerationExample]:
    """Reads a ``text,summary`` CSV; a control prefix in ``text`` is parsed into labels.

    The mode is ``unctrl`` without a prefix, ``seg-ctrl`` when the file name says so, else
    ``sent-ctrl``. In a file named ``*sent-ctrl*``/``*seg-ctrl*`` a prefix that is not a label
    list is an error; elsewhere text before a ``==>`` only counts as a control when it is a
    label list (review text can contain ``==>``: 1 row of ``val_longest.csv`` does).
    """
    name = Path(path).name
    strict = "sent-ctrl" in name or "seg-ctrl" in name
    csv.field_size_limit(1 << 30)
    examples = []
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        try:
            header = next(reader)
        except StopIteration:
            raise _error(path, 1, "empty file; expected a header 'text,summary'") from None
        except csv.Error as error:
            raise _error(path, 1, f"malformed CSV ({error})") from None
        if [h.strip() for h in header] != ["text", "summary"]:
            raise _error(path, 1, f"expected the header 'text,summary', got {','.join(header)!r}")
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise _error(path, start, f"malformed CSV row ({error})") from None
            if not row:
                start = reader.line_num + 1
                continue
            if len(row) != 2:
                raise _error(path, start, f"expected 2 CSV fields (text, summary), got {len(row)}")
            try:
                control, source = parse_control(row[0], strict=strict)
            except ValueError as error:
                raise _error(path, start, str(error)) from None
            mode: ControlMode
            if control is None:
                mode = "unctrl"
            elif "seg-ctrl" in name:
                mode = "seg-ctrl"
            else:
                mode = "sent-ctrl"
            examples.append(
                GenerationExample(
                    source=source,
                    summary=row[1],
                    control=control or (),
                    mode=mode,
                    line=start,
                )
            )
            start = reader.line_num + 1
    return examples


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """Reads a ``.source``/``.target``/prediction file: one document per line."""
    return _read_text_lines(path)


def read_sentence_labels(path: str | os.PathLike[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Reads ``paper_id<TAB>[label list]`` lines (``filtered_*_sentence_labels*.txt``)."""
    out = []
    for number, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise _error(
                path, number, f"expected 2 TAB fields (paper_id, [labels]), got {len(fields)}"
            )
        out.append((fields[0], _parse_label_list(fields[1], path, number)))
    return out


# --------------------------------------------------------------------------- reviews
def split_reviews(source: str, ratings: Sequence[int] | None = None) -> list[Review]:
    """Splits a concat source on `` <REVBREAK> `` into reviews, pairing them with ratings."""
    parts = [part.strip() for part in source.split("<REVBREAK>")]
    parts = [part for part in parts if part]
    return [
        Review(
            index, text, ratings[index] if ratings is not None and index < len(ratings) else None
        )
        for index, text in enumerate(parts)
    ]


def linearise(
    reviews: Sequence[Review],
    method: str = "concat",
    *,
    embed: Any = None,
) -> str:
    """Turns the reviews of one paper into one source string.

    Methods (``LINEARISATIONS``):

    * ``concat``: reviews joined by `` <REVBREAK> `` (paragraphs keep their `` <sep> ``).
    * ``rate_concat``: as concat, reviews ordered by rating, highest first, each review prefixed
      with ``"rating N "`` (the upstream rate_* format was not inspected: this is our choice).
    * ``merge``: the longest review is the backbone; each paragraph of the other reviews is
      inserted after its most similar backbone paragraph (cosine of ``embed`` vectors; TF-IDF by
      default).
    * ``rate_merge``: merge where the backbone is the highest-rated review (ties: longest) and
      other reviews are visited in decreasing rating (our choice).
    * ``longest``: the longest review (in words) only.

    Args:
        reviews: the reviews.
        method: one of ``LINEARISATIONS``.
        embed: for merge: ``embed(list[str]) -> (N, D) array``; TF-IDF when None.
    """
    if method not in LINEARISATIONS:
        raise ValueError(f"unknown linearisation {method!r}; expected one of {LINEARISATIONS}")
    if not reviews:
        return ""
    by_length = sorted(reviews, key=lambda r: (-len(r.text.split()), r.index))
    if method == "longest":
        return by_length[0].text
    if method == "concat":
        return REVBREAK.join(r.text for r in reviews)
    by_rating = sorted(
        reviews, key=lambda r: (-(r.rating if r.rating is not None else -1), r.index)
    )
    if method == "rate_concat":
        return REVBREAK.join(
            (f"rating {r.rating} " if r.rating is not None else "") + r.text for r in by_rating
        )
    if method == "merge":
        backbone, others = by_length[0], [r for r in reviews if r is not by_length[0]]
    else:  # rate_merge
        top = max(
            reviews,
            key=lambda r: (r.rating if r.rating is not None else -1, len(r.text.split())),
        )
        backbone, others = top, [r for r in by_rating if r is not top]
    return _merge(backbone, others, embed)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("<sep>") if p.strip()]


def _merge(backbone: Review, others: Sequence[Review], embed: Any) -> str:
    import numpy as np

    slots: list[list[str]] = [[p] for p in _paragraphs(backbone.text)]
    extra = [p for review in others for p in _paragraphs(review.text)]
    if not slots:
        return SEP.join(extra).strip()
    if extra:
        texts = [slot[0] for slot in slots] + extra
        if embed is None:
            from mred.extractive import tfidf_matrix

            vectors = tfidf_matrix(texts)
        else:
            vectors = np.asarray(embed(texts), dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1.0, norms)
        similarity = vectors[len(slots) :] @ vectors[: len(slots)].T  # (extra, backbone)
        for paragraph, row in zip(extra, similarity, strict=True):
            slots[int(np.argmax(row))].append(paragraph)
    return SEP.join(p for slot in slots for p in slot).strip()


# --------------------------------------------------------------------------- a release directory
@dataclass(slots=True)
class Release:
    """Locates the files of an MReD release (complete or partial) under ``root``.

    Every accessor returns None (or an empty list) when the file is not there, so the same code
    reads the shared partial copy and the complete official release.
    """

    root: Path
    _cache: dict[str, Any] = field(default_factory=dict)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._cache = {}
        if not self.root.is_dir():
            raise UserError(f"{self.root}: not a directory")

    def _first(self, *relative: str) -> Path | None:
        for rel in relative:
            path = self.root / rel
            if path.is_file():
                return path
        return None

    def data_info_path(self) -> Path | None:
        return self._first("full_data_info.txt")

    def data_info(self) -> list[MetaReviewInfo]:
        path = self.data_info_path()
        if path is None:
            return []
        if "info" not in self._cache:
            self._cache["info"] = read_data_info(path)
        return list(self._cache["info"])

    def classification_path(self, split: str) -> Path | None:
        """``classification/data/{split}.txt`` (or ``{split}.txt`` directly under root)."""
        return self._first(f"classification/data/{split}.txt", f"{split}.txt")

    def bio_path(self, split: str) -> Path | None:
        name = "dev" if split == "val" else split
        return self._first(f"classification/LSTM-CRF/data/mred/{name}.txt")

    def labeled_documents(self, split: str) -> tuple[list[LabeledDocument], list[Path]]:
        """Gold-labelled meta-reviews of a split and the files they came from.

        The classification TSV when present; else the BIO file; for ``train`` without either,
        the gold train subsets ``target/filtered_train_labeled_sentences*.txt`` (the complete
        ``filtered_train_labeled_sentences.txt`` when present, else the high/low-score subsets).
        """
        path = self.classification_path(split)
        if path is not None:
            return read_labeled_sentences(path), [path]
        path = self.bio_path(split)
        if path is not None:
            return read_bio(path), [path]
        if split == "train":
            target = "summarization/extractive/data/target/"
            full = self._first(target + "filtered_train_labeled_sentences.txt")
            paths = (
                [full]
                if full is not None
                else [
                    p
                    for p in (
                        self._first(target + "filtered_train_labeled_sentences_high_score.txt"),
                        self._first(target + "filtered_train_labeled_sentences_low_score.txt"),
                    )
                    if p is not None
                ]
            )
            documents = [doc for p in paths for doc in read_labeled_sentences(p)]
            return documents, paths
        return [], []

    def generation_csv(self, split: str, linearisation: str = "longest", ctrl: str = "") -> Path:
        """Path of ``{split}_{linearisation}[_{ctrl}].csv`` (which may not exist)."""
        if ctrl in ("", "unctrl"):
            return (
                self.root
                / "summarization/abstractive/filtered_uncontrolled_data"
                / f"{split}_{linearisation}.csv"
            )
        return (
            self.root
            / "summarization/abstractive/filtered_controlled_data"
            / f"{split}_{linearisation}_{ctrl}.csv"
        )


def release_stats(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``mred stats`` contract for a release directory.

    Splits are those whose gold sentence files exist (classification TSV, else BIO); when none
    exists, the splits of ``full_data_info.txt`` (meta-reviews and sentences counted from its
    label lists). Returns ``{"splits": {split: {"meta_reviews", "sentences"}}, "labels": {...}}``
    with the label counts over the splits found, in ``LABELS`` order.
    """
    release = Release(root)
    splits: dict[str, dict[str, int]] = {}
    labels = dict.fromkeys(LABELS, 0)
    for split in ("train", "val", "test"):
        path = release.classification_path(split) or release.bio_path(split)
        if path is None:
            continue
        documents = read_labeled_sentences(path) if "LSTM-CRF" not in str(path) else read_bio(path)
        splits[split] = {
            "meta_reviews": len(documents),
            "sentences": sum(len(doc.sentences) for doc in documents),
        }
        for doc in documents:
            for label in doc.labels:
                labels[label] += 1
    if not splits:
        info = release.data_info()
        if not info:
            raise UserError(
                f"{release.root}: no MReD files found (expected full_data_info.txt or "
                f"classification/data/{{train,val,test}}.txt)"
            )
        for record in info:
            entry = splits.setdefault(record.split, {"meta_reviews": 0, "sentences": 0})
            entry["meta_reviews"] += 1
            entry["sentences"] += len(record.sentence_labels)
            for label in record.sentence_labels:
                labels[label] += 1
    return {"splits": splits, "labels": labels}


def to_hf_dataset(examples: Sequence[GenerationExample] | Sequence[LabeledDocument]) -> Any:
    """Exports records to a ``datasets.Dataset`` (needs the optional ``datasets`` package).

    Generation examples become ``{text, summary, source, control, mode}`` rows; labelled
    documents become ``{paper_id, sentences, labels}`` rows.
    """
    try:
        import datasets
    except ImportError:
        raise UserError(
            "to_hf_dataset needs the 'datasets' package: pip install 'mred[datasets]'"
        ) from None
    rows: dict[str, list[Any]]
    if examples and isinstance(examples[0], LabeledDocument):
        docs = [e for e in examples if isinstance(e, LabeledDocument)]
        rows = {
            "paper_id": [d.paper_id for d in docs],
            "sentences": [d.texts for d in docs],
            "labels": [d.labels for d in docs],
        }
    else:
        gens = [e for e in examples if isinstance(e, GenerationExample)]
        rows = {
            "text": [e.text for e in gens],
            "summary": [e.summary for e in gens],
            "source": [e.source for e in gens],
            "control": [list(e.control) for e in gens],
            "mode": [e.mode for e in gens],
        }
    return datasets.Dataset.from_dict(rows)
