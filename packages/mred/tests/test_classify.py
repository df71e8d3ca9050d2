from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from mred.classify import (
    ClassifierConfig,
    SentenceClassifier,
    TrainConfig,
    evaluate_classifier,
    train_classifier,
)
from mred.crf import LinearChainCRF
from mred.data import LABELS, LabeledDocument, LabeledSentence
from mred.metrics import classification_metrics, control_accuracy, edit_distance


def _brute_force(
    crf: LinearChainCRF, emissions: torch.Tensor
) -> tuple[list[float], list[list[int]]]:
    paths = [list(p) for p in itertools.product(range(crf.num_tags), repeat=emissions.shape[0])]
    with torch.no_grad():
        scores = [float(crf.path_score(emissions, torch.tensor(p))) for p in paths]
    return scores, paths


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_crf_viterbi_and_partition_against_brute_force(length: int) -> None:
    torch.manual_seed(length)
    crf = LinearChainCRF(3)
    with torch.no_grad():
        crf.start.normal_()
        crf.end.normal_()
        crf.transitions.normal_()
    emissions = torch.randn(length, 3)
    scores, paths = _brute_force(crf, emissions)
    best_path, best_score = crf.viterbi(emissions)
    assert best_score == pytest.approx(max(scores), abs=1e-5)
    assert best_path == paths[scores.index(max(scores))]
    assert float(crf.log_partition(emissions).detach()) == pytest.approx(
        float(torch.logsumexp(torch.tensor(scores), dim=0)), abs=1e-5
    )


def test_crf_batched_loss_equals_sum_of_single() -> None:
    torch.manual_seed(0)
    crf = LinearChainCRF(4)
    lengths = [3, 1, 5]
    emissions = [torch.randn(n, 4) for n in lengths]
    tags = [torch.randint(0, 4, (n,)) for n in lengths]
    single = sum(crf.neg_log_likelihood(e, t) for e, t in zip(emissions, tags, strict=True))
    padded = torch.nn.utils.rnn.pad_sequence(emissions, batch_first=True)
    padded_tags = torch.nn.utils.rnn.pad_sequence(tags, batch_first=True)
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    batched = crf.neg_log_likelihood_batch(padded, padded_tags, mask)
    assert float(batched.detach()) == pytest.approx(float(single.detach()), rel=1e-5)


def _synthetic_documents(n: int, seed: int) -> list[LabeledDocument]:
    """Meta-reviews whose label depends on the words and on the position (first: abstract)."""
    rng = random.Random(seed)
    phrases = {
        "abstract": "this paper proposes a method for",
        "strength": "the results are strong and convincing",
        "weakness": "the experiments are limited and weak",
        "decision": "i recommend acceptance of this paper",
    }
    documents = []
    for d in range(n):
        labels = ["abstract", *rng.sample(["strength", "weakness"], 2), "decision"]
        sentences = tuple(
            LabeledSentence(f"p{d}", f"{phrases[label]} {rng.choice(['x', 'y', 'z'])}.", label)
            for label in labels
        )
        documents.append(LabeledDocument(f"p{d}", sentences))
    return documents


def test_bow_classifier_learns_and_round_trips(tmp_path: Path) -> None:
    train = _synthetic_documents(24, 0)
    dev = _synthetic_documents(8, 1)
    history = []
    classifier, result = train_classifier(
        train,
        dev,
        ClassifierConfig(model="bow", min_count=1, dropout=0.0),
        TrainConfig(out_dir=tmp_path, epochs=6, lr=1e-2, batch_documents=4),
        on_epoch=history.append,
        show_progress=False,
    )
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result["dev"]["accuracy"] == pytest.approx(100.0)
    loaded = SentenceClassifier.load(tmp_path)
    texts = [d.texts for d in dev]
    assert loaded.predict(texts) == classifier.predict(texts)
    assert evaluate_classifier(loaded, dev)["accuracy"] == pytest.approx(100.0)


