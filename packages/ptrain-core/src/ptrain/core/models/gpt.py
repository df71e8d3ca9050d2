"""A GPT-style decoder-only transformer whose parts the parallel modes can replace from outside.

The structure is fixed so that ``ptrain.core.parallel.parallelize`` (and ptrain-hetmem) can find
and swap layers by name::

    GPT
      tok_emb: Embedding(vocab_size, dim)         pos_emb: Embedding(seq_len, dim)
      blocks: ModuleList[Block] × n_layers
        ln1: LayerNorm(dim)
        attn: Attention   q, k, v: Linear(dim, dim)   core: SDPA (replaceable)
                          proj: Linear(dim, dim)
        ln2: LayerNorm(dim)
        mlp: MLP          fc1: Linear(dim, mlp_ratio·dim)   act: GELU
                          fc2: Linear(mlp_ratio·dim, dim)
      norm: LayerNorm(dim)
      head: Linear(dim, vocab_size, bias=False)

``Attention`` reshapes with ``-1`` heads, so a column-sharded ``q``/``k``/``v`` (a contiguous
range of heads per rank) works unchanged. ``Attention.core`` takes ``(q, k, v)`` shaped
``[batch, heads, seq, head_dim]`` and is what ring / Ulysses sequence parallelism replaces.
``GPT.forward`` accepts ``position_ids`` for a sequence shard that does not start at 0.

Example:
    >>> import torch
    >>> from ptrain.core.models.gpt import GPT, GPTConfig, gpt_loss, synthetic_batch
    >>> config = GPTConfig.debug()
    >>> model = GPT(config)
    >>> tokens, targets = synthetic_batch(config, batch_size=2, seed=0)
    >>> gpt_loss(model(tokens), targets).shape
    torch.Size([])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GPT",
    "MLP",
    "SDPA",
    "Attention",
    "Block",
    "GPTConfig",
    "gpt_loss",
    "synthetic_batch",
]


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a ``GPT``.

    Attributes:
        vocab_size: tokens in the vocabulary.
        seq_len: the longest sequence (rows of the learned position embedding).
        dim: hidden size; must be divisible by ``n_heads``.
        n_layers: transformer blocks.
        n_heads: attention heads.
        mlp_ratio: the MLP's hidden size is ``mlp_ratio * dim``.
        norm_eps: LayerNorm epsilon.
        bias: whether the Linear layers of the blocks have biases.
        init_std: standard deviation of the normal initialisation (GPT-2: 0.02); the output
            projections ``attn.proj`` and ``mlp.fc2`` use ``init_std / sqrt(2 * n_layers)``.
    """

    vocab_size: int = 1024
    seq_len: int = 64
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    norm_eps: float = 1e-5
    bias: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "dim", "n_layers", "n_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads != 0:
            raise ValueError(
                f"GPTConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})"
            )

    @classmethod
    def debug(cls, **overrides: Any) -> GPTConfig:
        """A tiny config for tests and demos (vocab 128, seq 32, dim 64, 2 layers, 4 heads)."""
        values: dict[str, Any] = {
            "vocab_size": 128,
            "seq_len": 32,
            "dim": 64,
            "n_layers": 2,
            "n_heads": 4,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (for checkpoints and JSON)."""
        return asdict(self)

    def num_params(self) -> int:
        """Parameters of ``GPT(self)``, computed without building it."""
        d, f, v = self.dim, self.mlp_ratio * self.dim, self.vocab_size
        b = 1 if self.bias else 0
        block = 4 * (d * d + b * d) + (d * f + b * f) + (f * d + b * d) + 2 * (2 * d)
        return v * d + self.seq_len * d + self.n_layers * block + 2 * d + d * v


class SDPA(nn.Module):
    """Causal scaled-dot-product attention over ``[batch, heads, seq, head_dim]`` tensors."""

    def __init__(self, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (easy to shard by heads)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.q = nn.Linear(config.dim, config.dim, bias=config.bias)
        self.k = nn.Linear(config.dim, config.dim, bias=config.bias)
        self.v = nn.Linear(config.dim, config.dim, bias=config.bias)
        self.core: nn.Module = SDPA(causal=True)
        self.proj = nn.Linear(config.dim, config.dim, bias=config.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq = x.shape[0], x.shape[1]
        return x.view(batch, seq, -1, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq = x.shape[0], x.shape[1]
        y = self.core(self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x)))
        return self.proj(y.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    """Linear → GELU → Linear."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.dim
        self.fc1 = nn.Linear(config.dim, hidden, bias=config.bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, config.dim, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model (learned positions, untied head)."""

    def __init__(self, config: GPTConfig, device: torch.device | str | None = None) -> None:
        """Builds the model.

        Args:
            config: the sizes.
            device: where to create the parameters; ``"meta"`` builds the structure without
                memory (then ``to_empty(device=...)`` and ``init_weights()``), which is how the
                parallel modes avoid a full copy on any rank.
        """
        super().__init__()
        self.config = config
        with torch.device(device) if device is not None else _nullcontext():
            self.tok_emb = nn.Embedding(config.vocab_size, config.dim)
            self.pos_emb = nn.Embedding(config.seq_len, config.dim)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
            self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
            self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """(Re-)initialises every parameter: normal(0, init_std), zero biases, unit norms.

        Args:
            seed: when given, the values depend only on the seed (a private generator).
        """
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = out_std if name.endswith(("attn.proj", "mlp.fc2")) else std
                _normal_(module.weight, scale, generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                _normal_(module.weight, std, generator)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def forward(
        self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Returns logits ``[batch, seq, vocab]`` for token ids ``[batch, seq]``.

        Args:
            tokens: token ids.
            position_ids: positions of the tokens (default ``0 … seq-1``); a sequence-parallel
                rank holding a later slice of the sequence passes its global positions.
        """
        seq = tokens.shape[1]
        if position_ids is None:
            if seq > self.config.seq_len:
                raise ValueError(
                    f"sequence length {seq} exceeds the model's seq_len {self.config.seq_len}"
                )
            position_ids = torch.arange(seq, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(position_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def gpt_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``logits [..., vocab]`` against ``targets [...]``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def synthetic_batch(
    config: GPTConfig, batch_size: int, seed: int, seq_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable token batch: sequences from a fixed sparse Markov chain over the vocabulary.

    The chain (4 likely successors per token) is the same for every seed; ``seed`` picks the
    sequences, so a loss that falls shows the model learning the chain.

    Args:
        config: gives the vocabulary and (default) the sequence length.
        batch_size: sequences in the batch.
        seed: selects the sequences.
        seq_len: tokens per sequence (default ``config.seq_len``).

    Returns:
        ``(tokens, targets)``, both ``[batch_size, seq_len]`` int64; targets are tokens shifted
        by one.
    """
    seq = config.seq_len if seq_len is None else seq_len
    chain = torch.Generator().manual_seed(12345)
    successors = torch.randint(0, config.vocab_size, (config.vocab_size, 4), generator=chain)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.empty(batch_size, seq + 1, dtype=torch.long)
    ids[:, 0] = torch.randint(0, config.vocab_size, (batch_size,), generator=generator)
    choice = torch.randint(0, 4, (batch_size, seq), generator=generator)
    for t in range(seq):
        ids[:, t + 1] = successors[ids[:, t], choice[:, t]]
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """Fill ``tensor`` with normal(0, std) values; seeded values do not depend on the layout.

    A sharded parameter gets its slice of the values the unsharded one would get: a DTensor
    (torch tensor parallelism, FSDP) through ``distribute_tensor`` without communication; a
    plain local shard that carries a ``shard_from_full(full) -> local`` attribute through it.
    Only one full tensor exists at a time, never the full model.
    """
    if generator is None:
        nn.init.normal_(tensor, 0.0, std)
        return
    shape = _global_shape(tensor)
    values = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(std)
    tensor.copy_(_local_values(tensor, values))


def _global_shape(tensor: torch.Tensor) -> torch.Size:
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        return tensor.shape
    full_shape = getattr(tensor, "full_shape", None)
    return torch.Size(full_shape) if full_shape is not None else tensor.shape


def _local_values(tensor: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(tensor, DTensor):
        values = values.to(device=tensor.device, dtype=tensor.dtype)
        return distribute_tensor(values, tensor.device_mesh, tensor.placements, src_data_rank=None)
    shard_from_full = getattr(tensor, "shard_from_full", None)
    if shard_from_full is not None:
        return shard_from_full(values)
    return values


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None
