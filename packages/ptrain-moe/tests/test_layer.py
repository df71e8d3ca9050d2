"""Routing invariants, equivalence with references, aux losses by hand, gradcheck, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptrain.moe import MoE, MoEConfig, expert_capacity, route
from ptrain.moe.layer import importance_load_loss, switch_loss, z_loss
from ptrain.moe.reference import EinsumDispatchMoE, NaiveLoopMoE, all_experts_reference


def _layer(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: object) -> MoE:
    torch.manual_seed(seed)
    settings_ = dict(dim=8, expert_hidden=16, num_experts=4, top_k=2)
    settings_.update(overrides)  # type: ignore[arg-type]
    return MoE(MoEConfig(**settings_)).to(dtype)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- routing invariants
@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 60),
    experts=st.integers(2, 6),
    top_k=st.sampled_from([1, 2]),
    capacity_factor=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.25, 2.0]),
    priority=st.sampled_from(["bpr", "order"]),
    seed=st.integers(0, 1000),
)
def test_routing_invariants(
    tokens: int, experts: int, top_k: int, capacity_factor: float, priority: str, seed: int
) -> None:
    logits = torch.randn(tokens, experts, generator=torch.Generator().manual_seed(seed))
    routing = route(logits, top_k, capacity_factor=capacity_factor, priority=priority)
    # each token goes to at most k experts, never twice to the same one
    assert routing.expert_index.shape == (tokens, top_k)
    if top_k == 2:
        assert (routing.expert_index[:, 0] != routing.expert_index[:, 1]).all()
    kept = routing.kept
    assert (routing.gates[~kept] == 0).all()
    counts = torch.bincount(routing.expert_index[kept], minlength=experts)
    if capacity_factor == 0:
        assert kept.all() and routing.capacity is None
    else:
        capacity = math.ceil(capacity_factor * top_k * tokens / experts)
        assert routing.capacity == max(1, capacity)
        assert int(counts.max()) <= routing.capacity
        # an expert drops only when full
        for expert in range(experts):
            chose = (routing.expert_index == expert) & ~kept
            if chose.any():
                assert int(counts[expert]) == routing.capacity


def test_capacity_formula_is_pinned() -> None:
    assert expert_capacity(4096, 8, 2, 1.25) == 1280
    assert expert_capacity(10, 4, 1, 1.0) == 3
    assert expert_capacity(1, 64, 1, 0.1) == 1


def test_bpr_drops_the_least_confident_tokens_first() -> None:
    # every token prefers expert 0; confidence rises with the token index
    logits = torch.zeros(6, 3)
    logits[:, 0] = torch.arange(6, dtype=torch.float32)
    bpr = route(logits, 1, capacity_factor=0.5, priority="bpr")  # capacity 1
    assert bpr.capacity == 1
    assert bpr.kept[:, 0].tolist() == [False] * 5 + [True]
    order = route(logits, 1, capacity_factor=0.5, priority="order")
    assert order.kept[:, 0].tolist() == [True] + [False] * 5


def test_second_choices_queue_after_every_first_choice() -> None:
    # 4 tokens, 2 experts, top-2: every token's first choice is expert 0, second expert 1
    logits = torch.tensor([[2.0, 0.0]] * 4)
    routing = route(logits, 2, capacity_factor=0.5, priority="order")  # capacity 2
    assert routing.capacity == 2
    assert routing.kept[:, 0].tolist() == [True, True, False, False]
    assert routing.kept[:, 1].tolist() == [True, True, False, False]


def test_dropped_tokens_come_out_unchanged_through_the_residual() -> None:
    layer = _layer(capacity_factor=0.25, top_k=1).eval()
    x = torch.randn(40, 8)
    y, aux = layer(x)
    routing = route(layer.router(x), 1, capacity_factor=0.25)
    dropped = ~routing.kept[:, 0]
    assert dropped.sum() == aux["dropped"] > 0
    assert aux["dropped_fraction"] == pytest.approx(int(dropped.sum()) / 40)
    assert torch.equal((x + y)[dropped], x[dropped])
    assert (y[~dropped].abs().sum(1) > 0).all()
    assert int(aux["tokens_per_expert"].max()) <= aux["capacity"]


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("top_k", [1, 2])
def test_dropless_equals_all_experts_reference_fp64(top_k: int) -> None:
    layer = _layer(torch.float64, top_k=top_k, num_experts=5).eval()
    x = torch.randn(3, 17, 8, dtype=torch.float64, requires_grad=True)
    y, aux = layer(x)
    assert aux["dropped"] == 0 and aux["capacity"] == -1
    assert int(aux["tokens_per_expert"].sum()) == 3 * 17 * top_k
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = all_experts_reference(layer, x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, *layer.parameters()])
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x_ref, *layer.parameters()])
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_capacity_path_equals_masked_reference_fp64() -> None:
    layer = _layer(torch.float64, capacity_factor=0.5).eval()
    x = torch.randn(30, 8, dtype=torch.float64)
    y, aux = layer(x)
    assert aux["dropped"] > 0
    torch.testing.assert_close(y, all_experts_reference(layer, x), rtol=1e-12, atol=1e-12)


def test_naive_loop_and_einsum_baselines_agree_with_the_layer() -> None:
    layer = _layer(num_experts=6).eval()
    x = torch.randn(50, 8)
    y, _ = layer(x)
    torch.testing.assert_close(NaiveLoopMoE(layer)(x), y, rtol=1e-5, atol=1e-5)
    capped = _layer(num_experts=6, capacity_factor=1.0, priority="order").eval()
    torch.testing.assert_close(
        EinsumDispatchMoE(capped, 1.0)(x), capped(x)[0], rtol=1e-5, atol=1e-5
    )


def test_gradcheck_fp64_toy_size() -> None:
    layer = _layer(torch.float64, dim=4, expert_hidden=5, num_experts=3).eval()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)

    def output(inputs: torch.Tensor, w1: torch.Tensor, router: torch.Tensor) -> torch.Tensor:
        params = {"w1": w1, "router.weight": router}
        y, aux = torch.func.functional_call(layer, params, (inputs,))
        return y.sum(1) + aux["loss"]

    w1 = layer.w1.detach().clone().requires_grad_(True)
    router = layer.router.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(output, (x, w1, router), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- aux losses by hand
def test_aux_losses_equal_hand_computation() -> None:
    logits = torch.tensor(
        [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [2.5, 0.5, 0.0]], dtype=torch.float64
    )
    probs = torch.softmax(logits, -1)
    top1 = torch.tensor([0, 1, 2, 0])
    # Switch: E * sum_e f_e * P_e with f = (2/4, 1/4, 1/4)
    fraction = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    expected_switch = 3 * float((fraction * probs.mean(0)).sum())
    assert float(switch_loss(probs, top1[:, None])) == pytest.approx(expected_switch, rel=1e-12)
    # z-loss: mean of logsumexp^2
    expected_z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 4
    assert float(z_loss(logits)) == pytest.approx(expected_z, rel=1e-12)
    # V-MoE importance + load, no noise drawn (threshold = k-th largest clean logit)
    sigma = 1.0 / 3
    importance = probs.sum(0).tolist()
    threshold = [sorted(row)[-2] for row in logits.tolist()]  # k = 2
    load = [
        sum(0.5 * (1 + math.erf((row[e] - thr) / sigma / math.sqrt(2))) for row, thr in
            zip(logits.tolist(), threshold, strict=True))
        for e in range(3)
    ]  # fmt: skip

    def cv2(values: list[float]) -> float:
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return var / mean**2

    expected = 0.5 * cv2(importance) + 0.5 * cv2(load)
    got = importance_load_loss(logits, logits, top_k=2, gate_noise=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_switch_loss_is_one_when_uniform_and_larger_when_collapsed() -> None:
    uniform = torch.full((8, 4), 0.25)
    balanced = torch.arange(8).remainder(4)[:, None]
    assert float(switch_loss(uniform, balanced)) == pytest.approx(1.0)
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(8, 1)
    assert float(switch_loss(collapsed, torch.zeros(8, 1, dtype=torch.long))) > 3.5


def test_layer_aux_dict_sums_the_selected_losses() -> None:
    layer = _layer(
        aux_losses=("switch", "z_loss", "importance_load"),
        gate_noise=1.0,
        switch_weight=0.1,
        z_loss_weight=0.01,
        importance_load_weight=0.5,
    ).eval()
    _, aux = layer(torch.randn(20, 8))
    total = 0.1 * aux["switch"] + 0.01 * aux["z_loss"] + 0.5 * aux["importance_load"]
    torch.testing.assert_close(aux["loss"], total)
    layer.train()  # noise on: routing stays valid, losses finite
    _, aux = layer(torch.randn(20, 8))
    assert torch.isfinite(aux["loss"])


def test_router_gets_gradients_through_the_gates() -> None:
    layer = _layer()
    y, aux = layer(torch.randn(32, 8))
    (y.square().sum() + aux["loss"]).backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
    assert layer.w1.grad is not None and (layer.w1.grad.flatten(1).abs().sum(1) > 0).all()


# --------------------------------------------------------------------------- state dict, attrs
def test_state_dict_uses_global_expert_ids_and_documented_attributes() -> None:
    layer = _layer()
    state = layer.state_dict()
    assert set(state) == {"router.weight"} | {
        f"experts.{e}.{name}" for e in range(4) for name in ("w1", "b1", "w2", "b2")
    }
    torch.testing.assert_close(state["experts.2.w1"], layer.w1[2])
    weights = layer.expert_weights(3)
    assert weights["w1"].shape == (8, 16) and weights["w2"].shape == (16, 8)  # type: ignore[union-attr]
    other = _layer(seed=1)
    other.load_state_dict(state)
    torch.testing.assert_close(other.w2, layer.w2)
    with pytest.raises(RuntimeError, match=r"experts\.1\.w1"):
        other.load_state_dict({k: v for k, v in state.items() if k != "experts.1.w1"})


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(top_k=2, num_experts=1), "top_k=2 is larger than num_experts=1"),
        (dict(top_k=3, num_experts=8), "top_k must be 1 or 2, got 3"),
        (dict(capacity_factor=-1.0), "capacity_factor must be > 0 .* got -1.0"),
        (dict(capacity_factor=float("nan")), "capacity_factor must be a finite number"),
        (dict(priority="random"), "priority must be 'bpr' or 'order', got 'random'"),
        (dict(aux_losses=("balance",)), "unknown loss 'balance'"),
        (dict(aux_losses=("importance_load",)), "needs gate_noise > 0"),
        (dict(dim=0), "dim must be a positive int, got 0"),
    ],
)
def test_bad_config_raises_value_error_naming_the_value(
    overrides: dict[str, object], message: str
) -> None:
    settings_ = dict(dim=8, expert_hidden=16, num_experts=4, top_k=2)
    settings_.update(overrides)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        MoEConfig(**settings_)  # type: ignore[arg-type]


def test_capacity_factor_zero_is_the_dropless_switch() -> None:
    config = MoEConfig(dim=4, expert_hidden=4, num_experts=2, capacity_factor=0)
    assert config.dropless


def test_wrong_input_width_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 8\), got \(3, 5\)"):
        _layer()(torch.randn(3, 5))
