"""PointNet and DGCNN trained on synthetic chairs: test-split saliency mIoU/mAP and PCK.

    python packages/keypointnet/benchmarks/bench_training.py [--quick] [--json PATH]

Synthesises a chair dataset with ``keypointnet.synth`` (fixed seed, 70/10/20 split) in a temporary
directory, then, for PointNet and DGCNN, trains ``keypointnet.train.train`` on the train split for
the saliency task and for the correspondence task and evaluates each on the TEST split (saliency
mIoU and mAP, PCK; geodesic thresholds 0.01, 0.05, 0.10). The learning-free semantic-id prior
(``prior_baseline_pck``: each id at the point nearest its mean training position) is its own run,
the yardstick for the correspondence models.

The settings (``FULL``) are sized so the whole benchmark takes at most ~10 minutes on a 2-core CPU:
1,024 points per cloud, narrowed networks (``model_kwargs``) and few epochs, so the models are
under-trained compared with upstream's 50 epochs of 2,048-point full-width networks. The numbers
are on synthetic shapes and not comparable to the paper's. ``--quick`` (16 chairs, 256 points,
2 epochs) is a smoke test of well under a minute. ``--repeats`` is accepted and ignored.

With ``--json`` the file holds ``{"metrics": [{"name", "values"}], "meta": {"command",
"settings", "time_s"}, "environment"}``, which ``tools/results_table.py`` renders.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keypointnet.synth import synthesize
from keypointnet.train import KeypointSamples, Task, TrainConfig, prior_baseline_pck, train
from ptrain.core.bench import bench_argument_parser, environment_info
from ptrain.core.cli import write_json

COMMAND = "python packages/keypointnet/benchmarks/bench_training.py"
CATEGORY = "chair"
#: The geodesic thresholds reported (keys of the metric dicts ``evaluate`` returns).
REPORTED_THRESHOLDS: tuple[str, ...] = ("0.01", "0.05", "0.10")
#: Metric dicts reported per task (``evaluate``'s names).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "saliency": ("saliency_miou", "saliency_map"),
    "correspondence": ("pck",),
}
MODELS: tuple[str, ...] = ("pointnet", "dgcnn")
PRIOR_RUN = "prior_baseline_correspondence"


@dataclass(frozen=True, slots=True)
class Settings:
    """One benchmark configuration.

    Attributes:
        num_models: synthetic chairs (split 70/10/20 into train/val/test).
        synth_points: points per synthesised PCD.
        num_points: points per cloud used for training and evaluation (keypoints always kept).
        batch_size: shapes per batch.
        epochs: training epochs per model name.
        model_kwargs: network keyword arguments per model name.
        seed: seeds the synthesis, the subsampling, the initialisation and the augmentation.
        geodesic_k: neighbours of the geodesic k-NN graph used by the metrics.
        splits: train/val/test fractions of the synthetic dataset.
    """

    num_models: int
    synth_points: int
    num_points: int
    batch_size: int
    epochs: dict[str, int]
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    geodesic_k: int = 20
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)


#: Measured: 5.7 min wall on a shared 2-core CPU (PointNet ~1.3 s, DGCNN ~7.7 s per epoch).
FULL = Settings(
    num_models=80,
    synth_points=2048,
    num_points=1024,
    batch_size=8,
    epochs={"pointnet": 40, "dgcnn": 15},
    model_kwargs={
        "pointnet": {"channels": (64, 128, 256), "head_channels": (256, 128)},
        "dgcnn": {"k": 10, "emb_dims": 256, "head_channels": (256, 128)},
    },
)
QUICK = Settings(
    num_models=16,
    synth_points=2048,
    num_points=256,
    batch_size=8,
    epochs={"pointnet": 2, "dgcnn": 2},
    model_kwargs=FULL.model_kwargs,
)


def _pick(metrics: dict[str, dict[str, float]], names: tuple[str, ...]) -> dict[str, float]:
    """``{"<name>@<threshold>": value}`` for the reported thresholds."""
    return {
        f"{name}@{threshold}": float(metrics[name][threshold])
        for name in names
        for threshold in REPORTED_THRESHOLDS
    }


def _train_run(
    settings: Settings, data_dir: Path, work_dir: Path, model: str, task: Task
) -> tuple[dict[str, float], dict[str, Any]]:
    """Trains one model on one task and evaluates it on the test split.

    Returns:
        ``(reported values, extra facts for the meta: final loss, model counts)``.
    """
    config = TrainConfig(
        data_dir=data_dir,
        category=CATEGORY,
        task=task,
        out_dir=work_dir / f"{model}_{task}",
        model=model,  # type: ignore[arg-type]
        epochs=settings.epochs[model],
        batch_size=settings.batch_size,
        seed=settings.seed,
        num_points=settings.num_points,
        eval_split="test",
        geodesic_k=settings.geodesic_k,
        model_kwargs=dict(settings.model_kwargs.get(model, {})),
    )
    result = train(config, progress=False)
    if result["eval_split"] != "test":
        raise RuntimeError(f"{model}/{task}: evaluated on {result['eval_split']!r}, not 'test'")
    facts = {
        "final_loss": result["final_loss"],
        "num_train_models": result["num_train_models"],
        "num_test_models": result["num_eval_models"],
    }
    return _pick(result, TASK_METRICS[task]), facts


def _prior_run(settings: Settings, data_dir: Path) -> dict[str, float]:
    """PCK of the semantic-id prior, fitted on the train split and scored on the test split."""
    train_samples = KeypointSamples.from_directory(
        data_dir, CATEGORY, "train", num_points=settings.num_points, augment=False,
        seed=settings.seed,
    )  # fmt: skip
    test_samples = KeypointSamples.from_directory(
        data_dir, CATEGORY, "test", num_points=settings.num_points,
        num_classes=train_samples.num_classes, augment=False, seed=settings.seed,
    )  # fmt: skip
    pck = prior_baseline_pck(train_samples, test_samples, k=settings.geodesic_k)
    return _pick({"pck": pck}, ("pck",))


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Synthesises the dataset, runs every model/task and the prior baseline.

    Args:
        settings: the configuration.

    Returns:
        The JSON document (``metrics``, ``meta``, ``environment``).
    """
    metrics: list[dict[str, Any]] = []
    times: dict[str, float] = {}
    runs: dict[str, dict[str, Any]] = {}
    total_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        data_dir = Path(tmp) / "data"
        start = time.perf_counter()
        synthesize(
            CATEGORY, settings.num_models, settings.seed, data_dir,
            num_points=settings.synth_points, splits=settings.splits,
        )  # fmt: skip
        times["synthesize"] = time.perf_counter() - start
        for model in MODELS:
            for task in ("saliency", "correspondence"):
                name = f"{model}_{task}"
                print(f"training {name} ({settings.epochs[model]} epochs) ...", flush=True)
                start = time.perf_counter()
                values, facts = _train_run(settings, data_dir, Path(tmp) / "runs", model, task)
                times[name] = time.perf_counter() - start
                metrics.append({"name": name, "values": values})
                runs[name] = facts
        start = time.perf_counter()
        metrics.append({"name": PRIOR_RUN, "values": _prior_run(settings, data_dir)})
        times[PRIOR_RUN] = time.perf_counter() - start
    times["total"] = time.perf_counter() - total_start
    meta = {
        "command": COMMAND,
        "settings": {
            **asdict(settings),
            "category": CATEGORY,
            "eval_split": "test",
            "reported_thresholds": [float(t) for t in REPORTED_THRESHOLDS],
            "optimizer": "Adam lr 1e-3, weight decay 1e-4, lr x0.5 every 10 epochs (upstream)",
            "augmentation": "train split: clipped Gaussian noise + random translation (upstream)",
            "norm": "batch",
            "pck": "symmetry-aware (best relabeling allowed by each shape's symmetries)",
            "dataset": "keypointnet.synth chairs (procedural), not ShapeNet",
        },
        "runs": runs,
        "time_s": times,
        "time_note": "each training run's time includes loading, training, checkpointing and "
        "the test evaluation (geodesics included)",
    }
    return {"metrics": metrics, "meta": meta, "environment": environment_info()}


