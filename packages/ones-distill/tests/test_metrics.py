"""The MoE-benefit metric: hand-computed values, NaN with a warning at a zero denominator."""

from __future__ import annotations

import math

import pytest

from ones_distill import BenefitWarning, moe_benefit


def test_benefit_hand_values() -> None:
    assert moe_benefit(0.784, 0.766, 0.795) == pytest.approx(0.018 / 0.029)
    assert moe_benefit(0.70, 0.70, 0.80) == pytest.approx(0.0)
    assert moe_benefit(0.80, 0.70, 0.80) == pytest.approx(1.0)
    assert moe_benefit(0.65, 0.70, 0.80) == pytest.approx(-0.5)


def test_benefit_is_nan_with_a_warning_when_moe_equals_dense() -> None:
    with pytest.warns(BenefitWarning, match="undefined"):
        value = moe_benefit(0.9, 0.5, 0.5004)
    assert math.isnan(value)
