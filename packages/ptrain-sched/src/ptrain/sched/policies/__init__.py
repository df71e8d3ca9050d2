"""Scheduling policies behind one interface: ``Policy.decide(state) -> Allocation``."""

from __future__ import annotations

from typing import Any

from ptrain.sched.errors import InputError
from ptrain.sched.policies.base import Policy, place
from ptrain.sched.policies.baselines import FifoPolicy, OptimusPolicy, SrtfPolicy, TiresiasPolicy
from ptrain.sched.policies.ones import ONES_VARIANTS, OnesPolicy, ones_batch_size
from ptrain.sched.policies.pollux import PolluxPolicy

__all__ = [
    "ONES_VARIANTS",
    "POLICIES",
    "FifoPolicy",
    "OnesPolicy",
    "OptimusPolicy",
    "Policy",
    "PolluxPolicy",
    "SrtfPolicy",
    "TiresiasPolicy",
    "make_policy",
    "ones_batch_size",
    "place",
]

POLICIES = ("fifo", "srtf", "tiresias", "optimus", "pollux", "ones")


def make_policy(
    name: str, *, seed: int = 0, restart_penalty: float = 30.0, **options: Any
) -> Policy:
    """A fresh policy by name.

    Args:
        name: one of ``POLICIES``.
        seed: seed of the policy's generator (ONES).
        restart_penalty: the simulator's reconfiguration cost (Pollux weighs restarts with it).
        **options: extra fields of ``OnesPolicy`` (ONES only); ``variant`` picks a preset of
            ``ONES_VARIANTS`` (default ``"jct"``; ``"artifact"``: the ONES artifact).

    Raises:
        InputError: unknown policy (the message lists the valid ones).
    """
    if name not in POLICIES:
        raise InputError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    if options and name != "ones":
        raise InputError(f"options {sorted(options)} apply only to the ones policy")
    if name == "fifo":
        return FifoPolicy()
    if name == "srtf":
        return SrtfPolicy()
    if name == "tiresias":
        return TiresiasPolicy()
    if name == "optimus":
        return OptimusPolicy()
    if name == "pollux":
        return PolluxPolicy(restart_penalty=restart_penalty)
    options.setdefault("restart_penalty", restart_penalty)
    variant = options.pop("variant", "jct")
    return OnesPolicy.from_variant(variant, seed=seed, **options)
