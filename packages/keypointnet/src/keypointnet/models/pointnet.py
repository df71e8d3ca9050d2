"""PointNet segmentation network (Qi et al., CVPR 2017) for per-point keypoint logits.

The layout follows the ``PointNetDenseCls`` network the KeypointNet benchmark scripts use
(fxia22/pointnet.pytorch): a shared per-point MLP ``3 → 64 → 128 → 1024``, a global max-pool, the
1024-d global feature concatenated to every point's 64-d local feature, and a per-point MLP
``1088 → 512 → 256 → 128 → num_outputs``. The optional input (3×3) and feature (64×64) transform
networks ("T-Nets") are off by default.

Shape legend:
    B  batch (shapes)
    N  points per shape
    F  feature channels (varies per layer)
    G  global feature channels (``channels[-1]``)
    L  local feature channels (``channels[0]``)
    K  transform size (3 for the input transform, L for the feature transform)
    C  outputs per point (``num_outputs``)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = ["NORMS", "Norm", "PointNetSeg", "make_norm", "transform_regularizer"]

Norm = Literal["batch", "group", "none"]
NORMS: tuple[str, ...] = ("batch", "group", "none")
GROUP_NORM_MAX_GROUPS = 32


def make_norm(norm: Norm, channels: int, dims: Literal[1, 2]) -> nn.Module:
    """The normalisation layer for ``channels`` features laid out as ``(B, F, *)``.

    ``"group"`` normalises each shape on its own (up to 32 groups of at least two channels), so
    the output of one shape does not depend on the rest of the batch: data-parallel training
    with it equals single-process training up to float rounding.
    ``"batch"`` (the upstream choice) uses batch statistics, which differ between a global batch
    and its per-rank shards.

    Args:
        norm: ``"batch"``, ``"group"`` or ``"none"``.
        channels: the feature channels F.
        dims: spatial dims after F (1 for ``(B, F, N)``, 2 for ``(B, F, N, k)``).

    Returns:
        The layer (``nn.Identity`` for ``"none"``).

    Raises:
        ValueError: unknown ``norm``.
    """
    if norm == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if norm == "group":
        # At least two channels per group: a one-channel group (instance norm) would subtract a
        # feature that is constant over the points, i.e. erase the global max-pooled feature
        # after it is concatenated to every point.
        groups = next(
            g
            for g in range(min(GROUP_NORM_MAX_GROUPS, max(channels // 2, 1)), 0, -1)
            if channels % g == 0
        )
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _check_channels(name: str, channels: Sequence[int], *, min_length: int) -> tuple[int, ...]:
    values = tuple(channels)
    if len(values) < min_length or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in values
    ):
        raise ValueError(
            f"{name} must be a sequence of at least {min_length} positive ints, got {channels!r}"
        )
    return values


def _pointwise_mlp(in_channels: int, channels: Sequence[int], norm: Norm) -> nn.Sequential:
    """Shared per-point layers: ``Conv1d(kernel 1) → norm → ReLU`` for each width."""
    layers: list[nn.Module] = []
    for out_channels in channels:
        # A bias before a normalisation layer has zero gradient; leave it out.
        layers += [
            nn.Conv1d(in_channels, out_channels, 1, bias=norm == "none"),
            make_norm(norm, out_channels, 1),
            nn.ReLU(),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


class TransformNet(nn.Module):
    """A T-Net: predicts a ``K×K`` matrix (initialised to the identity) from a point set."""

    def __init__(
        self,
        size: int,
        *,
        channels: Sequence[int] = (64, 128, 1024),
        fc_channels: Sequence[int] = (512, 256),
        norm: Norm = "batch",
    ) -> None:
        """Builds the network.

        Args:
            size: K, the matrix size (and the input feature channels).
            channels: widths of the shared per-point MLP.
            fc_channels: widths of the fully connected layers after the max-pool.
            norm: the normalisation layer kind (see ``make_norm``).
        """
        super().__init__()
        self.size = size
        self.features = _pointwise_mlp(size, channels, norm)
        layers: list[nn.Module] = []
        in_channels = channels[-1]
        for out_channels in fc_channels:
            # Linear layers run as kernel-1 convs on (B, F, 1) so every norm kind applies.
            layers += [
                nn.Conv1d(in_channels, out_channels, 1, bias=norm == "none"),
                make_norm(norm, out_channels, 1),
                nn.ReLU(),
            ]
            in_channels = out_channels
        self.fc = nn.Sequential(*layers)
        self.out = nn.Conv1d(in_channels, size * size, 1)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(self, x_BKN: torch.Tensor) -> torch.Tensor:
        """Predicts the transform.

        Args:
            x_BKN: per-point features ``(B, K, N)``.

        Returns:
            The matrices ``(B, K, K)``; a point's features ``f`` map to ``f @ M``.
        """
        global_BF1 = self.features(x_BKN).amax(dim=2, keepdim=True)  # (B, F, 1)
        offset_BKK = self.out(self.fc(global_BF1)).view(-1, self.size, self.size)  # (B, K, K)
        return offset_BKK + torch.eye(self.size, dtype=x_BKN.dtype, device=x_BKN.device)


def transform_regularizer(matrix_BKK: torch.Tensor) -> torch.Tensor:
    """PointNet's orthogonality penalty ``mean_b ‖I − M_b M_bᵀ‖_F``.

    Args:
        matrix_BKK: transforms ``(B, K, K)``.

    Returns:
        A scalar tensor.
    """
    identity_KK = torch.eye(matrix_BKK.shape[1], dtype=matrix_BKK.dtype, device=matrix_BKK.device)
    gram_BKK = matrix_BKK @ matrix_BKK.transpose(1, 2)  # (B, K, K)
    return torch.linalg.matrix_norm(identity_KK - gram_BKK).mean()


class PointNetSeg(nn.Module):
    """PointNet segmentation network: ``(B, N, 3)`` points → ``(B, N, C)`` per-point logits.

    Attributes:
        num_outputs: C.
        uses_batch_statistics: True when a layer normalises with batch statistics (``"batch"``),
            i.e. when a shape's output depends on the other shapes in its batch during training.
    """

    def __init__(
        self,
        num_outputs: int,
        *,
        channels: Sequence[int] = (64, 128, 1024),
        head_channels: Sequence[int] = (512, 256, 128),
        input_transform: bool = False,
        feature_transform: bool = False,
        norm: Norm = "batch",
        dropout: float = 0.0,
    ) -> None:
        """Builds the network.

        Args:
            num_outputs: C, logits per point (2 for saliency, the number of semantic ids for
                correspondence).
            channels: widths of the shared per-point MLP; ``channels[0]`` is the local feature
                width L and ``channels[-1]`` the global feature width G. Use e.g. ``(8, 16)``
                for tiny test models.
            head_channels: widths of the per-point MLP applied to ``[local, global]``.
            input_transform: predict and apply a 3×3 input transform (PointNet's T-Net).
            feature_transform: predict and apply an L×L feature transform; its orthogonality
                penalty is returned by ``regularization_loss()`` after each forward.
            norm: ``"batch"`` (upstream), ``"group"`` (batch-independent; exact data
                parallelism) or ``"none"``.
            dropout: dropout probability before the last head layer (0 disables it).

        Raises:
            ValueError: a bad argument (named in the message).
        """
        super().__init__()
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
        channels = _check_channels("channels", channels, min_length=2)
        head_channels = _check_channels("head_channels", head_channels, min_length=0)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_outputs = num_outputs
        self.uses_batch_statistics = norm == "batch"
        tnet_channels = (channels[0], channels[1], channels[-1])
        tnet_fc = (max(channels[-1] // 2, 1), max(channels[-1] // 4, 1))
        self.input_transform = (
            TransformNet(3, channels=tnet_channels, fc_channels=tnet_fc, norm=norm)
            if input_transform
            else None
        )
        self.local = _pointwise_mlp(3, channels[:1], norm)
        self.feature_transform = (
            TransformNet(channels[0], channels=tnet_channels, fc_channels=tnet_fc, norm=norm)
            if feature_transform
            else None
        )
        self.encoder = _pointwise_mlp(channels[0], channels[1:], norm)
        head_in = channels[0] + channels[-1]
        head: list[nn.Module] = [_pointwise_mlp(head_in, head_channels, norm)]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Conv1d(head_channels[-1] if head_channels else head_in, num_outputs, 1))
        self.head = nn.Sequential(*head)
        self._feature_matrix: torch.Tensor | None = None

    def forward(self, points_BN3: torch.Tensor) -> torch.Tensor:
        """Per-point logits.

        Args:
            points_BN3: point coordinates ``(B, N, 3)``.

        Returns:
            Logits ``(B, N, C)``.
        """
        if points_BN3.dim() != 3 or points_BN3.shape[-1] != 3:
            raise ValueError(f"points must have shape (B, N, 3), got {tuple(points_BN3.shape)}")
        x_B3N = points_BN3.transpose(1, 2)  # (B, 3, N)
        if self.input_transform is not None:
            matrix_B33 = self.input_transform(x_B3N)  # (B, 3, 3)
            x_B3N = (points_BN3 @ matrix_B33).transpose(1, 2)  # (B, 3, N)
        local_BLN = self.local(x_B3N)  # (B, L, N)
        if self.feature_transform is not None:
            matrix_BLL = self.feature_transform(local_BLN)  # (B, L, L)
            local_BLN = (local_BLN.transpose(1, 2) @ matrix_BLL).transpose(1, 2)  # (B, L, N)
            self._feature_matrix = matrix_BLL
        global_BG1 = self.encoder(local_BLN).amax(dim=2, keepdim=True)  # (B, G, 1)
        global_BGN = global_BG1.expand(-1, -1, local_BLN.shape[2])  # (B, G, N)
        logits_BCN = self.head(torch.cat([local_BLN, global_BGN], dim=1))  # (B, C, N)
        return logits_BCN.transpose(1, 2)  # (B, N, C)

    def regularization_loss(self) -> torch.Tensor:
        """The feature-transform orthogonality penalty of the last forward (0 without one).

        Upstream PointNet adds ``0.001 ×`` this to the task loss.
        """
        if self._feature_matrix is None:
            return torch.zeros(())
        return transform_regularizer(self._feature_matrix)
