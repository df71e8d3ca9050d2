"""SSL losses against hand computation; each framework's loss goes down in a few steps."""

from __future__ import annotations

import math

import pytest
import torch

from contrastive_crop.models import ResNet, build_backbone, resnet18
from contrastive_crop.ssl import (
    BYOL,
    MoCo,
    SimCLR,
    SimSiam,
    byol_loss,
    moco_loss,
    nt_xent_loss,
    simsiam_loss,
)


def _unit(v):
    return [x / math.sqrt(sum(y * y for y in v)) for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


Z1 = [[1.0, 0.0], [0.6, 0.8]]
Z2 = [[0.8, 0.6], [0.0, 1.0]]


def test_nt_xent_by_hand() -> None:
    tau = 0.5
    z = [_unit(v) for v in Z1 + Z2]
    total = 0.0
    for i in range(4):
        positive = (i + 2) % 4
        denominator = sum(math.exp(_dot(z[i], z[j]) / tau) for j in range(4) if j != i)
        total += -math.log(math.exp(_dot(z[i], z[positive]) / tau) / denominator)
    ours = nt_xent_loss(torch.tensor(Z1), torch.tensor(Z2), tau)
    assert ours.item() == pytest.approx(total / 4, rel=1e-6)


def test_moco_loss_by_hand() -> None:
    tau = 0.2
    queue = [_unit([1.0, 1.0]), _unit([-1.0, 0.2]), _unit([0.3, -1.0])]
    total = 0.0
    for q, k in zip(Z1, Z2, strict=True):
        q, k = _unit(q), _unit(k)
        logits = [_dot(q, k) / tau] + [_dot(q, n) / tau for n in queue]
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    ours = moco_loss(torch.tensor(Z1), torch.tensor(Z2), torch.tensor(queue), tau)
    assert ours.item() == pytest.approx(total / 2, rel=1e-6)


def test_byol_and_simsiam_by_hand() -> None:
    cos = [_dot(_unit(p), _unit(z)) for p, z in zip(Z1, Z2, strict=True)]
    assert byol_loss(torch.tensor(Z1), torch.tensor(Z2)).item() == pytest.approx(
        sum(2 - 2 * c for c in cos) / 2, rel=1e-6
    )
    assert simsiam_loss(torch.tensor(Z1), torch.tensor(Z2)).item() == pytest.approx(
        -sum(cos) / 2, rel=1e-6
    )


def test_stop_gradient_on_targets() -> None:
    p = torch.tensor(Z1, requires_grad=True)
    z = torch.tensor(Z2, requires_grad=True)
    (byol_loss(p, z) + simsiam_loss(p, z)).backward()
    assert z.grad is None and p.grad is not None


def test_resnet18_shapes_and_sizes() -> None:
    net = resnet18(width=16)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.70e6, rel=0.02)
    assert sum(p.numel() for p in resnet18().parameters()) == pytest.approx(11.17e6, rel=0.01)
    x = torch.zeros(2, 3, 32, 32)
    assert net.forward_features(x).shape == (2, 128, 4, 4)
    assert net(x).shape == (2, 128)
    imagenet = resnet18(width=8, small_image_stem=False)
    assert imagenet.forward_features(torch.zeros(1, 3, 64, 64)).shape == (1, 64, 2, 2)
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("resnet50")


@pytest.mark.parametrize("factory", [SimCLR, MoCo, BYOL, SimSiam])
def test_a_few_steps_reduce_the_loss(factory) -> None:
    torch.manual_seed(0)
    backbone = ResNet((1, 1), width=8)
    model = factory(backbone) if factory is not MoCo else MoCo(backbone, queue_size=64)
    images = torch.rand(16, 3, 8, 8)
    x1 = images + 0.05 * torch.randn_like(images)
    x2 = images + 0.05 * torch.randn_like(images)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05,
                                momentum=0.9)  # fmt: skip
    if factory is MoCo:  # fill the queue with real keys first, so the loss is comparable
        for _ in range(4):
            model.loss(x1, x2)
            model.after_step()
    model.eval()  # measure with BN running stats fixed? no: measure in train mode, same batch
    model.train()
    with torch.no_grad():
        before = model.loss(x1, x2).item()
    if factory is MoCo:
        model._pending = []
    for _ in range(15):
        loss = model.loss(x1, x2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step()
    with torch.no_grad():
        after = model.loss(x1, x2).item()
    assert after < before


def test_moco_queue_and_momentum_update() -> None:
    torch.manual_seed(0)
    model = MoCo(ResNet((1,), width=4), proj_dim=8, queue_size=6, momentum=0.5)
    x = torch.rand(4, 3, 8, 8)
    model.loss(x, x)
    model.after_step()
    assert int(model.queue_ptr) == 8 % 6
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(6))
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    key_before = [p.clone() for p in model.key_backbone.parameters()]
    model.after_step()
    for key, before, online in zip(model.key_backbone.parameters(), key_before,
                                   model.backbone.parameters(), strict=True):  # fmt: skip
        assert torch.allclose(key, 0.5 * before + 0.5 * online)
