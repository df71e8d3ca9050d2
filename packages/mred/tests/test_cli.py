from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mred.cli import main
from mred.data import read_generation_csv, read_lines

CONTROLLED = "summarization/abstractive/filtered_controlled_data/val_longest_sent-ctrl.csv"
UNCONTROLLED = "summarization/abstractive/filtered_uncontrolled_data/val_longest.csv"
TARGET = "summarization/extractive/data/target/filtered_val.target"


def test_evaluate_contract(tmp_path: Path) -> None:
    pred = tmp_path / "pred.txt"
    ref = tmp_path / "ref.txt"
    pred.write_text("the cat sat on the mat\nreviewers liked the paper\n")
    ref.write_text("the cat sat on the mat\nthe reviewers agreed the paper is weak\n")
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "n"}
    assert scores["n"] == 2 and isinstance(scores["n"], int)
    assert 50.0 < scores["rouge1"] < 100.0 and all(
        isinstance(scores[k], float) for k in ("rouge1", "rouge2", "rougeL")
    )


def test_evaluate_misaligned_is_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "p.txt").write_text("a\nb\n")
    (tmp_path / "r.txt").write_text("a\n")
    code = main(["evaluate", "--pred", str(tmp_path / "p.txt"), "--ref", str(tmp_path / "r.txt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "must align" in err


def test_stats_contract(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    assert main(["stats", str(release), "--json", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert set(stats) == {"splits", "labels"}
    assert stats["splits"]["val"] == {"meta_reviews": 2, "sentences": 10}
    assert stats["labels"]["misc"] == 1


def test_train_classify_summarize_evaluate(release: Path, tmp_path: Path, capsys) -> None:
    clf = tmp_path / "clf"
    code = main(
        [
            "train-classifier",
            "--data",
            str(release),
            "--model",
            "bow",
            "--out",
            str(clf),
            "--epochs",
            "3",
            "--json",
            str(tmp_path / "train.json"),
        ]
    )
    assert code == 0 and (clf / "classifier.pt").is_file()
    trained = json.loads((tmp_path / "train.json").read_text())
    assert trained["train_meta_reviews"] == 2 and "accuracy" in trained["dev"]

    assert (
        main(
            [
                "classify",
                "--classifier",
                str(clf),
                "--input",
                str(release / "classification/data/val.txt"),
                "--out",
                str(tmp_path / "l.tsv"),
                "--json",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "c.json").read_text())["sentences"] == 10

    rows = read_generation_csv(release / CONTROLLED)
    for method in ("lexrank", "textrank", "mmr"):
        pred = tmp_path / f"{method}.txt"
        assert (
            main(
                [
                    "summarize",
                    "--method",
                    method,
                    "--input",
                    str(release / UNCONTROLLED),
                    "--out",
                    str(pred),
                ]
            )
            == 0
        )
        assert len(read_lines(pred)) == 2
        controlled = tmp_path / f"{method}_ctrl.txt"
        assert (
            main(
                [
                    "summarize",
                    "--method",
                    method,
                    "--controlled",
                    "--classifier",
                    str(clf),
                    "--input",
                    str(release / CONTROLLED),
                    "--out",
                    str(controlled),
                    "--json",
                    str(tmp_path / "s.json"),
                ]
            )
            == 0
        )
        labels = json.loads((tmp_path / "s.json").read_text())["labels"]
        assert [len(x) for x in labels] == [len(r.control) for r in rows]
    scores = tmp_path / "e.json"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "textrank_ctrl.txt"),
                "--ref",
                str(release / CONTROLLED),
                "--classifier",
                str(clf),
                "--json",
                str(scores),
            ]
        )
        == 0
    )
    result = json.loads(scores.read_text())
    assert result["n"] == 2 and result["control"]["n"] == 2


def test_uncontrolled_takes_control_length(release: Path, tmp_path: Path) -> None:
    from mred.data import split_sentences

    pred = tmp_path / "p.txt"
    assert (
        main(
            [
                "summarize",
                "--method",
                "textrank",
                "--input",
                str(release / CONTROLLED),
                "--out",
                str(pred),
            ]
        )
        == 0
    )
    rows = read_generation_csv(release / CONTROLLED)
    lines = read_lines(pred)
    assert [len(split_sentences(line)) for line in lines] == [len(r.control) for r in rows]
    # without a control: as many sentences as the reference has
    assert (
        main(
            [
                "summarize",
                "--method",
                "textrank",
                "--input",
                str(release / UNCONTROLLED),
                "--out",
                str(pred),
            ]
        )
        == 0
    )
    assert [len(split_sentences(x)) for x in read_lines(pred)] == [
        min(5, len(split_sentences(r.source))) for r in rows
    ]


def test_controlled_without_classifier_fails(release: Path, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "summarize",
            "--method",
            "lexrank",
            "--controlled",
            "--input",
            str(release / CONTROLLED),
            "--out",
            str(tmp_path / "x.txt"),
        ]
    )
    assert code == 2 and "--classifier" in capsys.readouterr().err


def test_malformed_csv_is_one_line_error(assets: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad_sent-ctrl.csv"
    shutil.copy(assets / "malformed.csv", bad)
    code = main(
        ["summarize", "--method", "lexrank", "--input", str(bad), "--out", str(tmp_path / "x.txt")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"mred: error: {bad}:3: ") and err.count("\n") == 1


def test_stats_on_missing_directory(capsys) -> None:
    assert main(["stats", "/no/such/mred"]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_shared_contracts(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    assert main(["stats", str(shared), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["splits"]["val"] == {"meta_reviews": 709, "sentences": 4272}


def test_train_generator_and_generate(release: Path, tmp_path: Path) -> None:
    model = tmp_path / "bart"
    code = main(
        [
            "train-generator",
            "--input",
            str(release / CONTROLLED),
            "--out",
            str(model),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--save-every",
            "2",
            "--max-source-length",
            "64",
            "--max-target-length",
            "32",
            "--json",
            str(tmp_path / "g.json"),
        ]
    )
    assert code == 0 and json.loads((tmp_path / "g.json").read_text())["steps"] == 3
    assert (model / "checkpoints").is_dir()
    pred = tmp_path / "gen.txt"
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--input",
                str(release / CONTROLLED),
                "--out",
                str(pred),
                "--num-beams",
                "1",
                "--min-length",
                "0",
                "--max-length",
                "8",
            ]
        )
        == 0
    )
    assert len(read_lines(pred)) == 2


def test_training_data_without_the_full_train_split_adds_val_unless_held_out(
    shared: Path,
) -> None:
    # the shared copy has the gold train subsets and val, not classification/data/train.txt
    import argparse

    from mred.cli import _load_training_data

    args = argparse.Namespace(data=shared, hold_out_val=False, train_on_val=False)
    train, dev, info = _load_training_data(args)
    assert info["train_meta_reviews"] == len(train) == 1011 + len(dev)
    assert any("NOT held out" in note for note in info["notes"])
    args.hold_out_val = True
    train, dev, info = _load_training_data(args)
    assert len(train) == 1011 and len(dev) == 709
    assert not any("NOT held out" in note for note in info["notes"])
