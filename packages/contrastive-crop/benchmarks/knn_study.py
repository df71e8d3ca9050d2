"""kNN accuracy of ContrastiveCrop vs RandomResizedCrop on clutter-digits, over seeds.

    flock /tmp/ptrain-heavy.lock python packages/contrastive-crop/benchmarks/knn_study.py \
        --json packages/contrastive-crop/benchmarks/results/knn_study.json

Each seed trains both arms from the same initialisation and data order (same seed), SimCLR,
identical epochs, batch and augmentations except the crop; ContrastiveCrop warms up with RRC
for 20% of the epochs and refreshes boxes every 20%. Reports kNN top-1 (k = 20, 200) and the
linear-probe accuracy on the clutter-digits test split per seed, the means, and the paired
per-seed deltas.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from contrastive_crop.evaluate import extract_features, linear_probe
from contrastive_crop.train import PretrainConfig, load_data, pretrain
from contrastive_crop.transforms import Normalize
from ptrain.core.bench import environment_info
from ptrain.core.cli import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("clutter-digits", num_images=args.num_images)
    runs: dict[str, dict[int, dict[str, float]]] = {"rrc": {}, "contrastive": {}}
    ious: dict[int, list[float]] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        for crop in ("rrc", "contrastive"):
            config = PretrainConfig(
                method="simclr", crop=crop, backbone=args.backbone, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, threshold=args.threshold,
                alpha=args.alpha, seed=seed, knn=True,
            )  # fmt: skip
            result = pretrain(config, data)
            normalize = Normalize(data.mean, data.std)
            train = extract_features(result["backbone"], data.train.images, transform=normalize)
            test = extract_features(result["backbone"], data.test.images, transform=normalize)
            result["knn"]["linear"] = linear_probe(train, data.train.labels, test, data.test.labels)
            runs[crop][seed] = result["knn"]
            if crop == "contrastive":
                ious[seed] = [update["mean_iou"] for update in result["box_updates"]]
            print(f"seed {seed} {crop:>11}: {result['knn']}  box IoU per update: "
                  f"{ious.get(seed) if crop == 'contrastive' else '-'}", flush=True)  # fmt: skip
    metrics = []
    for k in ("knn@20", "knn@200", "linear"):
        deltas = [runs["contrastive"][s][k] - runs["rrc"][s][k] for s in range(args.seeds)]
        values = {
            "rrc_mean": statistics.mean(runs["rrc"][s][k] for s in range(args.seeds)),
            "contrastive_mean": statistics.mean(
                runs["contrastive"][s][k] for s in range(args.seeds)
            ),
            "delta_points_mean": 100 * statistics.mean(deltas),
            "delta_points_std": 100 * statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
        }
        for s, delta in enumerate(deltas):
            values[f"delta_points_seed{s}"] = 100 * delta
        metrics.append({"name": f"clutter_digits_simclr_{k}", "values": values})
    document = {
        "metrics": metrics,
        "runs": runs,
        "box_iou_per_update": ious,
        "meta": {
            "command": "flock /tmp/ptrain-heavy.lock python packages/contrastive-crop/benchmarks/"
            f"knn_study.py --epochs {args.epochs} --num-images {args.num_images} "
            f"--batch-size {args.batch_size} --backbone {args.backbone} --json PATH",
            **vars(args),
            "wall_seconds": time.perf_counter() - started,
        },
        "environment": environment_info(),
    }
    if args.json:
        write_json(args.json, document)
    for metric in metrics:
        print(metric)


if __name__ == "__main__":
    main()
