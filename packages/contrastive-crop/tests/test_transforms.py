"""Crop transforms: geometry invariants, distributions (fixed seeds), bad input."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive_crop.transforms import (
    FULL_BOX,
    BetaSampler,
    Compose,
    ContrastiveCrop,
    RandomResizedCrop,
    SimCCrop,
    ToFloat,
    check_box,
)


def ks_2samp_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov test, asymptotic p-value (Numerical Recipes' probks).

    numpy-only so that the statistical tests run without scipy; with ties (integer crop
    parameters) the p-value is conservative.
    """
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    pooled = np.concatenate([a, b])
    gap = np.abs(
        np.searchsorted(a, pooled, side="right") / len(a)
        - np.searchsorted(b, pooled, side="right") / len(b)
    ).max()
    effective = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (effective + 0.12 + 0.11 / effective) * gap
    k = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0, 1))


def torchvision_rrc_params(height, width, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, transcribed (torch RNG), as the reference."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_rrc_matches_torchvision_reference_distribution() -> None:
    torch.manual_seed(0)
    random.seed(0)
    rrc = RandomResizedCrop(32, scale=(0.08, 1.0))
    ours = np.array([rrc.get_params(32, 40) for _ in range(4000)], dtype=float)
    ref = np.array(
        [torchvision_rrc_params(32, 40, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)]
    )
    for column, name in enumerate(("top", "left", "height", "width")):
        assert ks_2samp_pvalue(ours[:, column], ref[:, column]) > 0.001, name


def test_full_box_sizes_match_rrc() -> None:
    """With a full-image box ContrastiveCrop's size/ratio distribution is RRC's."""
    random.seed(1)
    torch.manual_seed(1)
    ccrop = ContrastiveCrop(32, scale=(0.2, 1.0))
    rrc = RandomResizedCrop(32, scale=(0.2, 1.0))
    ours = np.array([ccrop.get_params_in_box(32, 32, FULL_BOX)[2:] for _ in range(4000)], float)
    ref = np.array([rrc.get_params(32, 32)[2:] for _ in range(4000)], float)
    for values, other in ((ours[:, 0] * ours[:, 1], ref[:, 0] * ref[:, 1]),
                          (ours[:, 1] / ours[:, 0], ref[:, 1] / ref[:, 0])):  # fmt: skip
        assert ks_2samp_pvalue(values, other) > 0.001


def _offsets_in_box(alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets from the low end of their allowed range, and the range lengths."""
    torch.manual_seed(seed)
    random.seed(seed)
    size = 400
    ccrop = ContrastiveCrop(32, scale=(0.001, 0.002), alpha=alpha)
    box = (0.2, 0.3, 0.8, 0.9)
    ks, ranges = [], []
    for _ in range(3000):
        top, left, h, w = ccrop.get_params_in_box(size, size, box)
        for offset, side, a, b in ((top, h, box[0], box[2]), (left, w, box[1], box[3])):
            low, high = int(size * a) - side // 2, int(size * b) - side // 2
            ks.append(offset - low)
            ranges.append(high - low)
    return np.array(ks, float), np.array(ranges, float)


@pytest.mark.parametrize("alpha", [0.6, 0.1, 1.0, 2.0])
def test_centres_follow_beta_inside_box(alpha: float) -> None:
    """Crop positions inside the box follow Beta(α, α) (KS test, fixed seeds).

    The offset is ``lo + int((hi − lo)·B)``; the reference applies the same floor to numpy's
    Beta(α, α) draws over the same ranges, and a two-sample KS test compares the fractions.
    """
    k, r = _offsets_in_box(alpha, 2)
    rng = np.random.default_rng(5)
    reference = np.floor(r * rng.beta(alpha, alpha, len(r))) / r
    assert ks_2samp_pvalue(k / r, reference) > 0.001
    # and a wrong α is rejected (the test can fail)
    wrong = np.floor(r * rng.beta(2 * alpha, 2 * alpha, len(r))) / r
    assert ks_2samp_pvalue(k / r, wrong) < 0.001


def test_small_alpha_pushes_centres_to_box_edges() -> None:
    torch.manual_seed(3)
    random.seed(3)

    def edge_share(alpha: float) -> float:
        ccrop = ContrastiveCrop(32, scale=(0.001, 0.002), alpha=alpha)
        params = np.array([ccrop.get_params_in_box(1000, 1000, FULL_BOX) for _ in range(2000)])
        position = params[:, 0] / (1000 - params[:, 2])  # 0: top edge, 1: bottom edge
        return float(((position < 0.1) | (position > 0.9)).mean())

    assert edge_share(1.0) == pytest.approx(0.2, abs=0.04)
    assert edge_share(0.6) > 0.3
    assert edge_share(0.1) > 0.75


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    corners=st.lists(st.floats(0, 1), min_size=4, max_size=4),
    low=st.floats(0.01, 1.0),
    alpha=st.sampled_from([0.1, 0.6, 1.0]),
)
def test_crops_always_inside_image(height, width, corners, low, alpha) -> None:
    h0, h1 = sorted(corners[:2])
    w0, w1 = sorted(corners[2:])
    ccrop = ContrastiveCrop(8, scale=(low, 1.0), alpha=alpha)
    for _ in range(5):
        top, left, h, w = ccrop.get_params_in_box(height, width, (h0, w0, h1, w1))
        assert 0 < h <= height and 0 < w <= width
        assert 0 <= top <= height - h and 0 <= left <= width - w


def test_large_crop_position_is_deterministic() -> None:
    ccrop = ContrastiveCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert {ccrop.get_params_in_box(20, 20, (0.3, 0.3, 0.6, 0.6)) for _ in range(20)} == {
        (0, 0, 20, 20)
    }


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_output_shape_and_dtype(dtype: torch.dtype) -> None:
    image = (torch.rand(3, 40, 50) * 255).to(dtype)
    for crop in (ContrastiveCrop((16, 24)), RandomResizedCrop(16), SimCCrop(16)):
        out = crop(image, (0.1, 0.2, 0.5, 0.9))
        assert out.dtype == dtype
        assert out.shape[0] == 3 and out.shape[1:] == (crop.size[0], crop.size[1])


def test_identity_size_crop_is_exact() -> None:
    image = torch.arange(3 * 10 * 10, dtype=torch.float32).reshape(3, 10, 10)
    crop = ContrastiveCrop(10, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(crop(image, FULL_BOX), image)


def test_pil_input_gives_pil_output() -> None:
    image_module = pytest.importorskip("PIL.Image")
    image = image_module.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8))
    out = ContrastiveCrop(16)(image, (0.0, 0.0, 0.5, 0.5))
    assert out.size == (16, 16)
    assert ToFloat()(out).shape == (3, 16, 16)


@pytest.mark.parametrize(
    "box",
    [(-0.1, 0, 1, 1), (0, 0, 1.2, 1), (0.6, 0, 0.4, 1), (0, 0.7, 1, 0.2), (0, 0, 1), "abcd",
     (float("nan"), 0, 1, 1), torch.zeros(5)],
)  # fmt: skip
def test_bad_box_raises(box) -> None:
    with pytest.raises(ValueError, match="box"):
        ContrastiveCrop(8)(torch.zeros(3, 10, 10), box)


@pytest.mark.parametrize(
    "image",
    [
        torch.zeros(10, 10),
        torch.zeros(1, 3, 10, 10),
        torch.zeros(3, 10, 10, dtype=torch.int32),
        "img",
    ],
)
def test_bad_image_raises(image) -> None:
    for crop in (ContrastiveCrop(8), RandomResizedCrop(8)):
        with pytest.raises(ValueError):
            crop(image, FULL_BOX)


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="alpha"):
        ContrastiveCrop(8, alpha=0)
    with pytest.raises(ValueError, match="scale"):
        ContrastiveCrop(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="size"):
        RandomResizedCrop(0)


def test_check_box_accepts_tensor_and_list() -> None:
    assert check_box(torch.tensor([0.0, 0.25, 0.5, 1.0])) == (0.0, 0.25, 0.5, 1.0)
    assert check_box([0, 0, 1, 1]) == (0.0, 0.0, 1.0, 1.0)


def test_compose_forwards_box_to_first_transform_only() -> None:
    seen = []

    def first(img, box=None):
        seen.append(("first", box))
        return img

    def second(img):
        seen.append(("second",))
        return img + 1

    out = Compose([first, second])(torch.zeros(1), (0, 0, 1, 1))
    assert seen == [("first", (0, 0, 1, 1)), ("second",)] and out.item() == 1


def test_simccrop_uses_its_fixed_box() -> None:
    torch.manual_seed(0)
    crop = SimCCrop(8, scale=(0.001, 0.002), alpha=1.0)
    params = [crop.get_params_in_box(1000, 1000, crop.default_box) for _ in range(500)]
    centres = [top + h // 2 for top, _, h, _ in params]
    assert min(centres) >= 250 and max(centres) <= 750 and max(centres) - min(centres) > 400
    seen = []
    crop.get_params_in_box = lambda h, w, box, generator=None: seen.append(box) or (0, 0, h, w)
    crop(torch.zeros(3, 10, 10), (0.0, 0.0, 0.1, 0.1))
    assert seen == [(0.25, 0.25, 0.75, 0.75)]  # a box given at call time is ignored


class _Draws(torch.utils.data.Dataset):
    def __init__(self, sampler: BetaSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[int, float]:
        info = torch.utils.data.get_worker_info()
        return (info.id if info else -1), self.sampler.draw()


def test_workers_do_not_replay_the_parents_buffered_draws() -> None:
    torch.manual_seed(0)
    sampler = BetaSampler(0.6, block=64)
    parent_next = [sampler.draw() for _ in range(2)]  # the buffer is filled in the parent
    loader = torch.utils.data.DataLoader(_Draws(sampler), batch_size=None, num_workers=2)
    draws: dict[int, list[float]] = {0: [], 1: []}
    for worker, value in loader:
        draws[int(worker)].append(float(value))
    assert draws[0] and draws[1]
    assert draws[0] != draws[1]
    assert parent_next[1] not in draws[0] + draws[1]
