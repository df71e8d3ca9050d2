"""DGCNN segmentation network (Wang et al., "Dynamic Graph CNN", TOG 2019) for per-point logits.

Each EdgeConv block builds a k-nearest-neighbour graph in the current feature space (the first
block in xyz), forms edge features ``[x_j − x_i, x_i]`` for each neighbour j of point i, applies a
shared MLP and max-pools over the k neighbours. The block outputs are concatenated, embedded to
``emb_dims`` and max-pooled to a global feature, which is concatenated back to every point before
a per-point MLP head — the part-segmentation layout of the reference implementation, without the
category one-hot (one model per category here).

Shape legend:
    B  batch (shapes)
    N  points per shape
    k  neighbours per point
    F  feature channels (varies per layer)
    E  embedding channels (``emb_dims``)
    S  concatenated EdgeConv outputs (sum of each block's last width)
    C  outputs per point (``num_outputs``)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from keypointnet.models.pointnet import NORMS, Norm, make_norm

__all__ = ["DGCNNSeg", "EdgeConv", "edge_features", "knn_indices"]

LEAKY_SLOPE = 0.2


def knn_indices(x_BNF: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest neighbours of every point (itself included) in feature space.

    Args:
        x_BNF: features ``(B, N, F)``.
        k: neighbours per point (at most N).

    Returns:
        Indices ``(B, N, k)`` into the N points, nearest first.
    """
    distances_BNN = torch.cdist(x_BNF, x_BNF)  # (B, N, N)
    return distances_BNN.topk(k, dim=2, largest=False).indices  # (B, N, k)


def edge_features(x_BNF: torch.Tensor, k: int) -> torch.Tensor:
    """EdgeConv inputs ``[x_j − x_i, x_i]`` over each point's k feature-space neighbours.

    Args:
        x_BNF: features ``(B, N, F)``.
        k: neighbours per point (at most N).

    Returns:
        Edge features ``(B, 2F, N, k)``.
    """
    batch, num_points, channels = x_BNF.shape
    neighbours_BNk = knn_indices(x_BNF.detach(), k)  # (B, N, k)
    offsets_B11 = torch.arange(batch, device=x_BNF.device).view(batch, 1, 1) * num_points
    flat_rows = (neighbours_BNk + offsets_B11).reshape(-1)  # (B*N*k,)
    neighbours_BNkF = x_BNF.reshape(batch * num_points, channels)[flat_rows].view(
        batch, num_points, k, channels
    )  # (B, N, k, F)
    centres_BNkF = x_BNF.unsqueeze(2).expand(-1, -1, k, -1)  # (B, N, k, F)
    edges_BNk2F = torch.cat([neighbours_BNkF - centres_BNkF, centres_BNkF], dim=3)
    return edges_BNk2F.permute(0, 3, 1, 2)  # (B, 2F, N, k)


class EdgeConv(nn.Module):
    """One EdgeConv block: dynamic k-NN graph → shared edge MLP → max over neighbours."""

    def __init__(self, in_channels: int, channels: Sequence[int], *, k: int, norm: Norm) -> None:
        """Builds the block.

        Args:
            in_channels: F of the input features.
            channels: widths of the shared edge MLP (its first layer reads 2F channels).
            k: neighbours per point.
            norm: the normalisation layer kind (see ``keypointnet.models.pointnet.make_norm``).
        """
        super().__init__()
        self.k = k
        layers: list[nn.Module] = []
        width = 2 * in_channels
        for out_channels in channels:
            layers += [
                nn.Conv2d(width, out_channels, 1, bias=norm == "none"),
                make_norm(norm, out_channels, 2),
                nn.LeakyReLU(LEAKY_SLOPE),
            ]
            width = out_channels
        self.mlp = nn.Sequential(*layers)
        self.out_channels = width

    def forward(self, x_BNF: torch.Tensor) -> torch.Tensor:
        """Applies the block.

        Args:
            x_BNF: features ``(B, N, F)``.

        Returns:
            New features ``(B, N, F')``.
        """
        k = min(self.k, x_BNF.shape[1])
        edges_BFNk = self.mlp(edge_features(x_BNF, k))  # (B, F', N, k)
        return edges_BFNk.amax(dim=3).transpose(1, 2)  # (B, N, F')


