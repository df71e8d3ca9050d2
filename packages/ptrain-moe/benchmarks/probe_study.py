"""Sparse-MLP vs the dense Mixer of equal active FLOPs: MoCo v3 pre-training + linear probe.

Data: scikit-learn's digits (offline; the ``[data]`` extra), a seeded 80/20 split; pre-training
sees only the training images, the probe is fit on the training images and scored on the held-out
20 %. Both models share every setting except the sparse blocks; the dense twin's last blocks have
hidden widths chosen to match the sparse blocks' active MACs. A randomly initialised backbone is
probed too, as the floor.

    flock /tmp/ptrain-heavy.lock python benchmarks/probe_study.py \
        --json benchmarks/results/probe_digits.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ptrain.core.cli import write_json
from ptrain.moe.checkpoint import load_model
from ptrain.moe.data import digits_dataset
from ptrain.moe.mixer import SparseMLP, active_macs
from ptrain.moe.train import (
    PretrainConfig,
    ProbeConfig,
    build_backbone_config,
    linear_probe,
    pretrain,
)

MODEL = {
    "patch_size": 2, "dim": 64, "depth": 4, "num_sparse": 2, "token_hidden": 32,
    "channel_hidden": 128, "experts_s": 4, "experts_c": 4,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train, test = digits_dataset().split(0.2, seed=0)
    metrics = []
    for seed in args.seeds:
        for dense in (False, True):
            config = PretrainConfig(
                model="debug", dense=dense, overrides=MODEL, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, warmup_steps=args.steps // 10,
                checkpoint_every=0, seed=seed,
            )  # fmt: skip
            name = f"{'dense_mixer' if dense else 'sparse_mlp'}_seed{seed}"
            began = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                result = pretrain(config, train, out)
                backbone = load_model(result["backbone"])
            probe = linear_probe(backbone, train, test, ProbeConfig(seed=seed))
            model_config = build_backbone_config(config, train)
            torch.manual_seed(seed)
            random_probe = linear_probe(
                SparseMLP(model_config), train, test, ProbeConfig(seed=seed)
            )
            values = {
                "probe_test_accuracy": probe["test_accuracy"],
                "random_init_probe_test_accuracy": random_probe["test_accuracy"],
                "final_pretrain_loss": result["final_loss"],
                "active_mmacs_per_image": active_macs(model_config) / 1e6,
                "parameters": result["parameters"],
            }
            seconds = time.perf_counter() - began
            print(name, values, f"{seconds:.0f} s", file=sys.stderr, flush=True)
            metrics.append({"name": name, "values": values})
    command = (
        f"python benchmarks/probe_study.py --steps {args.steps} --batch-size {args.batch_size} "
        f"--lr {args.lr} --seeds {' '.join(map(str, args.seeds))}"
    )
    document = {"metrics": metrics, "meta": {"command": command, "model": MODEL}}
    if args.json:
        write_json(Path(args.json), document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
