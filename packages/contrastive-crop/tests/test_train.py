"""The training loop: schedule, box updates, resumable checkpoints, LARS; evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contrastive_crop.data import ArrayDataset
from contrastive_crop.evaluate import knn_accuracy, knn_predict, linear_probe
from contrastive_crop.train import DataSplits, PretrainConfig, load_backbone, pretrain


def _synthetic(n: int = 48, seed: int = 0) -> DataSplits:
    """Bright squares of two sizes on dark noise, with their true boxes."""
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, 16, 16, generator=generator) * 60).to(torch.uint8)
    labels = torch.arange(n) % 2
    boxes = torch.zeros(n, 4)
    for index in range(n):
        side = 4 if labels[index] == 0 else 7
        top, left = torch.randint(0, 16 - side + 1, (2,), generator=generator).tolist()
        images[index, :, top : top + side, left : left + side] = 230
        boxes[index] = torch.tensor([top, left, top + side, left + side]) / 16
    train = ArrayDataset(images, labels, boxes=boxes)
    return DataSplits(train, ArrayDataset(images[:16], labels[:16]), (0.2, 0.2, 0.2), (0.3,) * 3)


def _config(**overrides) -> PretrainConfig:
    settings = dict(backbone="tiny", epochs=3, batch_size=16, lr=0.1, box_warmup_epochs=1,
                    loc_interval=1, threshold=0.3, knn=False)  # fmt: skip
    settings.update(overrides)
    return PretrainConfig(**settings)


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="method"):
        PretrainConfig(method="dino")
    with pytest.raises(ValueError, match="root"):
        PretrainConfig(data="cifar10")
    with pytest.raises(ValueError, match="threshold"):
        PretrainConfig(threshold=1.0)
    assert PretrainConfig(epochs=10).schedule().update_epochs() == [2, 4, 6, 8]


def test_boxes_are_updated_on_schedule() -> None:
    data = _synthetic()
    result = pretrain(_config(), data)
    assert [update["epoch"] for update in result["box_updates"]] == [1, 2]
    assert all(0 < update["mean_area"] <= 1 for update in result["box_updates"])
    assert "mean_iou" in result["box_updates"][0]
    assert result["boxes"].shape == (48, 4)
    assert 0 < result["box_fraction"] < 1
    rrc = pretrain(_config(crop="rrc", epochs=2), data)
    assert rrc["box_updates"] == [] and rrc["mean_box_area"] == 1.0


def test_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    data = _synthetic()
    straight = pretrain(_config(out_dir=str(tmp_path / "a")), data)
    pretrain(_config(out_dir=str(tmp_path / "b"), epochs=3), data)  # a full run to compare files
    # interrupted: run 3 epochs but stop after epoch 2 by removing the last checkpoint
    checkpoints = sorted((tmp_path / "b" / "checkpoints").glob("step-*.pt"))
    checkpoints[-1].unlink()
    resumed = pretrain(_config(out_dir=str(tmp_path / "b"), resume=True), data)
    assert resumed["losses"] == straight["losses"]
    assert torch.equal(resumed["boxes"], straight["boxes"])
    for a, b in zip(straight["backbone"].state_dict().values(),
                    resumed["backbone"].state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(a, b)
    backbone, extra = load_backbone(tmp_path / "b" / "model.pt")
    assert extra["config"]["backbone"] == "tiny"
    assert torch.equal(next(iter(backbone.state_dict().values())),
                       next(iter(resumed["backbone"].state_dict().values())))  # fmt: skip


@pytest.mark.parametrize("method", ["moco", "byol", "simsiam"])
def test_other_methods_and_lars_run(method: str) -> None:
    result = pretrain(_config(method=method, optimizer="lars", epochs=2, lr=1.0), _synthetic(32))
    assert len(result["losses"]) == 2 and all(loss == loss for loss in result["losses"])


def test_knn_and_linear_probe_on_separable_features() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=1)
    labels = torch.arange(90) % 3
    features = torch.nn.functional.normalize(
        centres[labels] + 0.1 * torch.randn(90, 8, generator=generator), dim=1
    )
    scores = knn_accuracy(features[:60], labels[:60], features[60:], labels[60:], ks=(5, 20))
    assert scores == {"knn@5": 1.0, "knn@20": 1.0}
    assert linear_probe(features[:60], labels[:60], features[60:], labels[60:]) == 1.0
    # weighted votes: one very close neighbour of class 1 beats two far ones of class 0
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=1)
    prediction = knn_predict(train, torch.tensor([1, 0, 0]), torch.tensor([[1.0, 0.05]]), k=3,
                             temperature=0.05)  # fmt: skip
    assert prediction.tolist() == [1]


def _data_parallel_rank(rank: int, world_size: int) -> dict[str, object]:
    torch.set_num_threads(1)
    result = pretrain(_config(epochs=2, batch_size=16), _synthetic(48))
    state = result["backbone"].state_dict()
    return {"weights": [t.clone() for t in state.values()], "boxes": result["boxes"],
            "updates": result["box_updates"]}  # fmt: skip


@pytest.mark.distributed
def test_data_parallel_ranks_stay_identical() -> None:
    from ptrain.core.testing import run_distributed

    first, second = run_distributed(_data_parallel_rank, 2, timeout=180)
    for a, b in zip(first["weights"], second["weights"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first["boxes"], second["boxes"])
    assert [u["epoch"] for u in first["updates"]] == [1]
    # the ranks trained (weights moved from the seeded initialisation)
    torch.manual_seed(0)
    from contrastive_crop.models import build_backbone

    initial = list(build_backbone("tiny").state_dict().values())
    assert not torch.equal(initial[0], first["weights"][0])


def test_persistent_workers_train_with_updated_boxes() -> None:
    """Two persistent workers: the run completes and the box updates are used (area < 1)."""
    result = pretrain(_config(num_workers=2, epochs=3), _synthetic(32))
    assert len(result["losses"]) == 3 and len(result["box_updates"]) == 2
    assert result["mean_box_area"] < 1.0
