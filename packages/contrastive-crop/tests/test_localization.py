"""Heatmap boxes, compute_boxes and the localisation schedule."""

from __future__ import annotations

import pytest
import torch

from contrastive_crop.localization import (
    LocalizationSchedule,
    box_iou,
    boxes_from_heatmaps,
    compute_boxes,
    feature_heatmaps,
)


def test_box_from_synthetic_heatmap_is_exact() -> None:
    heat = torch.zeros(2, 10, 20)
    heat[0, 2:5, 3:9] = 1.0  # rows 2..4, cols 3..8
    heat[1, 0:10, 19] = 0.5
    boxes = boxes_from_heatmaps(heat, threshold=0.1)
    assert boxes[0].tolist() == pytest.approx([0.2, 0.15, 0.5, 0.45])
    assert boxes[1].tolist() == pytest.approx([0.0, 0.95, 1.0, 1.0])
    official = boxes_from_heatmaps(heat, threshold=0.1, official_off_by_one=True)
    assert official[0].tolist() == pytest.approx([0.2, 0.15, 0.4, 0.4])


def test_constant_map_gives_full_box_without_nan() -> None:
    feat = torch.zeros(3, 8, 4, 4)
    feat[1] = 2.5
    heat, constant = feature_heatmaps(feat, (32, 32))
    assert constant.all() and not torch.isnan(heat).any()
    assert boxes_from_heatmaps(heat, 0.1).tolist() == [[0.0, 0.0, 1.0, 1.0]] * 3


def test_threshold_behaviour() -> None:
    # a radial bump: higher thresholds give nested, smaller boxes
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    heat = torch.exp(-((ys - 12) ** 2 + (xs - 20) ** 2) / 40)[None]
    areas = []
    previous = None
    for threshold in (0.05, 0.1, 0.3, 0.5, 0.9):
        box = boxes_from_heatmaps(heat, threshold)[0]
        if previous is not None:
            assert box[0] >= previous[0] and box[1] >= previous[1]
            assert box[2] <= previous[2] and box[3] <= previous[3]
        previous = box
        areas.append(float((box[2] - box[0]) * (box[3] - box[1])))
    assert areas == sorted(areas, reverse=True) and areas[-1] < areas[0]
    # nothing above the threshold → full box
    assert boxes_from_heatmaps(heat, 2.0)[0].tolist() == [0.0, 0.0, 1.0, 1.0]


class _BlobFeatures(torch.nn.Module):
    """A 'model' whose feature map is the image's first channel pooled 4× (known boxes)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x[:, :1], 4).repeat(1, 3, 1, 1) * self.scale


def test_compute_boxes_batched_in_dataset_order() -> None:
    images = torch.zeros(7, 3, 32, 32)
    for index in range(7):
        images[index, :, 4 * index % 24 : 4 * index % 24 + 8, 8:16] = 1.0
    model = _BlobFeatures().train()
    expected = compute_boxes(model, images, threshold=0.5, batch_size=100)
    assert model.training  # restored
    for batch_size in (1, 3):
        assert torch.equal(compute_boxes(model, images, 0.5, batch_size=batch_size), expected)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(7))
    assert torch.equal(compute_boxes(model, dataset, 0.5, batch_size=2), expected)
    for index in range(7):
        top = 4 * index % 24 / 32
        # bilinear upsampling spreads the blob by up to one feature cell (4 px) on each side
        assert expected[index, 0] <= top and expected[index, 2] >= top + 8 / 32
        assert expected[index, 2] - expected[index, 0] <= 16 / 32
    true = torch.tensor([[4 * i % 24 / 32, 0.25, 4 * i % 24 / 32 + 0.25, 0.5] for i in range(7)])
    assert box_iou(expected, true).mean() > 0.4


def test_compute_boxes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="threshold"):
        compute_boxes(_BlobFeatures(), torch.zeros(1, 3, 8, 8), threshold=1.5)
    with pytest.raises(ValueError, match="feature map"):
        compute_boxes(torch.nn.Flatten(), torch.zeros(1, 3, 8, 8))


def test_box_iou() -> None:
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 1.0, 1.0]])
    assert box_iou(a, b).tolist() == pytest.approx([0.0625 / 0.4375, 1.0])


def test_schedule_boundaries() -> None:
    official = LocalizationSchedule(100, 100, 500)
    assert official.update_epochs() == [100, 200, 300, 400]
    assert not official.use_box(100) and official.use_box(101)
    assert LocalizationSchedule(20, 20, 100).update_epochs() == [20, 40, 60, 80]
    assert LocalizationSchedule(0, 11, 10).update_epochs() == []  # SimCCrop
    assert not any(LocalizationSchedule(10, 11, 10).use_box(e) for e in range(1, 11))  # RRC
    with pytest.raises(ValueError, match="interval"):
        LocalizationSchedule(1, 0, 10)
    with pytest.raises(ValueError, match="warmup"):
        LocalizationSchedule(11, 1, 10)


def _distributed_boxes(rank: int, world_size: int, images: torch.Tensor) -> torch.Tensor:
    from contrastive_crop.localization import compute_boxes_distributed

    torch.manual_seed(0)
    return compute_boxes_distributed(_BlobFeatures(), images, 0.5, batch_size=2)


@pytest.mark.distributed
def test_distributed_boxes_equal_single_process() -> None:
    from ptrain.core.testing import run_distributed

    images = torch.zeros(7, 3, 32, 32)  # 7 images on 2 ranks: uneven, one padded index
    for index in range(7):
        images[index, :, 3 * index : 3 * index + 8, 20 - 2 * index : 28 - 2 * index] = 1.0
    expected = compute_boxes(_BlobFeatures(), images, 0.5)
    for result in run_distributed(_distributed_boxes, 2, images, timeout=120):
        assert torch.equal(result, expected)


def test_interleave_rank_shards() -> None:
    from contrastive_crop.localization import interleave_rank_shards

    # 5 items on 2 ranks: rank 0 has 0, 2, 4; rank 1 has 1, 3, 0 (padding)
    shards = torch.tensor([[0, 2, 4], [1, 3, 0]]).float()[..., None].expand(2, 3, 4)
    assert interleave_rank_shards(shards, 5)[:, 0].tolist() == [0, 1, 2, 3, 4]
