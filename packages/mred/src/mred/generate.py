"""Abstractive generation with BART and the MReD control prefix.

The model is ``transformers.BartForConditionalGeneration``: built from a small ``BartConfig``
(``model="tiny"``, with a byte-level BPE tokenizer trained on the training text, the control
tokens ``|``, ``==>``, ``<sep>``, ``<REVBREAK>`` and the nine labels added as whole tokens) or
loaded from a local directory in the style of ``facebook/bart-large-cnn`` (never downloaded).

Input: the CSV's ``text`` field, i.e. ``"a | b  ==> source"`` for controlled rows.

Truncation policy (long reviews are common: the longest review averages ~650 words):

* the control prefix is never truncated; the source is cut at its end so that prefix + source +
  special tokens fit ``max_source_length`` tokens; targets are cut at ``max_target_length``;
* when ``max_source_length`` exceeds the model's ``max_position_embeddings``, the learned position
  tables of encoder and decoder are extended as upstream does: the existing rows (including
  BART's offset of 2) are copied, the new rows are freshly initialised (``extend_positions``).

Shapes: ``B`` batch, ``T`` source tokens, ``U`` target tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mred._hf import quiet_transformers
from mred.data import LABELS, GenerationExample

__all__ = [
    "CONTROL_TOKENS",
    "Generator",
    "GeneratorConfig",
    "GeneratorTrainConfig",
    "extend_positions",
    "train_generator",
    "train_tokenizer",
]

CONTROL_TOKENS = ("|", "==>", "<sep>", "<REVBREAK>", *LABELS)
CONFIG_FILE = "mred_generator.json"
BART_POSITION_OFFSET = 2


@dataclass(kw_only=True, slots=True)
class GeneratorConfig:
    """The model: ``"tiny"`` (from a config) or a local BART directory, and length limits."""

    model: str = "tiny"
    vocab_size: int = 2000
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    ffn_dim: int = 128
    dropout: float = 0.1
    max_source_length: int = 1024
    max_target_length: int = 400

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "layers", "heads", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GeneratorConfig.{name} must be a positive int, got {value!r}")
        for name in ("max_source_length", "max_target_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8:
                raise ValueError(f"GeneratorConfig.{name} must be an int >= 8, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(
                f"GeneratorConfig.d_model ({self.d_model}) must be divisible by heads "
                f"({self.heads})"
            )
        if self.model != "tiny" and not Path(self.model).is_dir():
            raise ValueError(
                f"GeneratorConfig.model must be 'tiny' or a local model directory, "
                f"got {self.model!r}"
            )


@dataclass(kw_only=True, slots=True)
class GeneratorTrainConfig:
    """Fine-tuning: AdamW, ``steps`` optimizer steps of ``batch_size`` rows, a checkpoint every
    ``save_every`` steps under ``out_dir/checkpoints`` (``resume=True`` continues from it)."""

    out_dir: str | os.PathLike[str]
    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 50
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"GeneratorTrainConfig.{name} must be a positive int, got {value!r}"
                )
        if not self.lr > 0:
            raise ValueError(f"GeneratorTrainConfig.lr must be > 0, got {self.lr!r}")


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with BART's special tokens and the control
    tokens as whole tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    tokenizer.add_tokens(list(CONTROL_TOKENS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def extend_positions(model: Any, max_positions: int) -> None:
    """Grows BART's learned position tables to ``max_positions`` (+2 offset rows).

    Existing rows are copied, new rows are drawn from N(0, init_std) as for a fresh model
    (upstream's "MReD" patch of ``modeling_utils``). A no-op when the table is large enough.
    """
    config = model.config
    if max_positions <= config.max_position_embeddings:
        return
    for stack in (model.model.encoder, model.model.decoder):
        old = stack.embed_positions
        weight = old.weight.data
        fresh = torch.empty(
            max_positions + BART_POSITION_OFFSET, weight.shape[1], dtype=weight.dtype
        )
        fresh.normal_(0.0, float(getattr(config, "init_std", 0.02)))
        fresh[: weight.shape[0]] = weight
        new = type(old)(max_positions, weight.shape[1])
        new.weight.data = fresh
        stack.embed_positions = new
    config.max_position_embeddings = max_positions


def _build_model(config: GeneratorConfig, examples: Sequence[GenerationExample]) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    if config.model == "tiny":
        texts = [e.text for e in examples] + [e.summary for e in examples]
        tokenizer = train_tokenizer(texts, config.vocab_size)
        bart = BartConfig(
            vocab_size=len(tokenizer),
            d_model=config.d_model,
            encoder_layers=config.layers,
            decoder_layers=config.layers,
            encoder_attention_heads=config.heads,
            decoder_attention_heads=config.heads,
            encoder_ffn_dim=config.ffn_dim,
            decoder_ffn_dim=config.ffn_dim,
            dropout=config.dropout,
            max_position_embeddings=max(config.max_source_length, config.max_target_length),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
        )
        model = BartForConditionalGeneration(bart)
    else:
        tokenizer = AutoTokenizer.from_pretrained(config.model, local_files_only=True)
        model = BartForConditionalGeneration.from_pretrained(config.model, local_files_only=True)
    extend_positions(model, max(config.max_source_length, config.max_target_length))
    _set_generation_ids(model, tokenizer)
    return model, tokenizer


def _set_generation_ids(model: Any, tokenizer: Any) -> None:
    """transformers 5 needs these on the generation config for encoder-decoder generation."""
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    start = model.config.decoder_start_token_id
    generation.decoder_start_token_id = start if start is not None else tokenizer.eos_token_id


class Generator:
    """A BART model with its tokenizer and the truncation policy above."""

    def __init__(self, model: Any, tokenizer: Any, config: GeneratorConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    def encode_sources(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids (B, T) with the control prefix kept whole and the source cut at its end."""
        from mred.data import format_control, parse_control

        tokenizer = self.tokenizer
        rows = []
        for text in texts:
            control, source = parse_control(text)
            prefix = format_control(control) if control else ""
            prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
            source_ids = tokenizer(source, add_special_tokens=False)["input_ids"]
            budget = max(self.config.max_source_length - 2 - len(prefix_ids), 0)
            ids = [
                tokenizer.bos_token_id,
                *prefix_ids,
                *source_ids[:budget],
                tokenizer.eos_token_id,
            ]
            rows.append(ids[: self.config.max_source_length])
        return self._pad(rows)

    def encode_targets(self, texts: Sequence[str]) -> torch.Tensor:
        """Label ids (B, U), padding as -100 (ignored by the loss)."""
        rows = [
            self.tokenizer(text, truncation=True, max_length=self.config.max_target_length)[
                "input_ids"
            ]
            for text in texts
        ]
        batch = self._pad(rows)
        labels = batch["input_ids"]
        labels[batch["attention_mask"] == 0] = -100
        return labels

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def loss(self, examples: Sequence[GenerationExample]) -> torch.Tensor:
        batch = self.encode_sources([e.text for e in examples])
        labels = self.encode_targets([e.summary for e in examples])
        return self.model(**batch, labels=labels).loss

    @torch.no_grad()
    def generate(
        self,
        texts: Sequence[str],
        *,
        num_beams: int = 4,
        min_length: int = 20,
        max_length: int = 400,
        batch_size: int = 8,
    ) -> list[str]:
        """Summaries for model inputs (``"control  ==> source"`` or plain sources)."""
        self.model.eval()
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            batch = self.encode_sources(texts[start : start + batch_size])
            generated = self.model.generate(
                **batch,
                num_beams=num_beams,
                min_length=min_length,
                max_length=min(max_length, self.config.max_target_length),
                do_sample=False,
            )
            out += [
                " ".join(t.split())
                for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            ]
        return out

    def save(self, directory: str | os.PathLike[str]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Generator:
        from transformers import AutoTokenizer, BartForConditionalGeneration

        from ptrain.core.cli import UserError

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise UserError(f"{directory}: not an mred generator (no {CONFIG_FILE})")
        fields = json.loads((directory / CONFIG_FILE).read_text())
        fields["model"] = "tiny" if fields["model"] == "tiny" else str(directory)
        config = GeneratorConfig(**fields)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model = BartForConditionalGeneration.from_pretrained(directory, local_files_only=True)
        _set_generation_ids(model, tokenizer)
        return cls(model, tokenizer, config)


def train_generator(
    examples: Sequence[GenerationExample],
    config: GeneratorConfig,
    train_config: GeneratorTrainConfig,
    *,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Fine-tunes on ``examples`` and writes the model to ``out_dir``.

    The tokenizer and initial weights are created once and stored in ``out_dir/init`` so a
    resumed run starts from the same model; batches are drawn from a generator seeded by
    ``(seed, epoch)`` and the checkpoints restore every RNG, so an interrupted run that resumes
    ends identical to an uninterrupted one.

    Returns:
        ``{"steps", "first_loss", "last_loss", "losses"}`` (losses of the steps run now).
    """
    from ptrain.core.checkpoint import Checkpointer
    from ptrain.core.cli import progress

    if not examples:
        raise ValueError("no training examples")
    out_dir = Path(train_config.out_dir)
    init_dir = out_dir / "init"
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=1)
    torch.manual_seed(train_config.seed)
    if train_config.resume and (init_dir / CONFIG_FILE).is_file():
        generator = Generator.load(init_dir)
        generator.config = config
    else:
        model, tokenizer = _build_model(config, examples)
        generator = Generator(model, tokenizer, config)
        generator.save(init_dir)
    model = generator.model
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
    )
    start = 0
    if train_config.resume:
        latest = checkpointer.load_latest(model, optimizer)
        if latest is not None:
            start = latest.step
    per_epoch = max(len(examples) // train_config.batch_size, 1)
    losses = []
    model.train()
    for step in progress(range(start, train_config.steps), desc="train", disable=not show_progress):
        epoch, position = divmod(step, per_epoch)
        order = torch.randperm(
            len(examples),
            generator=torch.Generator().manual_seed(train_config.seed * 100003 + epoch),
        ).tolist()
        indices = order[
            position * train_config.batch_size : (position + 1) * train_config.batch_size
        ]
        loss = generator.loss([examples[i] for i in indices])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % train_config.save_every == 0 or step + 1 == train_config.steps:
            checkpointer.save(step + 1, model=model, optimizer=optimizer)
    generator.save(out_dir)
    return {
        "steps": train_config.steps,
        "first_loss": losses[0] if losses else float("nan"),
        "last_loss": losses[-1] if losses else float("nan"),
        "losses": losses,
    }
