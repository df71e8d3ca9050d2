"""LAMB, LARS, schedules and batch-size scaling against plain per-parameter references.

The references below are written from the published rules (LAMB: You et al. 2020, LARS: You,
Gitman, Ginsburg 2017) with Python loops and no foreach ops, and they are the ground truth that the
vectorised optimisers in ``ptrain.core.optim`` must reproduce step for step in fp64.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ptrain.core.optim import (
    LAMB,
    LARS,
    param_groups_no_decay,
    scale_lr,
    warmup_cosine_schedule,
    warmup_polynomial_schedule,
)
from ptrain.core.testing import run_distributed

SHAPES: list[tuple[int, ...]] = [(4, 3), (3, 2, 2), (5,), (6, 2)]
STEPS = 6
EXACT = {"rtol": 1e-12, "atol": 1e-12}


# ---------------------------------------------------------------------------------------------
# Problem: parameters, and gradients that depend on the current parameters (elementwise, so the
# same rule applied to a shard gives the shard of the full gradient).
# ---------------------------------------------------------------------------------------------


def make_problem(
    shapes: list[tuple[int, ...]] = SHAPES, steps: int = STEPS, seed: int = 0
) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]]]:
    """Initial params (with different scales), targets and per-step gradient noise, fp64."""
    generator = torch.Generator().manual_seed(seed)
    scales = [0.1, 3.0, 0.5, 1.0]
    inits = [
        scales[i % len(scales)] * torch.randn(shape, generator=generator, dtype=torch.float64)
        for i, shape in enumerate(shapes)
    ]
    targets = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    noise = [
        [0.3 * torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
        for _ in range(steps)
    ]
    return inits, targets, noise


def gradient(x: Tensor, target: Tensor, noise: Tensor) -> Tensor:
    """Gradient of 0.5·‖x − target‖² plus noise: elementwise, so it shards cleanly."""
    return (x - target) + noise


def run_optimizer(
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    inits: list[Tensor],
    targets: list[Tensor],
    noise: list[list[Tensor]],
) -> list[Tensor]:
    params = [nn.Parameter(x.clone()) for x in inits]
    optimizer = make_optimizer(params)
    for step_noise in noise:
        for param, target, eps in zip(params, targets, step_noise, strict=True):
            param.grad = gradient(param.detach(), target, eps)
        optimizer.step()
    return [param.detach().clone() for param in params]


def reference_lamb(
    inits: list[Tensor],
    targets: list[Tensor],
    noise: list[list[Tensor]],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    bias_correction: bool = True,
    trust_clip: tuple[float, float] | None = None,
    exclude_1d: bool = True,
    adam: bool = False,
) -> list[Tensor]:
    beta1, beta2 = betas
    xs = [x.clone() for x in inits]
    ms = [torch.zeros_like(x) for x in xs]
    vs = [torch.zeros_like(x) for x in xs]
    for t, step_noise in enumerate(noise, start=1):
        for i in range(len(xs)):
            x = xs[i]
            g = gradient(x, targets[i], step_noise[i])
            ms[i] = beta1 * ms[i] + (1 - beta1) * g
            vs[i] = beta2 * vs[i] + (1 - beta2) * g * g
            m_hat = ms[i] / (1 - beta1**t) if bias_correction else ms[i]
            v_hat = vs[i] / (1 - beta2**t) if bias_correction else vs[i]
            excluded = exclude_1d and x.ndim <= 1
            u = m_hat / (v_hat.sqrt() + eps) + (0.0 if excluded else weight_decay) * x
            x_norm, u_norm = x.norm().item(), u.norm().item()
            if adam or excluded or x_norm == 0 or u_norm == 0:
                ratio = 1.0
            else:
                ratio = x_norm / u_norm
                if trust_clip is not None:
                    ratio = min(max(ratio, trust_clip[0]), trust_clip[1])
            xs[i] = x - lr * ratio * u
    return xs


def reference_lars(
    inits: list[Tensor],
    targets: list[Tensor],
    noise: list[list[Tensor]],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    trust_clip: tuple[float, float] | None = None,
    exclude_1d: bool = True,
    nesterov: bool = False,
) -> list[Tensor]:
    ws = [x.clone() for x in inits]
    bufs = [torch.zeros_like(x) for x in ws]
    for step_noise in noise:
        for i in range(len(ws)):
            w = ws[i]
            g = gradient(w, targets[i], step_noise[i])
            excluded = exclude_1d and w.ndim <= 1
            beta = 0.0 if excluded else weight_decay
            w_norm, g_norm = w.norm().item(), g.norm().item()
            if excluded or w_norm == 0 or g_norm == 0:
                local_lr = 1.0
            else:
                local_lr = trust_coefficient * w_norm / (g_norm + beta * w_norm + eps)
                if trust_clip is not None:
                    local_lr = min(max(local_lr, trust_clip[0]), trust_clip[1])
            direction = g + beta * w
            bufs[i] = momentum * bufs[i] + lr * local_lr * direction
            if nesterov:
                ws[i] = w - (momentum * bufs[i] + lr * local_lr * direction)
            else:
                ws[i] = w - bufs[i]
    return ws


def assert_all_close(actual: list[Tensor], expected: list[Tensor], **tolerance: float) -> None:
    tolerance = tolerance or EXACT
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, e, **tolerance, msg=lambda m, i=index: f"param {i}: {m}")


def max_difference(a: list[Tensor], b: list[Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# Step-for-step agreement with the references
# ---------------------------------------------------------------------------------------------

LAMB_CASES: list[dict[str, Any]] = [
    {"lr": 0.05},
    {"lr": 0.05, "weight_decay": 0.1},
    {"lr": 0.05, "weight_decay": 0.1, "bias_correction": False},
    {"lr": 0.05, "weight_decay": 0.1, "trust_clip": (0.8, 1.2)},
    {"lr": 0.05, "weight_decay": 0.1, "exclude_1d": False},
    {"lr": 0.02, "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.01, "bias_correction": False},
]


@pytest.mark.parametrize(
    "hparams", LAMB_CASES, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items())
)
def test_lamb_matches_reference(hparams: dict[str, Any]) -> None:
    inits, targets, noise = make_problem()
    actual = run_optimizer(lambda ps: LAMB(ps, **hparams), inits, targets, noise)
    assert_all_close(actual, reference_lamb(inits, targets, noise, **hparams))


LARS_CASES: list[dict[str, Any]] = [
    {"lr": 0.5, "trust_coefficient": 0.02},
    {"lr": 0.5, "trust_coefficient": 0.02, "weight_decay": 0.05},
    {"lr": 0.5, "trust_coefficient": 0.02, "weight_decay": 0.05, "nesterov": True},
    {"lr": 0.5, "trust_coefficient": 0.02, "weight_decay": 0.05, "trust_clip": (0.01, 0.03)},
    {"lr": 0.5, "trust_coefficient": 0.02, "weight_decay": 0.05, "exclude_1d": False},
    {"lr": 0.1, "momentum": 0.0, "trust_coefficient": 0.1, "eps": 0.5, "weight_decay": 0.01},
]


@pytest.mark.parametrize(
    "hparams", LARS_CASES, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items())
)
def test_lars_matches_reference(hparams: dict[str, Any]) -> None:
    inits, targets, noise = make_problem()
    actual = run_optimizer(lambda ps: LARS(ps, **hparams), inits, targets, noise)
    assert_all_close(actual, reference_lars(inits, targets, noise, **hparams))


def test_trust_clip_and_exclusion_change_the_result() -> None:
    """Guards the cases above against passing trivially: each knob must matter on this problem."""
    inits, targets, noise = make_problem()
    base = {"lr": 0.05, "weight_decay": 0.1}
    plain = run_optimizer(lambda ps: LAMB(ps, **base), inits, targets, noise)
    clipped = run_optimizer(
        lambda ps: LAMB(ps, **base, trust_clip=(0.8, 1.2)), inits, targets, noise
    )
    included = run_optimizer(lambda ps: LAMB(ps, **base, exclude_1d=False), inits, targets, noise)
    assert max_difference(plain, clipped) > 1e-3
    assert max_difference(plain, included) > 1e-3
    lars = {"lr": 0.5, "trust_coefficient": 0.02, "weight_decay": 0.05}
    plain = run_optimizer(lambda ps: LARS(ps, **lars), inits, targets, noise)
    clipped = run_optimizer(
        lambda ps: LARS(ps, **lars, trust_clip=(0.01, 0.03)), inits, targets, noise
    )
    assert max_difference(plain, clipped) > 1e-3


def test_per_group_overrides_match_reference() -> None:
    inits, targets, noise = make_problem()
    overrides: dict[str, Any] = {"weight_decay": 0.3, "trust_clip": (0.9, 1.1), "exclude_1d": False}

    def make(ps: list[nn.Parameter]) -> LAMB:
        return LAMB(
            [
                {"params": ps[:2]},
                {"params": ps[2:], **overrides},
            ],
            lr=0.05,
            weight_decay=0.1,
        )

    actual = run_optimizer(make, inits, targets, noise)
    first = reference_lamb(
        inits[:2], targets[:2], noise_slice(noise, 0, 2), lr=0.05, weight_decay=0.1
    )
    second = reference_lamb(inits[2:], targets[2:], noise_slice(noise, 2, 4), lr=0.05, **overrides)
    assert_all_close(actual, first + second)


def test_layer_adaptation_false_group_is_adamw() -> None:
    inits, targets, noise = make_problem()
    actual = run_optimizer(
        lambda ps: LAMB([{"params": ps, "layer_adaptation": False}], lr=0.05, weight_decay=0.1),
        inits,
        targets,
        noise,
    )
    assert_all_close(
        actual, reference_lamb(inits, targets, noise, lr=0.05, weight_decay=0.1, adam=True)
    )
    lars = run_optimizer(
        lambda ps: LARS([{"params": ps, "layer_adaptation": False}], lr=0.1, weight_decay=0.05),
        inits,
        targets,
        noise,
    )
    # λ = 1 everywhere: SGD with momentum and coupled weight decay (1-D tensors without decay).
    sgd = run_optimizer(
        lambda ps: torch.optim.SGD(
            [
                {"params": [p for p in ps if p.ndim > 1], "weight_decay": 0.05},
                {"params": [p for p in ps if p.ndim <= 1], "weight_decay": 0.0},
            ],
            lr=0.1,
            momentum=0.9,
        ),
        inits,
        targets,
        noise,
    )
    assert_all_close(lars, sgd)


def noise_slice(noise: list[list[Tensor]], start: int, stop: int) -> list[list[Tensor]]:
    return [step[start:stop] for step in noise]


def test_mixed_dtypes_in_one_group() -> None:
    inits, targets, noise = make_problem()
    inits32 = [x.float() if i % 2 else x for i, x in enumerate(inits)]
    targets32 = [x.float() if i % 2 else x for i, x in enumerate(targets)]
    noise32 = [[x.float() if i % 2 else x for i, x in enumerate(step)] for step in noise]
    actual = run_optimizer(
        lambda ps: LAMB(ps, lr=0.05, weight_decay=0.1), inits32, targets32, noise32
    )
    expected = reference_lamb(inits32, targets32, noise32, lr=0.05, weight_decay=0.1)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e)


# ---------------------------------------------------------------------------------------------
# Trust-ratio edge cases and hand-computed values
# ---------------------------------------------------------------------------------------------


def one_step(optimizer_class: type, x: Tensor, grad: Tensor, **hparams: Any) -> Tensor:
    param = nn.Parameter(x.clone())
    optimizer = optimizer_class([param], **hparams)
    param.grad = grad.clone()
    optimizer.step()
    return param.detach()


def test_lamb_hand_computed_ratio() -> None:
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # ‖x‖ = 5
    g = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    # Step 1, eps = 0: m̂ = g, v̂ = g², so m̂/√v̂ = sign(g) = [1, −1].
    # wd = 0.5: u = [1, −1] + 0.5·[3, 4] = [2.5, 1], ‖u‖ = √7.25, ratio = 5/√7.25 = 1.8569533817
    # x' = x − 0.1·ratio·u = [3 − 0.4642383454, 4 − 0.1856953382]
    result = one_step(LAMB, x, g, lr=0.1, eps=0.0, weight_decay=0.5)
    expected = torch.tensor([[2.5357616546, 3.8143046618]], dtype=torch.float64)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-9)
    # Without decay: u = [1, −1], ratio = 5/√2, x' = x − 0.1·(5/√2)·[1, −1].
    result = one_step(LAMB, x, g, lr=0.1, eps=0.0)
    expected = torch.tensor(
        [[3 - 0.35355339059327373, 4 + 0.35355339059327373]], dtype=torch.float64
    )
    torch.testing.assert_close(result, expected, **EXACT)


def test_lars_hand_computed_ratio() -> None:
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # ‖w‖ = 5
    g = torch.tensor([[0.6, 0.8]], dtype=torch.float64)  # ‖g‖ = 1
    # λ = 0.1·5/(1 + 0.2·5) = 0.25; buf = 1·0.25·(g + 0.2·w) = 0.25·[1.2, 1.6] = [0.3, 0.4]
    result = one_step(LARS, w, g, lr=1.0, weight_decay=0.2, trust_coefficient=0.1)
    torch.testing.assert_close(result, torch.tensor([[2.7, 3.6]], dtype=torch.float64), **EXACT)


def test_lamb_zero_parameter_gets_ratio_one() -> None:
    x = torch.zeros(3, 3, dtype=torch.float64)
    g = torch.linspace(-1, 1, 9, dtype=torch.float64).reshape(3, 3)
    result = one_step(LAMB, x, g, lr=0.1, weight_decay=0.5)
    # ‖x‖ = 0 ⇒ ratio 1 ⇒ x' = −lr·m̂/(√v̂ + eps) = −lr·g/(|g| + eps) (decay of zero is zero).
    torch.testing.assert_close(result, -0.1 * g / (g.abs() + 1e-6), **EXACT)


def test_lamb_zero_update_gets_ratio_one() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    # ‖u‖ = 0 would give ratio ‖x‖/0 = inf and inf·0 = NaN without the fallback.
    result = one_step(LAMB, x, torch.zeros_like(x), lr=0.1)
    torch.testing.assert_close(result, x, rtol=0, atol=0)


def test_lars_zero_gradient_and_zero_weight_get_ratio_one() -> None:
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    # ‖g‖ = 0 ⇒ λ = 1 (not η/β): buf = lr·β·w, w' = w·(1 − lr·β).
    result = one_step(LARS, w, torch.zeros_like(w), lr=0.5, weight_decay=0.1)
    torch.testing.assert_close(result, w * (1 - 0.5 * 0.1), **EXACT)
    # ‖w‖ = 0 ⇒ λ = 1 (not 0): w' = −lr·g.
    g = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    result = one_step(LARS, torch.zeros_like(w), g, lr=0.5, weight_decay=0.1)
    torch.testing.assert_close(result, -0.5 * g, **EXACT)


def test_excluded_1d_parameter_is_plain_adam() -> None:
    bias = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([0.5, 0.5, -0.5], dtype=torch.float64)
    result = one_step(LAMB, bias, g, lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(result, bias - 0.1 * g / (g.abs() + 1e-6), **EXACT)
    result = one_step(LARS, bias, g, lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(result, bias - 0.1 * g, **EXACT)


# ---------------------------------------------------------------------------------------------
# adam=True equals torch's Adam / AdamW
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lamb_adam_mode_equals_torch_adam(weight_decay: float) -> None:
    inits, targets, noise = make_problem()
    lamb = run_optimizer(
        lambda ps: LAMB(
            ps, lr=0.01, eps=1e-6, weight_decay=weight_decay, adam=True, exclude_1d=False
        ),
        inits,
        targets,
        noise,
    )
    torch_class = torch.optim.AdamW if weight_decay else torch.optim.Adam
    reference = run_optimizer(
        lambda ps: torch_class(ps, lr=0.01, eps=1e-6, weight_decay=weight_decay, foreach=False),
        inits,
        targets,
        noise,
    )
    assert_all_close(lamb, reference)


# ---------------------------------------------------------------------------------------------
# State dict, skipped and sparse gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: LAMB(ps, lr=0.05, weight_decay=0.1),
        lambda ps: LARS(ps, lr=0.5, trust_coefficient=0.02, weight_decay=0.05, nesterov=True),
    ],
    ids=["LAMB", "LARS"],
)
def test_state_dict_round_trip_continues_identically(make: Callable[..., Any]) -> None:
    inits, targets, noise = make_problem(steps=6)
    params = [nn.Parameter(x.clone()) for x in inits]
    optimizer = make(params)

    def advance(
        ps: list[nn.Parameter], opt: torch.optim.Optimizer, steps: list[list[Tensor]]
    ) -> None:
        for step_noise in steps:
            for p, target, eps in zip(ps, targets, step_noise, strict=True):
                p.grad = gradient(p.detach(), target, eps)
            opt.step()

    advance(params, optimizer, noise[:3])
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored_params = [nn.Parameter(p.detach().clone()) for p in params]
    restored = make(restored_params)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    advance(params, optimizer, noise[3:])
    advance(restored_params, restored, noise[3:])
    assert_all_close(
        [p.detach() for p in restored_params], [p.detach() for p in params], rtol=0, atol=0
    )


def test_lamb_step_is_stored_per_parameter_as_tensor() -> None:
    inits, targets, noise = make_problem(steps=3)
    params = [nn.Parameter(x.clone()) for x in inits]
    optimizer = LAMB(params)
    for step_noise in noise:
        for p, target, eps in zip(params, targets, step_noise, strict=True):
            p.grad = gradient(p.detach(), target, eps)
        optimizer.step()
    steps = [optimizer.state[p]["step"] for p in params]
    assert all(isinstance(s, Tensor) and s.item() == 3 for s in steps)


def test_parameters_without_grad_are_skipped() -> None:
    used, unused = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    for optimizer in (LAMB([used, unused], lr=0.1), LARS([used, unused], lr=0.1)):
        used.grad = torch.ones(2, 2)
        optimizer.step()
        assert torch.equal(unused.detach(), torch.ones(2, 2))
        assert unused not in optimizer.state
        assert not torch.equal(used.detach(), torch.ones(2, 2))


def test_sparse_gradients_raise() -> None:
    for optimizer_class in (LAMB, LARS):
        param = nn.Parameter(torch.ones(3, 2))
        param.grad = torch.eye(3, 2).to_sparse()
        with pytest.raises(RuntimeError, match="sparse"):
            optimizer_class([param], lr=0.1).step()


# ---------------------------------------------------------------------------------------------
# Sharded parameters: group= makes 2-rank sharded LAMB/LARS equal to unsharded
# ---------------------------------------------------------------------------------------------

SHARDED_LAMB: dict[str, Any] = {"lr": 0.05, "weight_decay": 0.1}
SHARDED_LARS: dict[str, Any] = {"lr": 0.5, "trust_coefficient": 0.02, "weight_decay": 0.05}


def _sharded_worker(
    rank: int,
    world_size: int,
    inits: list[Tensor],
    targets: list[Tensor],
    noise: list[list[Tensor]],
) -> dict[str, Any]:
    def shard(tensors: list[Tensor]) -> list[Tensor]:
        return [t.chunk(world_size, dim=0)[rank].clone() for t in tensors]

    shard_inits, shard_targets = shard(inits), shard(targets)
    shard_noise = [shard(step) for step in noise]
    process_group = dist.new_group(list(range(world_size)))

    calls = {"all_reduce": 0}
    original_all_reduce = dist.all_reduce

    def counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
        calls["all_reduce"] += 1
        return original_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce  # forked child: the parent's module is untouched

    def two_groups_lamb(group: Any) -> Callable[[list[nn.Parameter]], LAMB]:
        return lambda ps: LAMB(
            [{"params": ps[:2]}, {"params": ps[2:]}], **SHARDED_LAMB, group=group
        )

    results: dict[str, Any] = {}
    results["lamb_group"] = run_optimizer(
        two_groups_lamb(process_group), shard_inits, shard_targets, shard_noise
    )
    results["lamb_all_reduces"] = calls["all_reduce"]
    results["lamb_local"] = run_optimizer(
        two_groups_lamb(None), shard_inits, shard_targets, shard_noise
    )
    calls["all_reduce"] = 0
    results["lars_group"] = run_optimizer(
        lambda ps: LARS(ps, **SHARDED_LARS, group=process_group),
        shard_inits,
        shard_targets,
        shard_noise,
    )
    results["lars_all_reduces"] = calls["all_reduce"]
    results["lars_local"] = run_optimizer(
        lambda ps: LARS(ps, **SHARDED_LARS), shard_inits, shard_targets, shard_noise
    )

    # A state dict of an optimizer with a live process group serialises, and loading keeps it.
    optimizer = LAMB([nn.Parameter(shard_inits[0].clone())], group=process_group)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    results["group_kept"] = optimizer.param_groups[0]["group"] is process_group
    return results


@pytest.fixture(scope="module")
def sharded_run() -> tuple[list[dict[str, Any]], tuple[Any, ...]]:
    problem = make_problem()
    return run_distributed(_sharded_worker, 2, *problem, timeout=60), problem


def gather_shards(per_rank: list[dict[str, Any]], key: str) -> list[Tensor]:
    return [torch.cat(shards, dim=0) for shards in zip(*(r[key] for r in per_rank), strict=True)]


@pytest.mark.distributed
def test_sharded_lamb_with_group_equals_unsharded(sharded_run: Any) -> None:
    per_rank, problem = sharded_run
    unsharded = run_optimizer(lambda ps: LAMB(ps, **SHARDED_LAMB), *problem)
    assert_all_close(gather_shards(per_rank, "lamb_group"), unsharded, rtol=0, atol=1e-10)
    # One all_reduce per param group (2) per step.
    assert [r["lamb_all_reduces"] for r in per_rank] == [2 * STEPS, 2 * STEPS]
    # Without group= the local shard norms give different trust ratios: the reduction matters.
    assert max_difference(gather_shards(per_rank, "lamb_local"), unsharded) > 1e-4


@pytest.mark.distributed
def test_sharded_lars_with_group_equals_unsharded(sharded_run: Any) -> None:
    per_rank, problem = sharded_run
    unsharded = run_optimizer(lambda ps: LARS(ps, **SHARDED_LARS), *problem)
    assert_all_close(gather_shards(per_rank, "lars_group"), unsharded, rtol=0, atol=1e-10)
    assert [r["lars_all_reduces"] for r in per_rank] == [STEPS, STEPS]
    assert max_difference(gather_shards(per_rank, "lars_local"), unsharded) > 1e-4


@pytest.mark.distributed
def test_state_dict_keeps_live_process_group(sharded_run: Any) -> None:
    per_rank, _ = sharded_run
    assert all(r["group_kept"] for r in per_rank)


# ---------------------------------------------------------------------------------------------
# Schedules and batch-size scaling
# ---------------------------------------------------------------------------------------------


def schedule_factors(make: Callable[[torch.optim.Optimizer], Any], steps: int) -> list[float]:
    """The LR multiplier before optimizer step s, for s = 0..steps (base LR 2.0)."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    schedule = make(optimizer)
    factors = [optimizer.param_groups[0]["lr"] / 2.0]
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        factors.append(optimizer.param_groups[0]["lr"] / 2.0)
    return factors