def test_classifier_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    train = _synthetic_documents(12, 2)
    config = ClassifierConfig(model="bow", min_count=1)

    def run(out: Path, epochs: int, resume: bool) -> SentenceClassifier:
        classifier, _ = train_classifier(
            train,
            [],
            config,
            TrainConfig(out_dir=out, epochs=epochs, lr=1e-2, batch_documents=4, resume=resume),
            show_progress=False,
        )
        return classifier

    straight = run(tmp_path / "a", 3, False)
    run(tmp_path / "b", 2, False)
    resumed = run(tmp_path / "b", 3, True)
    for (name, p), (_, q) in zip(
        straight.tagger.state_dict().items(), resumed.tagger.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_tiny_transformer_classifier_from_config(tmp_path: Path) -> None:
    train = _synthetic_documents(8, 3)
    config = ClassifierConfig(model="transformer", min_count=1, d_model=16, layers=1, heads=2)
    classifier, result = train_classifier(
        train,
        train[:2],
        config,
        TrainConfig(out_dir=tmp_path, epochs=2, lr=1e-3),
        show_progress=False,
    )
    assert 0.0 <= result["dev"]["accuracy"] <= 100.0
    loaded = SentenceClassifier.load(tmp_path)
    assert loaded.predict([train[0].texts]) == classifier.predict([train[0].texts])


def test_local_transformer_path_is_loaded_not_downloaded(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted(
        {w.strip(".") for d in _synthetic_documents(4, 4) for t in d.texts for w in t.split()}
    )
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]) + "\n")
    model_dir = tmp_path / "encoder"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model_dir)
    BertModel(
        BertConfig(
            vocab_size=len(words) + 6,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(model_dir)
    train = _synthetic_documents(6, 5)
    classifier, _ = train_classifier(
        train,
        train[:2],
        ClassifierConfig(model=str(model_dir), freeze_encoder=True),
        TrainConfig(out_dir=tmp_path / "clf", epochs=1),
        show_progress=False,
    )
    loaded = SentenceClassifier.load(tmp_path / "clf")
    assert loaded.predict([train[0].texts]) == classifier.predict([train[0].texts])
    # frozen encoder: per-epoch checkpoints hold only the trained parts, and resume from them
    checkpoint = next((tmp_path / "clf" / "checkpoints").iterdir())
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert saved and not any(key.startswith("encoder") for key in saved)
    _, result = train_classifier(
        train,
        train[:2],
        ClassifierConfig(model=str(model_dir), freeze_encoder=True),
        TrainConfig(out_dir=tmp_path / "clf", epochs=2, resume=True),
        show_progress=False,
    )
    assert [r["epoch"] for r in result["history"]] == [1, 2]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="model"):
        ClassifierConfig(model="/no/such/dir")
    with pytest.raises(ValueError, match="dropout"):
        ClassifierConfig(dropout=1.5)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(out_dir=".", epochs=0)


def test_classification_metrics() -> None:
    gold = [["abstract", "weakness"], ["decision"]]
    predicted = [["abstract", "strength"], ["decision"]]
    metrics = classification_metrics(gold, predicted)
    assert metrics["accuracy"] == pytest.approx(200 / 3)
    assert metrics["per_label"]["abstract"]["f1"] == pytest.approx(100.0)
    assert metrics["per_label"]["weakness"]["f1"] == 0.0
    # abstract and decision 100, the seven others 0
    assert metrics["macro_f1"] == pytest.approx(200 / len(LABELS))
    with pytest.raises(ValueError):
        classification_metrics([["abstract"]], [["abstract", "misc"]])


def test_control_accuracy() -> None:
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1
    result = control_accuracy(
        [["abstract", "weakness"], ["abstract", "decision"]],
        [["abstract", "weakness"], ["abstract"]],
    )
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["edit_distance"] == pytest.approx((0 + 1 / 2) / 2)
    assert result["sentence_accuracy"] == pytest.approx(100 * 3 / 4)