def format_table(document: dict[str, Any]) -> str:
    """A plain-text table: one row per run and metric, one column per threshold, plus the time."""
    times = document["meta"]["time_s"]
    rows: list[tuple[str, str, list[str], str]] = []
    for entry in document["metrics"]:
        families: dict[str, list[str]] = {}
        for key, value in entry["values"].items():
            metric, _ = key.split("@")
            shown = "—" if value is None or math.isnan(value) else f"{value:.3f}"
            families.setdefault(metric, []).append(shown)
        for index, (metric, cells) in enumerate(families.items()):
            seconds = f"{times[entry['name']]:.1f} s" if index == 0 else ""
            rows.append((entry["name"] if index == 0 else "", metric, cells, seconds))
    run_width = max(len("run"), *(len(row[0]) for row in rows))
    metric_width = max(len("metric"), *(len(row[1]) for row in rows))
    thresholds = [f"@{threshold}" for threshold in REPORTED_THRESHOLDS]
    header = f"{'run':<{run_width}}  {'metric':<{metric_width}}  " + "  ".join(
        f"{t:>6}" for t in thresholds
    )
    lines = [f"{header}  {'time':>8}", "-" * (len(header) + 10)]
    for run, metric, cells, seconds in rows:
        values = "  ".join(f"{cell:>6}" for cell in cells)
        lines.append(
            f"{run:<{run_width}}  {metric:<{metric_width}}  {values}  {seconds:>8}".rstrip()
        )
    lines.append(f"synthesis {times['synthesize']:.1f} s, total {times['total']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write ``--json`` when asked.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code (0).
    """
    parser = bench_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    document = run_benchmark(settings)
    document["meta"]["quick"] = bool(args.quick)
    print(
        f"{settings.num_models} synthetic chairs, {settings.num_points} points, "
        f"epochs {settings.epochs}, test split"
    )
    print(format_table(document))
    if args.json:
        write_json(args.json, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
