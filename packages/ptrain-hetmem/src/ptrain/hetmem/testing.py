"""Helpers for checking the engine against plain torch on the debug GPT (used by the tests).

``make_models`` builds two identical debug GPTs, ``torch_steps`` trains one with a torch
optimizer, ``engine_steps`` trains an engine on the same batches, ``make_engine`` builds an
engine with the debug chunk size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptrain.core.models.gpt import GPT, GPTConfig, gpt_loss, synthetic_batch
from ptrain.hetmem.config import AdamConfig, HetMemConfig
from ptrain.hetmem.engine import HetMemEngine, initialize

CONFIG = GPTConfig.debug()  # vocab 128, seq 32, dim 64, 2 layers
CHUNK = 20_000  # elements: 8 chunk groups for the debug GPT
TIGHT = "1500KiB"  # below model data (2.5 MB) + activations (~0.9 MB)


__all__ = [
    "CHUNK",
    "CONFIG",
    "TIGHT",
    "batch",
    "engine_steps",
    "make_engine",
    "make_models",
    "torch_steps",
]


def make_models(seed: int = 0) -> tuple[GPT, GPT]:
    torch.manual_seed(seed)
    reference = GPT(CONFIG)
    model = GPT(CONFIG)
    model.load_state_dict(reference.state_dict())
    return reference, model


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_batch(CONFIG, 4, seed=step)


def torch_steps(model: GPT, optimizer: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for step in steps:
        tokens, targets = batch(step)
        loss = gpt_loss(model(tokens), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def engine_steps(
    engine: HetMemEngine, steps: range, check: Callable[[], None] | None = None
) -> list[float]:
    losses = []
    for step in steps:
        tokens, targets = batch(step)
        loss = engine(tokens, targets)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if check is not None:
            check()
    return losses


def make_engine(model: GPT, adam: AdamConfig | None = None, **config: Any) -> HetMemEngine:
    config.setdefault("chunk_size", CHUNK)
    return initialize(
        model,
        adam or AdamConfig(lr=1e-2),
        HetMemConfig(**config),
        loss_fn=gpt_loss,
    )
