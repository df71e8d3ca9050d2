"""keypointnet: KeypointNet dataset tools, metrics, keypoint models and 3D→2D projection.

Modules:
    data        annotation JSON, PCD, PLY, OBJ and split readers/writers; KeypointNetDirectory
    synth       synthetic shapes with semantic keypoints, written in the dataset's formats
    geodesic    k-NN graph geodesics from the ground-truth rows only
    metrics     saliency mIoU/mAP and symmetry-aware correspondence PCK at thresholds 0.00–0.10
    models      PointNet and DGCNN per-point networks
    train       saliency/correspondence training (resumable, data parallel), evaluation, predictions
    projection  cameras, z-buffer rendering, visibility, 3D→2D keypoint projection, 2D PCK
"""

from importlib.metadata import PackageNotFoundError, version

from keypointnet.data import (
    CATEGORY_TO_SYNSET,
    SYNSET_TO_CATEGORY,
    DataFormatError,
    Keypoint,
    KeypointNetDirectory,
    Mesh,
    ModelAnnotation,
    PointCloud,
    read_annotations,
    read_obj,
    read_pcd,
    read_ply,
    write_annotations,
    write_obj,
    write_pcd,
    write_ply,
)
from keypointnet.metrics import evaluate_annotations
from keypointnet.synth import synthesize

try:
    __version__ = version("keypointnet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "CATEGORY_TO_SYNSET",
    "SYNSET_TO_CATEGORY",
    "DataFormatError",
    "Keypoint",
    "KeypointNetDirectory",
    "Mesh",
    "ModelAnnotation",
    "PointCloud",
    "__version__",
    "evaluate_annotations",
    "read_annotations",
    "read_obj",
    "read_pcd",
    "read_ply",
    "synthesize",
    "write_annotations",
    "write_obj",
    "write_pcd",
    "write_ply",
]
