"""The reference GPT: sizes, layout-independent seeded init, positions, data, errors."""

from __future__ import annotations

import pytest
import torch

from ptrain.core.models.gpt import GPT, GPTConfig, gpt_loss, synthetic_batch


@pytest.mark.parametrize(
    "overrides",
    [{}, {"bias": False}, {"n_layers": 3, "mlp_ratio": 2, "vocab_size": 50, "seq_len": 7}],
)
def test_num_params_formula_matches_the_built_model(overrides: dict) -> None:
    config = GPTConfig.debug(**overrides)
    model = GPT(config, device="meta")
    assert config.num_params() == sum(p.numel() for p in model.parameters())


def test_meta_build_then_seeded_init_equals_eager_seeded_init() -> None:
    config = GPTConfig.debug()
    eager = GPT(config)
    eager.init_weights(seed=7)
    meta = GPT(config, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    meta.init_weights(seed=7)
    for (name, a), (_, b) in zip(
        eager.state_dict().items(), meta.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    other = GPT(config)
    other.init_weights(seed=8)
    assert not torch.equal(other.head.weight, eager.head.weight)


def test_init_scales_output_projections_and_resets_norms() -> None:
    config = GPTConfig.debug(dim=128, n_layers=8)
    model = GPT(config)
    model.init_weights(seed=0)
    fc1 = model.blocks[0].mlp.fc1.weight.std().item()
    fc2 = model.blocks[0].mlp.fc2.weight.std().item()
    assert fc1 == pytest.approx(0.02, rel=0.05)
    assert fc2 == pytest.approx(0.02 / 4.0, rel=0.05)  # init_std / sqrt(2 * n_layers)
    assert torch.equal(model.norm.weight, torch.ones(128))
    assert torch.equal(model.blocks[0].attn.q.bias, torch.zeros(128))


def test_seeded_init_of_a_tagged_shard_gets_its_slice_of_the_serial_values() -> None:
    config = GPTConfig.debug()
    serial = GPT(config)
    serial.init_weights(seed=3)
    sharded = GPT(config)
    fc1 = sharded.blocks[1].mlp.fc1
    full_shape = fc1.weight.shape
    fc1.weight = torch.nn.Parameter(torch.empty(full_shape[0] // 2, full_shape[1]))
    fc1.weight.full_shape = full_shape  # what ptrain.core.tp layers attach
    fc1.weight.shard_from_full = lambda full: full[full.shape[0] // 2 :]
    sharded.init_weights(seed=3)
    expected = serial.blocks[1].mlp.fc1.weight[full_shape[0] // 2 :]
    assert torch.equal(fc1.weight, expected)
    assert torch.equal(sharded.head.weight, serial.head.weight)  # later tensors unaffected


def test_position_ids_default_and_explicit() -> None:
    config = GPTConfig.debug()
    model = GPT(config)
    tokens, _ = synthetic_batch(config, 2, seed=0)
    logits = model(tokens)
    assert logits.shape == (2, config.seq_len, config.vocab_size)
    explicit = model(tokens, position_ids=torch.arange(config.seq_len))
    assert torch.equal(logits, explicit)
    shifted = model(tokens[:, :8], position_ids=torch.arange(8, 16))
    assert not torch.allclose(shifted, logits[:, :8])


def test_too_long_sequence_is_an_error_naming_both_lengths() -> None:
    config = GPTConfig.debug(seq_len=8)
    tokens = torch.zeros(1, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="sequence length 9 exceeds the model's seq_len 8"):
        GPT(config)(tokens)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 66}, r"dim \(66\) must be divisible by n_heads \(4\)"),
        ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
        ({"vocab_size": 2.5}, "vocab_size must be a positive integer"),
    ],
)
def test_bad_config_values_are_value_errors_naming_the_field(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig.debug(**overrides)


def test_synthetic_batch_is_seeded_shifted_and_follows_the_chain() -> None:
    config = GPTConfig.debug()
    tokens, targets = synthetic_batch(config, 4, seed=5)
    again, _ = synthetic_batch(config, 4, seed=5)
    other, _ = synthetic_batch(config, 4, seed=6)
    assert tokens.shape == targets.shape == (4, config.seq_len)
    assert torch.equal(tokens, again) and not torch.equal(tokens, other)
    assert torch.equal(tokens[:, 1:], targets[:, :-1])
    # every transition is one of the 4 successors of its token: few distinct pairs
    pairs = {(int(a), int(b)) for a, b in zip(tokens.flatten(), targets.flatten(), strict=True)}
    assert len({a for a, _ in pairs}) * 4 >= len(pairs)


def test_loss_falls_when_training_on_synthetic_data() -> None:
    config = GPTConfig.debug(n_layers=1)
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(15):
        tokens, targets = synthetic_batch(config, 8, seed=step)
        loss = gpt_loss(model(tokens), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