def test_warmup_polynomial_schedule_values() -> None:
    linear = schedule_factors(lambda o: warmup_polynomial_schedule(o, 4, 12), 20)
    assert linear[0] == 0.0  # starts at zero
    assert linear[2] == pytest.approx(0.5)  # mid warm-up
    assert linear[4] == pytest.approx(1.0)  # end of warm-up: the base LR
    assert linear[8] == pytest.approx(0.5)  # half-way through the decay
    assert linear[12] == pytest.approx(0.0)  # end
    assert linear[20] == pytest.approx(0.0)  # past the end: constant
    squared = schedule_factors(
        lambda o: warmup_polynomial_schedule(o, 4, 12, power=2.0, end_factor=0.1), 20
    )
    assert squared[8] == pytest.approx(0.1 + 0.9 * 0.25)
    assert squared[12] == pytest.approx(0.1) and squared[20] == pytest.approx(0.1)
    no_warmup = schedule_factors(lambda o: warmup_polynomial_schedule(o, 0, 10), 10)
    assert no_warmup[0] == 1.0 and no_warmup[5] == pytest.approx(0.5)


def test_warmup_cosine_schedule_values() -> None:
    cosine = schedule_factors(lambda o: warmup_cosine_schedule(o, 4, 12, end_factor=0.1), 20)
    assert cosine[0] == 0.0
    assert cosine[1] == pytest.approx(0.25)
    assert cosine[4] == pytest.approx(1.0)
    assert cosine[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine[8] == pytest.approx(0.55)
    assert cosine[12] == pytest.approx(0.1)
    assert cosine[20] == pytest.approx(0.1)


@pytest.mark.parametrize("make_schedule", [warmup_polynomial_schedule, warmup_cosine_schedule])
def test_schedule_state_dict_round_trips_through_a_weights_only_checkpoint(
    make_schedule, tmp_path
) -> None:
    # a resumed run rebuilds the scheduler and loads its state: the LRs must continue exactly
    def build() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5)
        return optimizer, make_schedule(optimizer, warmup_steps=3, total_steps=10)

    optimizer, schedule = build()
    for _ in range(5):
        optimizer.step()
        schedule.step()
    torch.save(schedule.state_dict(), tmp_path / "schedule.pt")
    expected = []
    for _ in range(4):
        optimizer.step()
        schedule.step()
        expected.append(schedule.get_last_lr())
    optimizer, schedule = build()
    schedule.load_state_dict(torch.load(tmp_path / "schedule.pt", weights_only=True))
    resumed = []
    for _ in range(4):
        optimizer.step()
        schedule.step()
        resumed.append(schedule.get_last_lr())
    assert resumed == expected


