"""Images with their boxes as a PNG (matplotlib, the optional ``[plot]`` extra)."""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor

__all__ = ["plot_boxes"]


def plot_boxes(
    path: str | Path, images: Tensor, boxes: Tensor, true_boxes: Tensor | None = None
) -> None:
    """Writes a grid of uint8 images ``(N, C, H, W)`` with boxes (red) and true boxes (green).

    Raises:
        ImportError: matplotlib is missing (``pip install contrastive-crop[plot]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install contrastive-crop[plot]") from error
    count = len(images)
    columns = min(8, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows), squeeze=False)
    height, width = images.shape[-2:]
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(images[index].permute(1, 2, 0).cpu().numpy())
        for box, colour in ((boxes, "red"), (true_boxes, "lime")):
            if box is None:
                continue
            h0, w0, h1, w1 = box[index].tolist()
            axis.add_patch(
                plt.Rectangle(
                    (w0 * width - 0.5, h0 * height - 0.5),
                    (w1 - w0) * width,
                    (h1 - h0) * height,
                    fill=False,
                    color=colour,
                    lw=1.5,
                )
            )
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
