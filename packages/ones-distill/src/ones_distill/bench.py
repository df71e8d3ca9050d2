"""The ``bench speed`` contract: MoE-Mixer teacher vs its gathered dense student, CPU inference.

Teacher: an MLP-Mixer (depth 6, dim 256, 32×32×3 images, patch 4, token MLP hidden 128) whose
every block's channel MLP is a ``ptrain.moe.MoE`` (8 experts, top-2, expert hidden 4 × dim,
dropless). Student: the same model after ``gather_model`` (one expert-sized FFN per block).
Both are timed in eval mode under ``torch.no_grad`` at batch 1 and 64, 1 thread, interleaved,
medians (``ptrain.core.bench.compare``).
"""

from __future__ import annotations

from typing import Any

import torch

from ones_distill.gather import GatherConfig, gather_model, parameter_count
from ones_distill.models import MixerClassifier, MixerClassifierConfig
from ptrain.core.bench import BenchResult, compare

__all__ = ["SPEED_KEYS", "speed_benchmark", "speed_models"]

SPEED_KEYS = ("teacher_b1_s", "student_b1_s", "teacher_b64_s", "student_b64_s")


def speed_models(seed: int = 0, **overrides: Any) -> tuple[MixerClassifier, torch.nn.Module]:
    """The contract's teacher (random weights, seeded) and its ``avg``-gathered student."""
    torch.manual_seed(seed)
    teacher = MixerClassifier(MixerClassifierConfig(**overrides)).eval()
    student = gather_model(teacher, GatherConfig(method="avg")).eval()
    return teacher, student


def speed_benchmark(
    *, repeats: int = 5, batches: tuple[int, ...] = (1, 64), seed: int = 0, **overrides: Any
) -> tuple[dict[str, float], list[BenchResult], dict[str, Any]]:
    """Times teacher and student inference.

    Args:
        repeats: timed blocks per model and batch (medians over these).
        batches: batch sizes (the contract: 1 and 64).
        seed: weights and inputs seed.
        **overrides: ``MixerClassifierConfig`` fields (tests use a smaller model).

    Returns:
        ``(times, results, meta)``: ``times`` maps ``teacher_b{B}_s`` / ``student_b{B}_s`` to
        median seconds per forward; ``results`` the ``BenchResult`` per batch (candidate =
        student, baseline = teacher); ``meta`` the model sizes.
    """
    teacher, student = speed_models(seed, **overrides)
    config = teacher.config
    times: dict[str, float] = {}
    results = []
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        images = torch.rand(
            batch, config.in_channels, config.image_size, config.image_size, generator=generator
        )
        number = 8 if batch == 1 else 1

        @torch.no_grad()
        def run_student(images: torch.Tensor = images) -> object:
            return student(images)

        @torch.no_grad()
        def run_teacher(images: torch.Tensor = images) -> object:
            return teacher(images)

        result = compare(
            run_student,
            run_teacher,
            name=f"student_vs_teacher_b{batch}",
            repeats=repeats,
            warmup=1,
            number=number,
            threads=1,
        )
        times[f"teacher_b{batch}_s"] = result.baseline_s
        times[f"student_b{batch}_s"] = result.candidate_s
        results.append(result)
    meta = {
        "teacher_config": config.to_dict(),
        "teacher_params": parameter_count(teacher),
        "student_params": parameter_count(student),
        "gather_method": "avg",
        "batches": list(batches),
    }
    return times, results, meta