@pytest.mark.parametrize("make_schedule", [warmup_polynomial_schedule, warmup_cosine_schedule])
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"warmup_steps": -1, "total_steps": 10}, "warmup_steps"),
        ({"warmup_steps": 2.5, "total_steps": 10}, "warmup_steps"),
        ({"warmup_steps": 2, "total_steps": 0}, "total_steps"),
        ({"warmup_steps": 11, "total_steps": 10}, "warmup_steps"),
        ({"warmup_steps": 2, "total_steps": 10, "end_factor": 1.5}, "end_factor"),
        ({"warmup_steps": 2, "total_steps": 10, "end_factor": -0.1}, "end_factor"),
    ],
)
def test_schedules_reject_bad_arguments(
    make_schedule: Callable[..., Any], kwargs: dict[str, Any], name: str
) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=name):
        make_schedule(optimizer, **kwargs)


def test_polynomial_schedule_rejects_bad_power() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="power"):
        warmup_polynomial_schedule(optimizer, 2, 10, power=0.0)


def test_scale_lr() -> None:
    assert scale_lr(0.1, 256, 1024) == pytest.approx(0.4)
    assert scale_lr(0.1, 256, 1024, rule="sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 1024, 256, rule="linear") == pytest.approx(0.025)
    with pytest.raises(ValueError, match="rule"):
        scale_lr(0.1, 256, 1024, rule="cubic")
    with pytest.raises(ValueError, match="batch_size"):
        scale_lr(0.1, 256, 0)
    with pytest.raises(ValueError, match="base_batch_size"):
        scale_lr(0.1, -1, 256)


def test_param_groups_no_decay_splits_by_name() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2, bias=False))
    model[0].weight.requires_grad_(True)
    decay, no_decay = param_groups_no_decay(model, weight_decay=0.01, no_decay=(r"bias$", r"^1\."))
    assert decay["weight_decay"] == 0.01
    assert [p.shape for p in decay["params"]] == [torch.Size([8, 4]), torch.Size([2, 8])]
    assert no_decay["weight_decay"] == 0.0 and no_decay["layer_adaptation"] is False
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
    }
    optimizer = LAMB([decay, no_decay], lr=0.01)
    assert optimizer.param_groups[1]["layer_adaptation"] is False


