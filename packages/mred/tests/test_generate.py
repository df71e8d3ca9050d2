from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mred.data import GenerationExample, sent_ctrl
from mred.generate import (
    Generator,
    GeneratorConfig,
    GeneratorTrainConfig,
    extend_positions,
    train_generator,
)
from mred.rouge import corpus_rouge

SUBJECTS = ["graphs", "robots", "proteins", "images", "speech", "games", "tables", "code"]
CONTROLS = [
    ["abstract", "strength"],
    ["abstract", "weakness"],
    ["strength", "decision"],
    ["weakness", "decision"],
    ["abstract", "decision"],
    ["strength", "weakness"],
    ["abstract", "strength"],
    ["weakness", "suggestion"],
]


def _examples() -> list[GenerationExample]:
    out = []
    for subject, control in zip(SUBJECTS, CONTROLS, strict=True):
        source = f"The paper studies {subject}. The reviewers discuss {subject} at length."
        summary = f"This paper is about {subject}. It is {control[-1]}."
        out.append(
            GenerationExample(
                source=source, summary=summary, control=tuple(control), mode="sent-ctrl"
            )
        )
    return out


TINY = GeneratorConfig(
    vocab_size=300,
    d_model=32,
    layers=1,
    heads=2,
    ffn_dim=64,
    dropout=0.0,
    max_source_length=64,
    max_target_length=32,
)


def test_tiny_bart_overfits_eight_examples(tmp_path: Path) -> None:
    examples = _examples()
    result = train_generator(
        examples,
        TINY,
        GeneratorTrainConfig(out_dir=tmp_path, steps=120, batch_size=8, lr=5e-3, save_every=60),
    )
    assert result["last_loss"] < 0.1 * result["first_loss"]
    generator = Generator.load(tmp_path)
    outputs = generator.generate([e.text for e in examples], num_beams=1, min_length=0)
    scores = corpus_rouge(outputs, [e.summary for e in examples])
    assert scores["rougeL"] > 90.0, outputs


def test_truncation_keeps_the_control_prefix(tmp_path: Path) -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    from mred.generate import train_tokenizer

    tokenizer = train_tokenizer([e.text for e in _examples()], 300)
    config = GeneratorConfig(max_source_length=16, max_target_length=16)
    model = BartForConditionalGeneration(
        BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1)
    )
    generator = Generator(model, tokenizer, config)
    control = ["abstract", "weakness", "decision"]
    long_source = " ".join(["words"] * 200)
    ids = generator.encode_sources([sent_ctrl(control) + long_source])["input_ids"][0]
    assert len(ids) == 16
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert " ".join(text.split()).startswith("abstract | weakness | decision ==>")
    assert int(ids[-1]) == tokenizer.eos_token_id


def test_extend_positions_copies_rows_with_offset() -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    model = BartForConditionalGeneration(
        BartConfig(
            vocab_size=50,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            max_position_embeddings=32,
        )
    )
    before = model.model.encoder.embed_positions.weight.detach().clone()
    assert before.shape[0] == 32 + 2  # BART's learned-position offset of 2
    extend_positions(model, 64)
    after = model.model.encoder.embed_positions.weight
    assert after.shape[0] == 64 + 2 and model.config.max_position_embeddings == 64
    assert torch.equal(after[:34], before)
    assert model.model.decoder.embed_positions.weight.shape[0] == 66
    ids = torch.randint(3, 50, (1, 60))  # longer than the old table: runs now
    assert model(input_ids=ids, labels=ids).loss.isfinite()


def test_generator_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    examples = _examples()[:4]

    def run(out: Path, steps: int, resume: bool) -> dict[str, torch.Tensor]:
        train_generator(
            examples,
            TINY,
            GeneratorTrainConfig(
                out_dir=out, steps=steps, batch_size=2, lr=1e-3, save_every=2, resume=resume
            ),
        )
        return Generator.load(out).model.state_dict()

    straight = run(tmp_path / "a", 4, False)
    run(tmp_path / "b", 2, False)
    resumed = run(tmp_path / "b", 4, True)
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_generator_config_validation() -> None:
    with pytest.raises(ValueError, match="max_source_length"):
        GeneratorConfig(max_source_length=2)
    with pytest.raises(ValueError, match="model"):
        GeneratorConfig(model="/no/such/bart")
