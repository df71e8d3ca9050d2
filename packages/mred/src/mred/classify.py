"""Sentence classifier: sentence encoder → BiLSTM over the sentences of a document → CRF.

As in the paper (upstream ``classification/LSTM-CRF``), a meta-review is a sequence of
sentences; each sentence becomes one vector, a BiLSTM runs over the sentence sequence and a
linear-chain CRF decodes one of the nine labels per sentence. Two sentence encoders:

* ``bow`` (default, fast, no weights): the mean of learned embeddings of the sentence's stemmed
  unigrams and bigrams (``nn.EmbeddingBag``).
* ``transformer``: a ``transformers`` encoder, first-token vector (``[CLS]``/``<s>``). Built from
  a tiny ``BertConfig`` with a word-level vocabulary when no weights are given, or loaded from a
  local directory (``model="path/to/roberta-base"``); nothing is ever downloaded.

The CRF runs over the nine labels directly (upstream runs it over BIO tags; decoding B-x and I-x
to x makes the two equivalent for accuracy). Shapes: ``S`` sentences, ``D`` sentence vector,
``H`` BiLSTM output, ``K`` labels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from mred.crf import LinearChainCRF
from mred.data import LABEL_INDEX, LABELS, LabeledDocument
from mred.metrics import classification_metrics
from mred.rouge import tokenize

__all__ = [
    "ClassifierConfig",
    "SentenceClassifier",
    "TrainConfig",
    "WordVocabulary",
    "evaluate_classifier",
    "train_classifier",
]

CLASSIFIER_FILE = "classifier.pt"


@dataclass(kw_only=True, slots=True)
class ClassifierConfig:
    """What the classifier is made of.

    Args:
        model: ``"bow"``, ``"transformer"`` (tiny BERT from a config) or a local directory
            holding a ``transformers`` encoder and its tokenizer.
        embedding_dim: bow embedding size.
        ngrams: bow n-gram order (1 = unigrams, 2 = + bigrams).
        min_count: vocabulary threshold (training-set count).
        lstm_hidden: BiLSTM output size (both directions together; upstream 200).
        dropout: dropout on sentence vectors and BiLSTM outputs (upstream 0.5).
        use_crf: decode with the CRF; False: independent softmax per sentence.
        d_model, layers, heads: size of the tiny transformer built from a config.
        max_length: tokens per sentence for the transformer (upstream truncates at 512).
        freeze_encoder: keep the transformer fixed and cache its sentence vectors (fast on CPU).
        pooling: sentence vector of a transformer: ``"cls"`` (first token, upstream) or
            ``"mean"`` (mean over tokens, how sentence-transformers models are trained).
    """

    model: str = "bow"
    embedding_dim: int = 128
    ngrams: int = 2
    min_count: int = 2
    lstm_hidden: int = 200
    dropout: float = 0.5
    use_crf: bool = True
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    max_length: int = 64
    freeze_encoder: bool = False
    pooling: str = "cls"

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "lstm_hidden", "d_model", "layers", "heads", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ClassifierConfig.{name} must be a positive int, got {value!r}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(
                f"ClassifierConfig.pooling must be 'cls' or 'mean', got {self.pooling!r}"
            )
        if self.ngrams not in (1, 2, 3):
            raise ValueError(f"ClassifierConfig.ngrams must be 1, 2 or 3, got {self.ngrams!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ClassifierConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.lstm_hidden % 2:
            raise ValueError(f"ClassifierConfig.lstm_hidden must be even, got {self.lstm_hidden}")
        if self.d_model % self.heads:
            raise ValueError(
                f"ClassifierConfig.d_model ({self.d_model}) must be divisible by heads "
                f"({self.heads})"
            )
        if self.model not in ("bow", "transformer") and not Path(self.model).is_dir():
            raise ValueError(
                f"ClassifierConfig.model must be 'bow', 'transformer' or a local model "
                f"directory, got {self.model!r}"
            )

    @property
    def kind(self) -> str:
        return self.model if self.model in ("bow", "transformer") else "pretrained"


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """How to train. ``out_dir`` receives ``classifier.pt`` (best dev accuracy) and
    ``checkpoints/`` (one per epoch; ``resume=True`` continues from the newest)."""

    out_dir: str | os.PathLike[str]
    epochs: int = 15
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_documents: int = 8
    grad_clip: float = 1.0
    patience: int = 5
    seed: int = 42
    resume: bool = False
    max_train_documents: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_documents", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")


# --------------------------------------------------------------------------- vocabulary
class WordVocabulary:
    """Stemmed n-gram features → ids; id 0 is unknown/padding, then ``specials``."""

    def __init__(self, entries: Sequence[str], ngrams: int = 1, specials: Sequence[str] = ()):
        self.ngrams = ngrams
        self.specials = list(specials)
        self.entries = ["<unk>", *self.specials, *[e for e in entries if e not in specials]]
        self.index = {entry: i for i, entry in enumerate(self.entries)}

    def __len__(self) -> int:
        return len(self.entries)

    @staticmethod
    def features(text: str, ngrams: int) -> list[str]:
        tokens = tokenize(text, use_stemmer=True)
        out = list(tokens)
        for n in range(2, ngrams + 1):
            out += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return out

    @classmethod
    def build(
        cls, texts: Sequence[str], ngrams: int, min_count: int, specials: Sequence[str] = ()
    ) -> WordVocabulary:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls.features(text, ngrams))
        entries = sorted(e for e, c in counts.items() if c >= min_count)
        return cls(entries, ngrams, specials)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(f, 0) for f in self.features(text, self.ngrams)]


# --------------------------------------------------------------------------- encoders
class BowEncoder(nn.Module):
    """Mean of n-gram embeddings: a list of S id lists → (S, D)."""

    def __init__(self, vocabulary: WordVocabulary, dim: int) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.bag = nn.EmbeddingBag(len(vocabulary), dim, mode="mean", padding_idx=0)
        self.output_dim = dim

    def prepare(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.vocabulary.encode(t) or [0] for t in texts]
        offsets = torch.tensor([0, *np.cumsum([len(i) for i in ids])[:-1].tolist()])
        return torch.tensor([i for row in ids for i in row], dtype=torch.long), offsets

    def forward(self, prepared: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        flat, offsets = prepared
        return self.bag(flat, offsets)  # (S, D)


class TransformerEncoder(nn.Module):
    """First-token vector of a ``transformers`` encoder: S texts → (S, D)."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int, pooling: str = "cls"
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling
        self.output_dim = int(cast(Any, model).config.hidden_size)

    def prepare(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(self.tokenizer, WordVocabulary):
            cls_id, sep_id = 1, 2
            rows = [
                [cls_id, *self.tokenizer.encode(t)[: self.max_length - 2], sep_id] for t in texts
            ]
            width = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            return {"input_ids": ids, "attention_mask": mask}
        batch = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden_STD = self.model(**prepared).last_hidden_state
        if self.pooling == "mean":
            mask_ST1 = prepared["attention_mask"][:, :, None].to(hidden_STD.dtype)
            return (hidden_STD * mask_ST1).sum(dim=1) / mask_ST1.sum(dim=1).clamp(min=1.0)
        return hidden_STD[:, 0]  # (S, D)


class SentenceTagger(nn.Module):
    """Encoder → dropout → BiLSTM over sentences → dropout → linear → CRF."""

    encoder: BowEncoder | TransformerEncoder  # a submodule; annotated for type checkers

    def __init__(self, encoder: BowEncoder | TransformerEncoder, config: ClassifierConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config
        dim = int(getattr(encoder, "output_dim"))  # noqa: B009
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(dim, config.lstm_hidden // 2, bidirectional=True, batch_first=True)
        self.to_labels = nn.Linear(config.lstm_hidden, len(LABELS))
        self.crf = LinearChainCRF(len(LABELS))

    def emissions(self, sentence_vectors_SD: torch.Tensor) -> torch.Tensor:
        hidden_1SH, _ = self.lstm(self.dropout(sentence_vectors_SD)[None])
        return self.to_labels(self.dropout(hidden_1SH[0]))  # (S, K)

    def loss(self, sentence_vectors_SD: torch.Tensor, tags_S: torch.Tensor) -> torch.Tensor:
        emissions_SK = self.emissions(sentence_vectors_SD)
        if self.config.use_crf:
            return self.crf.neg_log_likelihood(emissions_SK, tags_S)
        return nn.functional.cross_entropy(emissions_SK, tags_S, reduction="sum")

    def batch_loss(
        self, vectors: Sequence[torch.Tensor], tags: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Summed loss over several documents at once (padded, packed BiLSTM, batched CRF)."""
        lengths = torch.tensor([v.shape[0] for v in vectors])
        padded_BSD = nn.utils.rnn.pad_sequence(list(vectors), batch_first=True)
        tags_BS = nn.utils.rnn.pad_sequence(list(tags), batch_first=True)
        mask_BS = torch.arange(padded_BSD.shape[1])[None, :] < lengths[:, None]
        packed = nn.utils.rnn.pack_padded_sequence(
            self.dropout(padded_BSD), lengths, batch_first=True, enforce_sorted=False
        )
        hidden, _ = self.lstm(packed)
        hidden_BSH, _ = nn.utils.rnn.pad_packed_sequence(
            hidden, batch_first=True, total_length=padded_BSD.shape[1]
        )
        emissions_BSK = self.to_labels(self.dropout(hidden_BSH))
        if self.config.use_crf:
            return self.crf.neg_log_likelihood_batch(emissions_BSK, tags_BS, mask_BS)
        return nn.functional.cross_entropy(
            emissions_BSK[mask_BS], tags_BS[mask_BS], reduction="sum"
        )

    @torch.no_grad()
    def decode(self, sentence_vectors_SD: torch.Tensor) -> list[int]:
        emissions_SK = self.emissions(sentence_vectors_SD)
        if self.config.use_crf:
            return self.crf.viterbi(emissions_SK)[0]
        return emissions_SK.argmax(dim=-1).tolist()


# --------------------------------------------------------------------------- the classifier
def _build_encoder(
    config: ClassifierConfig, texts: Sequence[str], vocabulary: WordVocabulary | None = None
) -> tuple[BowEncoder | TransformerEncoder, dict[str, Any]]:
    """The sentence encoder and what must be saved to rebuild it."""
    if config.kind == "bow":
        vocabulary = vocabulary or WordVocabulary.build(texts, config.ngrams, config.min_count)
        return BowEncoder(vocabulary, config.embedding_dim), {"vocabulary": vocabulary.entries}
    from transformers import AutoModel, BertConfig, BertModel

    if config.kind == "transformer":
        vocabulary = vocabulary or WordVocabulary.build(
            texts, 1, config.min_count, specials=("[CLS]", "[SEP]")
        )
        bert = BertConfig(
            vocab_size=len(vocabulary),
            hidden_size=config.d_model,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=4 * config.d_model,
            max_position_embeddings=config.max_length + 2,
        )
        model = BertModel(bert, add_pooling_layer=False)
        encoder = TransformerEncoder(model, vocabulary, config.max_length, config.pooling)
        return encoder, {"vocabulary": vocabulary.entries}
    from transformers import AutoTokenizer

    from mred._hf import quiet_transformers

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(config.model, local_files_only=True)
        model = AutoModel.from_pretrained(config.model, local_files_only=True)
    return TransformerEncoder(model, tokenizer, config.max_length, config.pooling), {}


class SentenceClassifier:
    """A trained tagger plus what it needs to read raw sentences; ``predict`` labels documents."""

    def __init__(self, tagger: SentenceTagger, config: ClassifierConfig) -> None:
        self.tagger = tagger
        self.config = config
        self.info: dict[str, Any] = {}

    @classmethod
    def create(cls, config: ClassifierConfig, texts: Sequence[str]) -> SentenceClassifier:
        """A fresh (untrained) classifier whose vocabulary comes from ``texts``."""
        encoder, _ = _build_encoder(config, texts)
        return cls(SentenceTagger(encoder, config), config)

    def vectors(self, texts: Sequence[str]) -> torch.Tensor:
        """(S, D) sentence vectors of one document."""
        encoder = self.tagger.encoder
        return encoder(encoder.prepare(texts))

    @torch.no_grad()
    def encode_documents(
        self, documents: Sequence[Sequence[str]], batch_size: int = 64, show_progress: bool = False
    ) -> list[torch.Tensor]:
        """(S, D) sentence vectors of every document, encoding sentences of all documents in
        length-sorted batches (much less padding than one document at a time)."""
        from ptrain.core.cli import progress

        encoder = self.tagger.encoder
        encoder.eval()
        flat = [(len(t), d, s, t) for d, texts in enumerate(documents) for s, t in enumerate(texts)]
        flat.sort(key=lambda item: item[0])
        vectors: dict[tuple[int, int], torch.Tensor] = {}
        starts = range(0, len(flat), batch_size)
        for start in progress(starts, desc="encode", disable=not show_progress):
            chunk = flat[start : start + batch_size]
            out = encoder(encoder.prepare([item[3] for item in chunk]))
            for item, vector in zip(chunk, out, strict=True):
                vectors[(item[1], item[2])] = vector
        return [
            torch.stack([vectors[(d, s)] for s in range(len(texts))])
            if texts
            else torch.zeros(0, int(encoder.output_dim))
            for d, texts in enumerate(documents)
        ]

    def predict(self, documents: Sequence[Sequence[str]]) -> list[list[str]]:
        """The label of every sentence of every document (each document decoded jointly)."""
        self.tagger.eval()
        vectors = self.encode_documents(documents)
        return [[LABELS[k] for k in self.tagger.decode(v)] if v.shape[0] else [] for v in vectors]

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Writes ``classifier.pt`` (and ``encoder/`` for a pretrained encoder) to ``directory``."""
        from ptrain.core.checkpoint import save_checkpoint

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        encoder = self.tagger.encoder
        payload: dict[str, Any] = {
            "config": dataclasses.asdict(self.config),
            "labels": list(LABELS),
            "info": dict(extra or {}),
        }
        if isinstance(encoder, BowEncoder):
            payload["vocabulary"] = encoder.vocabulary.entries
        elif isinstance(encoder, TransformerEncoder):
            if isinstance(encoder.tokenizer, WordVocabulary):
                payload["vocabulary"] = encoder.tokenizer.entries
            else:
                encoder.tokenizer.save_pretrained(directory / "encoder")
                cast(Any, encoder.model).config.save_pretrained(directory / "encoder")
        path = directory / CLASSIFIER_FILE
        save_checkpoint(path, model=self.tagger, extra=payload, rng=False)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SentenceClassifier:
        """Reads a classifier written by ``save`` (a directory or its ``classifier.pt``)."""
        from ptrain.core.checkpoint import CheckpointError, load_checkpoint

        path = Path(directory)
        if path.is_dir():
            path = path / CLASSIFIER_FILE
        extra = load_checkpoint(path, restore_rng=False).extra
        if extra.get("labels") != list(LABELS) or "config" not in extra:
            raise CheckpointError(f"{path}: not an mred classifier (no config / label set)")
        fields = dict(extra["config"])
        if fields["model"] not in ("bow", "transformer"):
            fields["model"] = str(path.parent / "encoder")
        config = ClassifierConfig(**fields)
        if config.kind == "bow":
            vocabulary = WordVocabulary(extra["vocabulary"][1:], config.ngrams)
            encoder: BowEncoder | TransformerEncoder = BowEncoder(vocabulary, config.embedding_dim)
        elif config.kind == "transformer":
            vocabulary = WordVocabulary(extra["vocabulary"][3:], 1, specials=("[CLS]", "[SEP]"))
            encoder, _ = _build_encoder(config, [], vocabulary)
        else:
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(config.model, local_files_only=True)
            model = AutoModel.from_config(AutoConfig.from_pretrained(config.model))
            encoder = TransformerEncoder(model, tokenizer, config.max_length, config.pooling)
        tagger = SentenceTagger(encoder, config)
        load_checkpoint(path, model=tagger, restore_rng=False)
        classifier = cls(tagger, config)
        classifier.info = dict(extra.get("info", {}))
        return classifier


def evaluate_classifier(
    classifier: SentenceClassifier, documents: Sequence[LabeledDocument]
) -> dict[str, Any]:
    """Accuracy, micro/macro F1 and per-label F1 (× 100) of ``classifier`` on gold documents."""
    predicted = classifier.predict([doc.texts for doc in documents])
    return classification_metrics([doc.labels for doc in documents], predicted)


# --------------------------------------------------------------------------- training
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_classifier(
    train_documents: Sequence[LabeledDocument],
    dev_documents: Sequence[LabeledDocument],
    config: ClassifierConfig,
    train_config: TrainConfig,
    *,
    info: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
) -> tuple[SentenceClassifier, dict[str, Any]]:
    """Trains on ``train_documents``, keeps the epoch with the best dev accuracy.

    Writes ``out_dir/classifier.pt`` whenever dev accuracy improves (with no dev documents:
    after every epoch) and a resumable checkpoint per epoch under ``out_dir/checkpoints``.

    Returns:
        The best classifier and ``{"history": [...], "best_epoch", "dev": metrics}``.
    """
    from ptrain.core.checkpoint import Checkpointer
    from ptrain.core.cli import progress

    if not train_documents:
        raise ValueError("no training documents")
    _seed_everything(train_config.seed)
    documents = list(train_documents)[: train_config.max_train_documents]
    texts = [t for doc in documents for t in doc.texts]
    classifier = SentenceClassifier.create(config, texts)
    tagger = classifier.tagger
    encoder = tagger.encoder
    prepared = [encoder.prepare(doc.texts) for doc in documents]
    targets = [torch.tensor([LABEL_INDEX[label] for label in doc.labels]) for doc in documents]
    cached: list[torch.Tensor] | None = None
    if config.freeze_encoder and config.kind != "bow":
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        with torch.no_grad():
            encoder.eval()
            cached = classifier.encode_documents(
                [doc.texts for doc in documents], show_progress=show_progress
            )
    parameters = [p for p in tagger.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=train_config.lr, weight_decay=train_config.weight_decay
    )
    out_dir = Path(train_config.out_dir)
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=1, prefix="epoch")
    state: dict[str, Any] = {"best_accuracy": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    # a frozen encoder never changes: per-epoch checkpoints hold only the trained parts
    trained: nn.Module = (
        tagger
        if cached is None
        else nn.ModuleDict({"lstm": tagger.lstm, "to_labels": tagger.to_labels, "crf": tagger.crf})
    )
    start_epoch = 0
    if train_config.resume:
        latest = checkpointer.load_latest(trained, optimizer)
        if latest is not None:
            start_epoch = latest.step
            state = json.loads(latest.extra["state"])
    dev_texts = [doc.texts for doc in dev_documents]
    dev_cached: list[torch.Tensor] | None = None
    if cached is not None:  # a frozen encoder: encode the dev sentences once, too
        with torch.no_grad():
            dev_cached = classifier.encode_documents(dev_texts, show_progress=show_progress)
    for epoch in range(start_epoch, train_config.epochs):
        if state["bad_epochs"] >= train_config.patience:
            break
        tagger.train()
        if cached is not None:
            encoder.eval()
        order = torch.randperm(len(documents)).tolist()
        total, count = 0.0, 0
        batches = range(0, len(order), train_config.batch_documents)
        for start in progress(batches, desc=f"epoch {epoch + 1}", disable=not show_progress):
            optimizer.zero_grad()
            indices = order[start : start + train_config.batch_documents]
            vectors = [cached[i] if cached is not None else encoder(prepared[i]) for i in indices]
            batch_loss = tagger.batch_loss(vectors, [targets[i] for i in indices])
            count += sum(len(targets[i]) for i in indices)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, train_config.grad_clip)
            optimizer.step()
            total += float(batch_loss.detach())
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if dev_documents:
            if dev_cached is not None:
                tagger.eval()
                predicted = [[LABELS[k] for k in tagger.decode(v)] for v in dev_cached]
            else:
                predicted = classifier.predict(dev_texts)
            metrics = classification_metrics([d.labels for d in dev_documents], predicted)
            record["dev_accuracy"] = metrics["accuracy"]
            record["dev_macro_f1"] = metrics["macro_f1"]
            improved = metrics["accuracy"] > state["best_accuracy"]
        else:
            improved = True
        if improved:
            state["best_accuracy"] = record.get("dev_accuracy", 0.0)
            state["best_epoch"] = epoch + 1
            state["bad_epochs"] = 0
            classifier.save(out_dir, extra={**(info or {}), "epoch": epoch + 1})
        else:
            state["bad_epochs"] += 1
        state["history"].append(record)
        if on_epoch is not None:
            on_epoch(record)
        checkpointer.save(
            epoch + 1, model=trained, optimizer=optimizer, extra={"state": json.dumps(state)}
        )
    best = SentenceClassifier.load(out_dir)
    result: dict[str, Any] = {"history": state["history"], "best_epoch": state["best_epoch"]}
    if dev_documents:
        result["dev"] = evaluate_classifier(best, dev_documents)
    return best, result