# ---------------------------------------------------------------------------------------------
# Convergence smoke test and argument validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: LAMB(ps, lr=0.1, weight_decay=1e-4),
        lambda ps: LARS(ps, lr=1.0, trust_coefficient=0.05, weight_decay=1e-4),
    ],
    ids=["LAMB", "LARS"],
)
def test_logistic_regression_converges(make: Callable[..., torch.optim.Optimizer]) -> None:
    """Full-batch logistic regression on separable data, with the warm-up + decay recipe."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(512, 10, generator=generator)
    true_weight = torch.randn(10, generator=generator)
    labels = (features @ true_weight > 0).float()
    torch.manual_seed(0)
    model = nn.Linear(10, 1)
    optimizer = make(list(model.parameters()))
    schedule = warmup_polynomial_schedule(optimizer, warmup_steps=10, total_steps=100)
    loss_fn = nn.BCEWithLogitsLoss()
    initial = loss_fn(model(features).squeeze(1), labels).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = loss_fn(model(features).squeeze(1), labels)
        loss.backward()
        optimizer.step()
        schedule.step()
    final = loss_fn(model(features).squeeze(1), labels).item()
    assert initial > 0.5
    assert final < 0.1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"betas": (0.9,)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"trust_clip": (2.0, 1.0)}, "trust_clip"),
        ({"trust_clip": (-1.0, 1.0)}, "trust_clip"),
        ({"trust_clip": 3.0}, "trust_clip"),
        ({"group": "world"}, "group"),
    ],
)
def test_lamb_rejects_bad_hyperparameters(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LAMB([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.1, "momentum": 1.5}, "momentum"),
        ({"lr": 0.1, "trust_coefficient": 0.0}, "trust_coefficient"),
        ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
        ({"lr": 0.1, "trust_clip": (1.0, 0.5)}, "trust_clip"),
        ({"lr": 0.1, "momentum": 0.0, "nesterov": True}, "nesterov"),
    ],
)
def test_lars_rejects_bad_hyperparameters(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LARS([nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_param_group_override_is_named() -> None:
    with pytest.raises(ValueError, match=r"weight_decay.*param group 1"):
        LAMB(
            [
                {"params": [nn.Parameter(torch.zeros(2))]},
                {"params": [nn.Parameter(torch.zeros(2))], "weight_decay": -1.0},
            ]
        )
    with pytest.raises(ValueError, match=r"trust_clip.*param group 0"):
        LARS([{"params": [nn.Parameter(torch.zeros(2))], "trust_clip": (1.0,)}], lr=0.1)
