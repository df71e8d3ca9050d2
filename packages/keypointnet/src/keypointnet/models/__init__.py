"""Per-point keypoint networks: ``(B, N, 3)`` points → ``(B, N, C)`` logits.

Both networks share one interface: ``forward(points_BN3) -> logits_BNC``, ``num_outputs``,
``uses_batch_statistics`` and ``regularization_loss()`` (an auxiliary loss of the last forward, 0
when there is none). The files hold no distributed code; ``keypointnet.train`` applies data
parallelism from outside.
"""

from __future__ import annotations

from typing import Any, Literal

from keypointnet.models.dgcnn import DGCNNSeg
from keypointnet.models.pointnet import NORMS, Norm, PointNetSeg

__all__ = ["MODEL_NAMES", "NORMS", "DGCNNSeg", "ModelName", "Norm", "PointNetSeg", "build_model"]

ModelName = Literal["pointnet", "dgcnn"]
MODEL_NAMES: tuple[str, ...] = ("pointnet", "dgcnn")


def build_model(name: ModelName, num_outputs: int, **kwargs: Any) -> PointNetSeg | DGCNNSeg:
    """Builds a keypoint network by name.

    Args:
        name: ``"pointnet"`` (``PointNetSeg``) or ``"dgcnn"`` (``DGCNNSeg``).
        num_outputs: logits per point (2 for saliency, C semantic ids for correspondence).
        **kwargs: keyword arguments of the chosen class (e.g. ``norm="group"``, ``k=10``).

    Returns:
        The network, freshly initialised from torch's global RNG.

    Raises:
        ValueError: unknown ``name`` or a bad keyword value.
        TypeError: a keyword the chosen class does not take.
    """
    if name == "pointnet":
        return PointNetSeg(num_outputs, **kwargs)
    if name == "dgcnn":
        return DGCNNSeg(num_outputs, **kwargs)
    raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}")
