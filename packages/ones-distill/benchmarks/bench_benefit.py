"""MoE benefit preserved by gather + KD, per gathering method, over seeds (small CPU settings).

For each task and seed: train an MoE teacher and a dense model of the student's size from scratch
(same epochs), then for each student init (``svd``, ``avg``, ``topk`` gathering, or ``random`` =
the dense architecture freshly initialised) distil from the teacher for the same epochs and report
``benefit = (acc_student − acc_dense) / (acc_moe − acc_dense)`` (assumed definition). The accuracy
right after gathering (before KD) is reported too.

    flock /tmp/ptrain-heavy.lock python benchmarks/bench_benefit.py \
        --json benchmarks/results/bench_benefit.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from typing import Any

import torch

from ones_distill import (
    FitConfig,
    GatherConfig,
    MixerClassifier,
    MixerClassifierConfig,
    VectorClassifier,
    VectorClassifierConfig,
    accuracy,
    fit,
    gather_model,
    moe_benefit,
)
from ones_distill.data import Split, cluster_task, digits_task
from ptrain.core.cli import write_json

INITS = ("svd", "avg", "topk", "random")
MIN_GAP = 0.01  # below 1 accuracy point between MoE and dense the ratio is noise: NaN


def _models(task: str, split: Split, experts: int) -> torch.nn.Module:
    if task == "synthetic":
        return VectorClassifier(VectorClassifierConfig(
            in_features=split.train_x.shape[1], dim=64, hidden=16, depth=1,
            num_classes=split.num_classes, num_experts=experts, top_k=1,
        ))  # fmt: skip
    return MixerClassifier(MixerClassifierConfig(
        image_size=8, patch_size=2, in_channels=1, dim=32, depth=2, token_hidden=16,
        channel_hidden=16, num_classes=split.num_classes, num_experts=experts, top_k=1,
    ))  # fmt: skip


def run_seed(task: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    if task == "synthetic":
        split = cluster_task(seed=seed, train_size=args.train_size, test_size=args.test_size)
    else:
        split = digits_task(seed=seed)
    config = FitConfig(epochs=args.epochs, batch_size=128, lr=3e-3, seed=seed,
                       temperature=2.0, alpha=0.5, log_every=0)  # fmt: skip
    torch.manual_seed(seed)
    teacher = _models(task, split, args.experts)
    fit(teacher, split.train_x, split.train_y, config, show_progress=False)
    torch.manual_seed(seed)
    dense = _models(task, split, 0)
    fit(dense, split.train_x, split.train_y, config, show_progress=False)
    row: dict[str, Any] = {
        "acc_moe": accuracy(teacher, split.test_x, split.test_y),
        "acc_dense": accuracy(dense, split.test_x, split.test_y),
    }
    for init in INITS:
        if init == "random":
            torch.manual_seed(seed + 1000)
            student = _models(task, split, 0)
        else:
            student = gather_model(teacher, GatherConfig(method=init))
        row[f"{init}_gathered_acc"] = accuracy(student, split.test_x, split.test_y)
        fit(student, split.train_x, split.train_y, config, teacher=teacher, show_progress=False)
        row[f"{init}_acc"] = accuracy(student, split.test_x, split.test_y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row[f"{init}_benefit"] = moe_benefit(row[f"{init}_acc"], row["acc_dense"],
                                                 row["acc_moe"], min_gap=MIN_GAP)  # fmt: skip
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["synthetic", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    metrics = []
    for task in args.tasks:
        rows = []
        for seed in args.seeds:
            start = time.perf_counter()
            rows.append(run_seed(task, seed, args))
            summary = ", ".join(f"{k}={v:.3f}" for k, v in rows[-1].items())
            print(f"{task} seed {seed} ({time.perf_counter() - start:.0f} s): {summary}",
                  flush=True)  # fmt: skip
        base = {
            "acc_moe": statistics.mean(r["acc_moe"] for r in rows),
            "acc_dense": statistics.mean(r["acc_dense"] for r in rows),
        }
        metrics.append({"name": f"{task}_reference", "values": base})
        for init in INITS:
            values: dict[str, float | str] = {
                "acc_gathered_mean": statistics.mean(r[f"{init}_gathered_acc"] for r in rows),
                "acc_after_kd_mean": statistics.mean(r[f"{init}_acc"] for r in rows),
            }
            benefits = [r[f"{init}_benefit"] for r in rows]
            finite = [b for b in benefits if not math.isnan(b)]
            values["benefit_mean"] = statistics.mean(finite) if finite else "NaN"
            values["benefit_per_seed"] = " / ".join(f"{b:+.2f}" for b in benefits)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                of_means = moe_benefit(values["acc_after_kd_mean"], base["acc_dense"],
                                       base["acc_moe"], min_gap=MIN_GAP)  # fmt: skip
            values["benefit_of_means"] = "NaN" if math.isnan(of_means) else of_means
            metrics.append({"name": f"{task}_{init}", "values": values})
    meta = {
        "command": "python benchmarks/bench_benefit.py " + " ".join(sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "note": "measured on a 2-core CPU machine under load; small settings; benefit is NaN "
        f"where |acc_moe - acc_dense| < {MIN_GAP}",
    }
    document = {"metrics": metrics, "meta": meta}
    if args.json:
        write_json(args.json, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
