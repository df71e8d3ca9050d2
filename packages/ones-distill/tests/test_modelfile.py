"""Model files: teachers and gathered students round-trip; ptrain-moe files load; bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ones_distill import (
    GatherConfig,
    MixerClassifier,
    MixerClassifierConfig,
    SparseMLPClassifier,
    SparseMLPClassifierConfig,
    find_moe_layers,
    gather_model,
    load_model,
    save_model,
)
from ptrain.core.checkpoint import CheckpointError
from ptrain.moe import SparseMLP, sparse_mlp_config
from ptrain.moe import save_model as save_moe_model


def test_student_round_trips_and_predicts_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = MixerClassifierConfig(image_size=8, patch_size=2, in_channels=1, dim=8, depth=2,
                                   token_hidden=4, channel_hidden=12, num_experts=4)  # fmt: skip
    teacher = MixerClassifier(config).eval()
    student = gather_model(teacher, GatherConfig(method="topk"))
    save_model(tmp_path / "student.pt", student, note="x")
    loaded, extra = load_model(tmp_path / "student.pt")
    assert extra == {"note": "x"} and not find_moe_layers(loaded)
    images = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded(images)[0], student(images)[0])


def test_sparse_mlp_classifier_and_ptrain_moe_files_load(tmp_path: Path) -> None:
    backbone = sparse_mlp_config("debug", image_size=8, in_channels=1)
    classifier = SparseMLPClassifier(SparseMLPClassifierConfig(backbone=backbone.to_dict()))
    save_model(tmp_path / "c.pt", classifier)
    assert len(find_moe_layers(load_model(tmp_path / "c.pt")[0])) == 2
    save_moe_model(tmp_path / "moe.pt", SparseMLP(backbone), epoch=3)
    model, extra = load_model(tmp_path / "moe.pt")
    assert isinstance(model, SparseMLP) and extra == {"epoch": 3}


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read model file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a model file"):
        load_model(tmp_path / "other.pt")
