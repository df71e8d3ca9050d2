"""KD loss against a hand computation, temperature limits, the training loop and resuming."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ones_distill import (
    FitConfig,
    GatherConfig,
    VectorClassifier,
    VectorClassifierConfig,
    fit,
    gather_model,
    kd_loss,
    mean_kl,
)
from ones_distill.data import cluster_task
from ones_distill.distill import soft_targets


def test_kd_loss_equals_hand_computation() -> None:
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([1, 2])
    temperature, alpha = 3.0, 0.25
    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        zs = sum(math.exp(v / temperature) for v in s_row)
        zt = sum(math.exp(v / temperature) for v in t_row)
        for s, t in zip(s_row, t_row, strict=True):
            p_t, p_s = math.exp(t / temperature) / zt, math.exp(s / temperature) / zs
            kl += p_t * math.log(p_t / p_s)
    kl /= 2
    ce = 0.0
    for row, label in zip(student.tolist(), labels.tolist(), strict=True):
        ce -= row[label] - math.log(sum(math.exp(v) for v in row))
    ce /= 2
    parts = kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
    assert float(parts["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-5)
    expected = alpha * ce + (1 - alpha) * temperature**2 * kl
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-5)


def test_temperature_limits() -> None:
    logits = torch.tensor([[5.0, -2.0, 0.0, 9.0]])
    uniform = soft_targets(logits, 1e6)
    torch.testing.assert_close(uniform, torch.full((1, 4), 0.25), atol=1e-5, rtol=0)
    sharp = soft_targets(logits, 1e-3)
    torch.testing.assert_close(sharp, torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    # large T: any student matches the (uniform) targets, so the KL vanishes
    student = torch.tensor([[0.0, 3.0, 1.0, -4.0]])
    assert float(kd_loss(student, logits, None, temperature=1e6)["kl"]) < 1e-6
    assert float(kd_loss(student, logits, None, temperature=1.0)["kl"]) > 1.0
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, logits, None, temperature=0.0)


def test_kl_is_zero_for_equal_logits_and_gradient_reaches_only_the_student() -> None:
    teacher = torch.randn(4, 5, requires_grad=True)
    student = teacher.detach().clone().requires_grad_(True)
    parts = kd_loss(student, teacher, None)
    assert float(parts["kl"].detach()) == pytest.approx(0.0, abs=1e-7)
    (parts["loss"] + kd_loss(student * 2, teacher, None)["loss"]).backward()
    assert teacher.grad is None and student.grad is not None


def _tiny_task_models(seed: int = 0) -> tuple:
    split = cluster_task(seed=seed, train_size=1200, test_size=400, clusters=4)
    torch.manual_seed(seed)
    teacher = VectorClassifier(VectorClassifierConfig(dim=32, hidden=8, num_experts=4))
    fit(teacher, split.train_x, split.train_y, FitConfig(epochs=3, batch_size=64, seed=seed))
    student = gather_model(teacher, GatherConfig(method="svd", rank=2))
    return split, teacher, student


def test_distillation_lowers_the_students_kl_to_the_teacher() -> None:
    split, teacher, student = _tiny_task_models()
    with torch.no_grad():  # start from a perturbed student, as after a noisy gathering
        for parameter in student.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    before = mean_kl(teacher, student, split.test_x)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = fit(
        student, split.train_x, split.train_y,
        FitConfig(epochs=3, batch_size=64, alpha=0.0, feature_weight=0.1),
        teacher=teacher, test_x=split.test_x, test_y=split.test_y,
    )  # fmt: skip
    after = mean_kl(teacher, student, split.test_x)
    assert after < 0.5 * before
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert result.history[-1]["train_feature"] > 0
    assert 0 <= result.history[-1]["test_acc"] <= 1


def test_interrupted_distillation_resumes_to_the_same_weights(tmp_path: Path) -> None:
    split, teacher, _ = _tiny_task_models()
    config = FitConfig(epochs=3, batch_size=128, seed=1)
    straight = gather_model(teacher, GatherConfig(method="svd", rank=2))
    fit(straight, split.train_x, split.train_y, config, teacher=teacher)

    first = FitConfig(epochs=3, batch_size=128, seed=1)
    # run one epoch, "crash", then resume in a fresh model from the checkpoint
    partial = gather_model(teacher, GatherConfig(method="svd", rank=2))
    _run_epochs(partial, split, teacher, first, tmp_path, stop_after=1)
    resumed = gather_model(teacher, GatherConfig(method="svd", rank=2))
    result = fit(resumed, split.train_x, split.train_y, first, teacher=teacher,
                 checkpoint_dir=tmp_path)  # fmt: skip
    assert result.resumed_from == 1 and result.epochs_run == 2
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _run_epochs(model, split, teacher, config, directory, stop_after):  # type: ignore[no-untyped-def]
    """Runs ``fit`` but interrupts it after ``stop_after`` epochs (a KeyboardInterrupt)."""
    from ptrain.core import checkpoint

    original = checkpoint.Checkpointer.save
    calls = {"n": 0}

    def save_then_maybe_stop(self, step, **kwargs):  # type: ignore[no-untyped-def]
        path = original(self, step, **kwargs)
        calls["n"] += 1
        if calls["n"] >= stop_after:
            raise KeyboardInterrupt
        return path

    checkpoint.Checkpointer.save = save_then_maybe_stop  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(model, split.train_x, split.train_y, config, teacher=teacher,
                checkpoint_dir=directory)  # fmt: skip
    finally:
        checkpoint.Checkpointer.save = original  # type: ignore[method-assign]


def test_fit_config_validates() -> None:
    with pytest.raises(ValueError, match="alpha"):
        FitConfig(alpha=1.5)
    with pytest.raises(ValueError, match="epochs"):
        FitConfig(epochs=0)
