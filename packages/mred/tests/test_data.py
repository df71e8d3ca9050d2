from __future__ import annotations

from pathlib import Path

import pytest

from mred.data import (
    LABELS,
    GenerationExample,
    MReDFormatError,
    Release,
    Review,
    bio_to_label,
    collapse_segments,
    labels_to_bio,
    linearise,
    parse_control,
    read_bio,
    read_data_info,
    read_generation_csv,
    read_labeled_sentences,
    read_lines,
    read_sentence_labels,
    release_stats,
    seg_ctrl,
    sent_ctrl,
    split_reviews,
    split_sentences,
)


def test_control_prefix_round_trip_and_double_arrow() -> None:
    labels = ["abstract", "abstract", "strength", "decision"]
    assert sent_ctrl(labels) == "abstract | abstract | strength | decision  ==> "
    assert seg_ctrl(labels) == "abstract | strength | decision  ==> "
    parsed, source = parse_control(sent_ctrl(labels) + "The source.")
    assert parsed == tuple(labels) and source == "The source."
    parsed, source = parse_control("strength | weakness  ==>  ==> tl;dr: <sep> text")
    assert parsed == ("strength", "weakness") and source == "tl;dr: <sep> text"
    assert parse_control("no prefix here") == (None, "no prefix here")
    with pytest.raises(ValueError, match="strengths"):
        parse_control("strengths  ==> x")


def test_collapse_segments() -> None:
    assert collapse_segments(["a", "a", "b", "a", "a"]) == ["a", "b", "a"]
    assert collapse_segments([]) == []


def test_bio_conversion() -> None:
    labels = ["abstract", "abstract", "misc", "weakness", "weakness", "abstract"]
    tags = labels_to_bio(labels)
    assert tags == ["B-abstract", "I-abstract", "O", "B-weakness", "I-weakness", "B-abstract"]
    assert [bio_to_label(t) for t in tags] == labels
    with pytest.raises(ValueError):
        bio_to_label("X_weakness")


def test_data_info_fields(release: Path) -> None:
    records = read_data_info(release / "full_data_info.txt")
    assert len(records) == 4
    first = records[0]
    assert first.split == "val" and first.paper_id == "2018-1" and first.year == 2018
    assert first.ratings == (8, 7, 7)  # 'R1: 8, R2: 7, R3: 7. ' with the trailing '. '
    assert first.reviews == 3
    assert first.segment_labels == tuple(collapse_segments(first.sentence_labels))


def test_classification_tsv_and_bio_agree(release: Path) -> None:
    tsv = read_labeled_sentences(release / "classification/data/val.txt")
    bio = read_bio(release / "classification/LSTM-CRF/data/mred/dev.txt")
    assert [d.paper_id for d in tsv] == ["2018-1", "2018-2"]
    assert [d.labels for d in tsv] == [d.labels for d in bio]
    assert "misc" in tsv[1].labels  # O in the BIO file
    assert " <sep> " in tsv[1].texts[0]  # kept inside a sentence, not split


def test_generation_csvs(release: Path) -> None:
    root = release / "summarization/abstractive"
    sent = read_generation_csv(root / "filtered_controlled_data/val_longest_sent-ctrl.csv")
    seg = read_generation_csv(root / "filtered_controlled_data/val_longest_seg-ctrl.csv")
    plain = read_generation_csv(root / "filtered_uncontrolled_data/val_longest.csv")
    assert [e.mode for e in sent] == ["sent-ctrl"] * 2
    assert [e.mode for e in seg] == ["seg-ctrl"] * 2
    assert [e.mode for e in plain] == ["unctrl"] * 2
    assert [tuple(collapse_segments(e.control)) for e in sent] == [e.control for e in seg]
    assert sent[1].source == plain[1].source  # the double '==>' row is stripped
    assert not sent[1].source.startswith("==>")
    assert sent[0].text.startswith("abstract | strength | weakness | decision  ==> ")


def test_targets_and_sentence_labels(release: Path) -> None:
    target = release / "summarization/extractive/data/target"
    assert len(read_lines(target / "filtered_val.target")) == 2
    labels = read_sentence_labels(target / "filtered_test_sentence_labels.txt")
    docs = read_labeled_sentences(release / "classification/data/val.txt")
    assert [list(sequence) for _, sequence in labels] == [d.labels for d in docs]


@pytest.mark.parametrize(
    ("name", "reader", "line", "fragment"),
    [
        ("malformed.tsv", read_labeled_sentences, 2, "expected 3 TAB-separated fields"),
        ("malformed.csv", read_generation_csv, 3, "expected 2 CSV fields"),
        ("badlabel_sent-ctrl.csv", read_generation_csv, 2, "'strengths'"),
    ],
)
def test_malformed_lines_name_file_and_line(assets: Path, name, reader, line, fragment) -> None:
    with pytest.raises(MReDFormatError) as info:
        reader(assets / name)
    message = str(info.value)
    assert message.startswith(f"{assets / name}:{line}: ") and fragment in message
    assert "\n" not in message