class DGCNNSeg(nn.Module):
    """DGCNN segmentation network: ``(B, N, 3)`` points → ``(B, N, C)`` per-point logits.

    Attributes:
        num_outputs: C.
        uses_batch_statistics: True when a layer normalises with batch statistics (``"batch"``).
    """

    def __init__(
        self,
        num_outputs: int,
        *,
        k: int = 20,
        edge_channels: Sequence[Sequence[int]] = ((64, 64), (64, 64), (64,)),
        emb_dims: int = 1024,
        head_channels: Sequence[int] = (256, 256, 128),
        norm: Norm = "batch",
        dropout: float = 0.5,
    ) -> None:
        """Builds the network.

        Args:
            num_outputs: C, logits per point.
            k: neighbours per point in every EdgeConv graph (clamped to N for tiny inputs).
            edge_channels: one tuple of MLP widths per EdgeConv block.
            emb_dims: E, the width of the embedding that is max-pooled to the global feature.
            head_channels: widths of the per-point MLP applied to ``[edge features, global]``.
            norm: ``"batch"`` (reference), ``"group"`` (batch-independent; exact data
                parallelism) or ``"none"``.
            dropout: dropout probability after each of the first two head layers, as in the
                reference (0 disables it; needed for bitwise data-parallel equivalence).

        Raises:
            ValueError: a bad argument (named in the message).
        """
        super().__init__()
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        blocks = [tuple(block) for block in edge_channels]
        if not blocks or any(
            not block or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in block)
            for block in blocks
        ):
            raise ValueError(
                f"edge_channels must be non-empty tuples of positive ints, got {edge_channels!r}"
            )
        if isinstance(emb_dims, bool) or not isinstance(emb_dims, int) or emb_dims < 1:
            raise ValueError(f"emb_dims must be a positive int, got {emb_dims!r}")
        head_channels = tuple(head_channels)
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in head_channels):
            raise ValueError(f"head_channels must be positive ints, got {head_channels!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_outputs = num_outputs
        self.uses_batch_statistics = norm == "batch"
        self.edge_convs = nn.ModuleList()
        in_channels = 3
        concat_channels = 0
        for block in blocks:
            edge_conv = EdgeConv(in_channels, block, k=k, norm=norm)
            self.edge_convs.append(edge_conv)
            in_channels = edge_conv.out_channels
            concat_channels += edge_conv.out_channels
        self.embed = nn.Sequential(
            nn.Conv1d(concat_channels, emb_dims, 1, bias=norm == "none"),
            make_norm(norm, emb_dims, 1),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        head: list[nn.Module] = []
        width = concat_channels + emb_dims
        for index, out_channels in enumerate(head_channels):
            head += [
                nn.Conv1d(width, out_channels, 1, bias=norm == "none"),
                make_norm(norm, out_channels, 1),
                nn.LeakyReLU(LEAKY_SLOPE),
            ]
            if dropout > 0 and index < 2:
                head.append(nn.Dropout(dropout))
            width = out_channels
        head.append(nn.Conv1d(width, num_outputs, 1))
        self.head = nn.Sequential(*head)

    def forward(self, points_BN3: torch.Tensor) -> torch.Tensor:
        """Per-point logits.

        Args:
            points_BN3: point coordinates ``(B, N, 3)``.

        Returns:
            Logits ``(B, N, C)``.
        """
        if points_BN3.dim() != 3 or points_BN3.shape[-1] != 3:
            raise ValueError(f"points must have shape (B, N, 3), got {tuple(points_BN3.shape)}")
        x_BNF = points_BN3
        block_outputs = []
        for edge_conv in self.edge_convs:
            x_BNF = edge_conv(x_BNF)  # (B, N, F')
            block_outputs.append(x_BNF)
        local_BSN = torch.cat(block_outputs, dim=2).transpose(1, 2)  # (B, S, N)
        global_BE1 = self.embed(local_BSN).amax(dim=2, keepdim=True)  # (B, E, 1)
        global_BEN = global_BE1.expand(-1, -1, local_BSN.shape[2])  # (B, E, N)
        logits_BCN = self.head(torch.cat([local_BSN, global_BEN], dim=1))  # (B, C, N)
        return logits_BCN.transpose(1, 2)  # (B, N, C)

    def regularization_loss(self) -> torch.Tensor:
        """No auxiliary loss: a zero scalar (the same interface as ``PointNetSeg``)."""
        return torch.zeros(())
