"""ContrastiveCrop (arXiv:2202.03278) for Siamese self-supervised learning.

Box-guided, centre-suppressed crops (:class:`ContrastiveCrop`, :class:`SimCCrop`) beside a
tensor-first :class:`RandomResizedCrop`; semantic-aware localisation (:func:`compute_boxes`);
shared-memory boxes for DataLoader workers (:class:`BoxedDataset`); SimCLR, MoCo v2, BYOL and
SimSiam with a small-image ResNet-18; kNN and linear-probe evaluation.
"""

from importlib.metadata import PackageNotFoundError, version

from contrastive_crop.data import BoxedDataset, make_clutter_digits
from contrastive_crop.localization import (
    LocalizationSchedule,
    box_iou,
    boxes_from_heatmaps,
    compute_boxes,
)
from contrastive_crop.models import resnet18
from contrastive_crop.ssl import BYOL, MoCo, SimCLR, SimSiam
from contrastive_crop.train import PretrainConfig, pretrain
from contrastive_crop.transforms import (
    SIMCCROP_BOX,
    Compose,
    ContrastiveCrop,
    RandomResizedCrop,
    SimCCrop,
)

try:
    __version__ = version("contrastive-crop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BYOL",
    "SIMCCROP_BOX",
    "BoxedDataset",
    "Compose",
    "ContrastiveCrop",
    "LocalizationSchedule",
    "MoCo",
    "PretrainConfig",
    "RandomResizedCrop",
    "SimCCrop",
    "SimCLR",
    "SimSiam",
    "__version__",
    "box_iou",
    "boxes_from_heatmaps",
    "compute_boxes",
    "make_clutter_digits",
    "pretrain",
    "resnet18",
]