def test_unknown_label_in_tsv(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("p\tok.\tabstract\np\tbad.\tpraise\n")
    with pytest.raises(MReDFormatError, match=r"x.txt:2: unknown label 'praise'"):
        read_labeled_sentences(path)


def test_data_info_bad_field_count(tmp_path: Path) -> None:
    path = tmp_path / "full_data_info.txt"
    path.write_text("val\t2018-1\t2018\n")
    with pytest.raises(MReDFormatError, match=r"full_data_info.txt:1: expected 12"):
        read_data_info(path)


def test_split_sentences() -> None:
    text = "We use e.g. ResNets. It works well! Does it scale? <sep> Yes. 3 runs were done."
    assert split_sentences(text) == [
        "We use e.g. ResNets.",
        "It works well!",
        "Does it scale?",
        "Yes.",
        "3 runs were done.",
    ]


def test_linearisations() -> None:
    reviews = split_reviews(
        "Short review about results. <REVBREAK> A much longer review. <sep> It talks about "
        "results in detail and the method in detail. <REVBREAK> Third review on the method.",
        ratings=[3, 8, 6],
    )
    assert [r.rating for r in reviews] == [3, 8, 6]
    assert linearise(reviews, "longest") == reviews[1].text
    assert linearise(reviews, "concat").count("<REVBREAK>") == 2
    rate = linearise(reviews, "rate_concat")
    assert rate.startswith("rating 8 ") and rate.index("rating 6") < rate.index("rating 3")
    merged = linearise(reviews, "merge")
    # every paragraph is kept once, and the backbone (longest) review comes first
    assert merged.startswith("A much longer review.")
    assert sorted(merged.split(" <sep> ")) == sorted(
        [
            "A much longer review.",
            reviews[1].text.split(" <sep> ")[1],
            reviews[0].text,
            reviews[2].text,
        ]
    )
    assert linearise(reviews, "rate_merge").startswith("A much longer review.")
    assert linearise([Review(0, "Only one.", None)], "merge") == "Only one."
    with pytest.raises(ValueError):
        linearise(reviews, "shuffle")


def test_release_stats_of_fixture(release: Path) -> None:
    stats = release_stats(release)
    assert stats["splits"] == {
        "train": {"meta_reviews": 2, "sentences": 9},
        "val": {"meta_reviews": 2, "sentences": 10},
    }
    assert list(stats["labels"]) == list(LABELS) and sum(stats["labels"].values()) == 19


def test_release_stats_falls_back_to_data_info(tmp_path: Path, release: Path) -> None:
    (tmp_path / "full_data_info.txt").write_text((release / "full_data_info.txt").read_text())
    stats = release_stats(tmp_path)
    assert stats["splits"]["train"] == {"meta_reviews": 2, "sentences": 9}


def test_to_hf_dataset_optional(release: Path) -> None:
    pytest.importorskip("datasets")
    from mred.data import to_hf_dataset

    rows = read_generation_csv(
        release / "summarization/abstractive/filtered_uncontrolled_data/val_longest.csv"
    )
    assert len(to_hf_dataset(rows)) == 2


def test_generation_example_text() -> None:
    example = GenerationExample(source="s", summary="t", control=("abstract",), mode="sent-ctrl")
    assert example.text == "abstract  ==> s"


# ----------------------------------------------------------------------------- shared data
def test_shared_counts(shared: Path) -> None:
    release = Release(shared)
    info = release.data_info()
    assert len(info) == 7089
    by_split: dict[str, list[int]] = {}
    for record in info:
        by_split.setdefault(record.split, [0, 0])
        by_split[record.split][0] += 1
        by_split[record.split][1] += len(record.sentence_labels)
    assert by_split == {"train": [5671, 37252], "val": [709, 4272], "test": [709, 4405]}
    assert sum(r.reviews for r in info) == 23675
    val, _ = release.labeled_documents("val")
    assert (len(val), sum(len(d.sentences) for d in val)) == (709, 4272)
    dev = read_bio(shared / "classification/LSTM-CRF/data/mred/dev.txt")
    assert sum(len(d.sentences) for d in dev) == 4273
    gold = {r.paper_id: r.sentence_labels for r in info if r.split == "train"}
    train, files = release.labeled_documents("train")
    assert len(files) == 2 and (len(train), sum(len(d.sentences) for d in train)) == (1011, 5310)
    assert all(tuple(d.labels) == gold[d.paper_id] for d in train)


def test_shared_generation_csvs(shared: Path) -> None:
    root = shared / "summarization/abstractive"
    sent = read_generation_csv(root / "filtered_controlled_data/val_longest_sent-ctrl.csv")
    seg = read_generation_csv(root / "filtered_controlled_data/val_longest_seg-ctrl.csv")
    plain = read_generation_csv(root / "filtered_uncontrolled_data/val_longest.csv")
    assert len(sent) == len(seg) == len(plain) == 665
    assert [tuple(collapse_segments(e.control)) for e in sent] == [e.control for e in seg]
    assert not any(e.source.startswith("==>") for e in sent)
    # The data README counts 3 rows whose "longest review" differs; one of them is row 403, whose
    # review itself contains '==>' (a naive split at '==>' makes it differ). Parsed, 2 differ.
    assert sum(a.source != b.source for a, b in zip(sent, plain, strict=True)) == 2
    assert "==>" in plain[401].source and plain[401].mode == "unctrl"
    info = {r.paper_id: r for r in read_data_info(shared / "full_data_info.txt")}
    filtered = [r for r in info.values() if r.split == "val" and 20 <= r.word_count <= 400]
    assert len(filtered) == 665
    targets = read_lines(shared / "summarization/extractive/data/target/filtered_val.target")
    assert targets == [e.summary for e in plain]


def test_shared_labeled_source(shared: Path) -> None:
    root = shared / "summarization/extractive/data/labeled_source"
    high = read_labeled_sentences(root / "filtered_val_labeled_sentences_high_score.txt")
    low = read_labeled_sentences(root / "filtered_val_labeled_sentences_low_score.txt")
    assert (len(high), sum(len(d.sentences) for d in high)) == (64, 4043)
    assert (len(low), sum(len(d.sentences) for d in low)) == (63, 3954)
