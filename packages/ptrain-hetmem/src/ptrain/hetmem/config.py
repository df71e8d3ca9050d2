"""Configuration dataclasses: ``AdamConfig``, ``TierSpec`` and ``HetMemConfig``.

Sizes accept ints (bytes) or strings such as ``"64MiB"``, ``"2GiB"``, ``"1.5GB"``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AdamConfig", "HetMemConfig", "TierSpec", "format_bytes", "parse_bytes"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")

Policy = Literal["opt", "lru", "static", "static-z3"]
Mode = Literal["fp32", "mixed"]


def parse_bytes(value: int | str, name: str = "size") -> int:
    """Parses ``value`` (an int of bytes or a string like ``"64MiB"``) into bytes.

    Raises:
        ValueError: naming ``name`` and the value when it is not a non-negative size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a size in bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is not None and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(f"{name} must be a size such as 67108864, '64MiB' or '2GiB', got {value!r}")


def format_bytes(count: float) -> str:
    """``count`` bytes as a short human string (``"12.3 MiB"``)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


@dataclass(kw_only=True, slots=True, frozen=True)
class AdamConfig:
    """Adam hyper-parameters (the update is bitwise ``torch.optim.Adam(foreach=False)``).

    Attributes:
        lr: learning rate.
        betas: ``(beta1, beta2)``.
        eps: denominator epsilon.
        weight_decay: L2 penalty (Adam) or decoupled decay (``decoupled=True``, AdamW).
        decoupled: AdamW-style weight decay.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def __post_init__(self) -> None:
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"AdamConfig.lr must be a finite non-negative number, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"AdamConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.eps > 0:
            raise ValueError(f"AdamConfig.eps must be positive, got {self.eps!r}")
        if not self.weight_decay >= 0:
            raise ValueError(
                f"AdamConfig.weight_decay must be non-negative, got {self.weight_decay!r}"
            )


@dataclass(kw_only=True, slots=True, frozen=True)
class TierSpec:
    """One memory tier below the compute tier.

    Attributes:
        kind: ``"cpu"`` (host memory) or ``"disk"`` (file-backed, ZeRO-Infinity's NVMe tier).
        capacity: bytes (int or string); ``None`` means unbounded.
        path: directory for the disk tier's files (a temporary directory when ``None``).
    """

    kind: Literal["cpu", "disk"] = "cpu"
    capacity: int | str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "disk"):
            raise ValueError(f"TierSpec.kind must be 'cpu' or 'disk', got {self.kind!r}")
        if self.capacity is not None:
            parse_bytes(self.capacity, "TierSpec.capacity")

    @property
    def capacity_bytes(self) -> int | None:
        """The capacity in bytes (``None``: unbounded)."""
        return None if self.capacity is None else parse_bytes(self.capacity, "TierSpec.capacity")


@dataclass(kw_only=True, slots=True, frozen=True)
class HetMemConfig:
    """How the engine lays out and places model data.

    Attributes:
        device_budget: capacity of the compute ("fast") tier in bytes, shared by chunk payloads
            and non-model data (activations); ``None`` = unbounded.
        chunk_size: elements per chunk, or ``"auto"`` (minimise wasted bytes, see ``plan``).
        policy: ``"opt"`` (evict the chunk used furthest in the future, from the warm-up trace),
            ``"lru"`` (least recently used), ``"static"`` (ZeRO-Offload: parameters and
            gradients fixed on the fast tier, Adam states on the host, Adam on the host),
            ``"static-z3"`` (ZeRO-3-Offload: everything lives on the host; a chunk is fetched
            when a module needs it and freed after use, Adam on the host).
        tiers: the tiers below the fast one, fastest first (default: one unbounded cpu tier).
        device: ``"auto"`` (``cuda`` when available, else the budgeted arena), ``"arena"`` or
            ``"cuda"``.
        mode: ``"fp32"`` (16 B/param: param, grad, m, v; gradient accumulation allowed) or
            ``"mixed"`` (bf16 param with the grad written over it, fp32 master, m, v: 14 B/param).
        headroom: bytes kept free on the fast tier beyond the traced non-model peak.
        hybrid_adam: run a chunk group's Adam on the fast tier when its states are there or
            fit in the free margin after backward; otherwise on the host tier.
        resident_groups: after warm-up, keep as many whole chunk groups (parameters,
            gradients and Adam states) on the fast tier as the warm-up trace shows always fit
            (``opt``/``lru``, one process); they move no bytes and step there.
        search_range: chunk sizes tried by the automatic search, in elements above the largest
            parameter.
        search_interval: step of the automatic search, in elements.
    """

    device_budget: int | str | None = None
    chunk_size: int | Literal["auto"] = "auto"
    policy: Policy = "opt"
    tiers: tuple[TierSpec, ...] = field(default_factory=lambda: (TierSpec(kind="cpu"),))
    device: Literal["auto", "arena", "cuda"] = "auto"
    mode: Mode = "fp32"
    headroom: int | str = 0
    hybrid_adam: bool = True
    resident_groups: bool = True
    search_range: int = 1 << 20
    search_interval: int = 1024

    def __post_init__(self) -> None:
        if self.device_budget is not None:
            parse_bytes(self.device_budget, "HetMemConfig.device_budget")
        parse_bytes(self.headroom, "HetMemConfig.headroom")
        if self.chunk_size != "auto" and (
            not isinstance(self.chunk_size, int)
            or isinstance(self.chunk_size, bool)
            or self.chunk_size < 1
        ):
            raise ValueError(
                f"HetMemConfig.chunk_size must be 'auto' or a positive int of elements, "
                f"got {self.chunk_size!r}"
            )
        if self.policy not in ("opt", "lru", "static", "static-z3"):
            raise ValueError(
                "HetMemConfig.policy must be 'opt', 'lru', 'static' or 'static-z3', got "
                f"{self.policy!r}"
            )
        if self.mode not in ("fp32", "mixed"):
            raise ValueError(f"HetMemConfig.mode must be 'fp32' or 'mixed', got {self.mode!r}")
        if self.device not in ("auto", "arena", "cuda"):
            raise ValueError(
                f"HetMemConfig.device must be 'auto', 'arena' or 'cuda', got {self.device!r}"
            )
        if not self.tiers:
            raise ValueError("HetMemConfig.tiers must name at least one tier below the device")
        for tier in self.tiers:
            if not isinstance(tier, TierSpec):
                raise ValueError(f"HetMemConfig.tiers must hold TierSpec values, got {tier!r}")
        if self.search_range < 1 or self.search_interval < 1:
            raise ValueError("HetMemConfig.search_range and search_interval must be positive")

    @property
    def device_budget_bytes(self) -> int | None:
        """The fast tier's capacity in bytes (``None``: unbounded)."""
        if self.device_budget is None:
            return None
        return parse_bytes(self.device_budget, "HetMemConfig.device_budget")

    @property
    def headroom_bytes(self) -> int:
        """``headroom`` in bytes."""
        return parse_bytes(self.headroom, "HetMemConfig.headroom")
