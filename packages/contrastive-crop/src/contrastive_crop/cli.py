"""The ``contrastive-crop`` command: pretrain, boxes, eval, bench.

Thin: each subcommand parses its flags, calls the library, prints a short summary and writes
``--json PATH`` when asked. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    positive_int,
    write_json,
)

PROG = "contrastive-crop"


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key not in ("boxes", "backbone")}


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    from contrastive_crop.train import DATASETS

    parser.add_argument(
        "--data",
        choices=DATASETS,
        default="clutter-digits",
        help="dataset (default: clutter-digits, needs scikit-learn)",
    )
    parser.add_argument("--root", default=None, help="dataset folder (CIFAR/STL binary, images)")
    parser.add_argument(
        "--num-images",
        type=positive_int,
        default=None,
        help="use the first N training images (clutter-digits: make N; 2000)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=64,
        help="resize side for --data folder (default: 64)",
    )


# --------------------------------------------------------------------------- pretrain
def _run_pretrain(args: argparse.Namespace) -> int:
    from contrastive_crop.train import PretrainConfig, pretrain

    try:
        config = PretrainConfig(
            method=args.method,
            crop=args.crop,
            data=args.data,
            root=args.root,
            num_images=args.num_images,
            image_size=args.image_size,
            backbone=args.backbone,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            temperature=args.temperature,
            alpha=args.alpha,
            threshold=args.threshold,
            box_warmup_epochs=args.box_warmup,
            loc_interval=args.loc_interval,
            seed=args.seed,
            out_dir=args.out,
            resume=args.resume,
            num_workers=args.workers,
            device=args.device,
            progress=True,
        )
        rank = 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Launched by torchrun: data-parallel over the ranks (gradients averaged).
            from ptrain.core.dist import init_distributed

            rank = init_distributed().rank
        result = pretrain(config)
    except (ValueError, ImportError) as error:
        raise UserError(str(error)) from None
    if rank != 0:
        return 0
    print(
        f"{config.method} / {config.crop}: {config.epochs} epochs, loss "
        f"{result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}"
    )
    for update in result["box_updates"]:
        iou = f", mean IoU with true boxes {update['mean_iou']:.3f}" if "mean_iou" in update else ""
        print(
            f"  boxes after epoch {update['epoch']}: mean area {update['mean_area']:.3f}{iou} "
            f"({update['seconds']:.1f} s)"
        )
    print(f"  box passes: {100 * result['box_fraction']:.2f}% of training time")
    if "knn" in result:
        print("  kNN: " + ", ".join(f"{k} {v:.4f}" for k, v in result["knn"].items()))
    if args.out:
        print(f"  wrote {Path(args.out) / 'model.pt'}")
    if args.json:
        write_json(args.json, _plain(result))
    return 0


# --------------------------------------------------------------------------- boxes
def _run_boxes(args: argparse.Namespace) -> int:
    from contrastive_crop.localization import box_area, box_iou
    from contrastive_crop.train import boxes_for, load_backbone, load_data

    backbone, extra = load_backbone(args.checkpoint)
    config = extra["config"]
    data_name = args.data or config["data"]
    root = args.root or config.get("root")
    try:
        data = load_data(
            data_name,
            root,
            args.num_images or config.get("num_images"),
            image_size=config.get("image_size", 64),
        )
        boxes = boxes_for(backbone, data, args.threshold)
    except (ValueError, ImportError) as error:
        raise UserError(str(error)) from None
    result: dict[str, Any] = {
        "threshold": args.threshold,
        "count": len(boxes),
        "mean_area": float(box_area(boxes).mean()),
    }
    print(f"{len(boxes)} boxes at threshold {args.threshold}: mean area {result['mean_area']:.3f}")
    if data.train.boxes is not None:
        result["mean_iou"] = float(box_iou(boxes, data.train.boxes).mean())
        print(f"  mean IoU with the true boxes: {result['mean_iou']:.3f}")
    if args.plot:
        from contrastive_crop.plot import plot_boxes

        plot_boxes(
            args.plot,
            data.train.images[: args.plot_count],
            boxes[: args.plot_count],
            None if data.train.boxes is None else data.train.boxes[: args.plot_count],
        )
        print(f"  wrote {args.plot}")
    if args.json:
        result["boxes"] = boxes.tolist()
        write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- eval
def _run_eval(args: argparse.Namespace) -> int:
    from contrastive_crop.evaluate import extract_features, knn_accuracy, linear_probe
    from contrastive_crop.train import load_backbone, load_data
    from contrastive_crop.transforms import Normalize

    backbone, extra = load_backbone(args.checkpoint)
    config = extra["config"]
    try:
        data = load_data(
            args.data or config["data"],
            args.root or config.get("root"),
            args.num_images or config.get("num_images"),
            image_size=config.get("image_size", 64),
        )
    except (ValueError, ImportError) as error:
        raise UserError(str(error)) from None
    if data.test is None:
        raise UserError(f"{args.root}: no test split to evaluate on (need <root>/test)")
    normalize = Normalize(extra.get("mean", data.mean), extra.get("std", data.std))
    train = extract_features(backbone, data.train.images, transform=normalize)
    test = extract_features(backbone, data.test.images, transform=normalize)
    result: dict[str, Any] = dict(knn_accuracy(train, data.train.labels, test, data.test.labels))
    if not args.no_linear:
        result["linear"] = linear_probe(train, data.train.labels, test, data.test.labels)
    print(", ".join(f"{key}: {value:.4f}" for key, value in result.items()))
    if args.json:
        write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- bench
def _run_bench(args: argparse.Namespace) -> int:
    from contrastive_crop import bench

    if args.bench == "crop":
        result = bench.bench_crop(size=args.size, n=args.n, repeats=args.repeats, alpha=args.alpha)
        verdict = "met" if result["met_goal"] else "NOT met"
        print(
            f"per image ({args.size}x{args.size} uint8, 1 thread): RRC {result['rrc_us']:.1f} µs, "
            f"ContrastiveCrop {result['contrastive_us']:.1f} µs, ratio {result['ratio']:.3f} "
            f"(goal <= {result['goal']}: {verdict})"
        )
    else:
        try:
            result = bench.bench_boxes(
                n=args.n,
                epochs=args.epochs,
                threshold=args.threshold,
                batch_size=args.batch_size,
                seed=args.seed,
                progress=True,
            )
        except ImportError as error:
            raise UserError(str(error)) from None
        print(
            f"mean IoU with true boxes: full image {result['mean_iou_full_image']:.3f}, "
            f"ContrastiveCrop boxes {result['mean_iou_contrastive']:.3f} "
            f"(threshold {result['threshold']}, mean area {result['mean_box_area']:.3f})"
        )
        print(
            f"box passes: {100 * result['box_fraction']:.2f}% of this run; projected to the "
            f"official schedule: {100 * result['box_fraction_official_schedule']:.3f}%"
        )
    if args.json:
        write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``contrastive-crop`` command."""
    from contrastive_crop.models import PRESETS
    from contrastive_crop.ssl import METHODS
    from contrastive_crop.train import CROPS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="ContrastiveCrop for Siamese self-supervised learning: pre-train, compute "
        "boxes, evaluate, benchmark.",
    )
    add_version_argument(parser, "contrastive-crop")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    pre = commands.add_parser("pretrain", help="self-supervised pre-training")
    pre.add_argument("--method", choices=METHODS, default="simclr", help="SSL framework")
    pre.add_argument(
        "--crop",
        choices=CROPS,
        default="contrastive",
        help="rrc: RandomResizedCrop; contrastive: ContrastiveCrop with localisation; "
        "simc: fixed centre box",
    )
    _add_data_arguments(pre)
    pre.add_argument("--backbone", choices=sorted(PRESETS), default="resnet18-w16")
    pre.add_argument("--epochs", type=positive_int, default=10, help="default: 10")
    pre.add_argument("--batch-size", type=positive_int, default=256, help="default: 256")
    pre.add_argument("--optimizer", choices=("sgd", "lars"), default="sgd")
    pre.add_argument("--lr", type=float, default=0.5, help="base LR (default: 0.5, official)")
    pre.add_argument("--weight-decay", type=float, default=1e-4, help="default: 1e-4")
    pre.add_argument("--temperature", type=float, default=0.2, help="SimCLR/MoCo tau (0.2)")
    pre.add_argument(
        "--alpha",
        type=float,
        default=0.6,
        help="Beta(alpha, alpha) of crop centres (paper 0.6; official configs 0.1)",
    )
    pre.add_argument("--threshold", type=float, default=0.1, help="heatmap threshold (0.1)")
    pre.add_argument(
        "--box-warmup",
        type=int,
        default=None,
        help="RRC epochs before boxes are used (default: 20%% of the epochs)",
    )
    pre.add_argument(
        "--loc-interval",
        type=positive_int,
        default=None,
        help="epochs between box updates (default: 20%% of the epochs)",
    )
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--out", default=None, help="run folder: checkpoints/, model.pt")
    pre.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    pre.add_argument("--workers", type=int, default=0, help="DataLoader workers (persistent)")
    pre.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_json_argument(pre)

    boxes = commands.add_parser("boxes", help="compute boxes from a trained model, plot them")
    boxes.add_argument("--checkpoint", type=Path, required=True, help="RUN/model.pt")
    boxes.add_argument("--data", default=None, help="default: the training data of the run")
    boxes.add_argument("--root", default=None)
    boxes.add_argument("--num-images", type=positive_int, default=None)
    boxes.add_argument("--threshold", type=float, default=0.1, help="heatmap threshold (0.1)")
    boxes.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="write a PNG of images with their boxes (needs matplotlib)",
    )
    boxes.add_argument("--plot-count", type=positive_int, default=16, help="images in the plot")
    add_json_argument(boxes)

    evaluate = commands.add_parser("eval", help="kNN (k=20, 200) and linear-probe accuracy")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="RUN/model.pt")
    evaluate.add_argument("--data", default=None, help="default: the training data of the run")
    evaluate.add_argument("--root", default=None)
    evaluate.add_argument("--num-images", type=positive_int, default=None)
    evaluate.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    add_json_argument(evaluate)

    bench = commands.add_parser("bench", help="benchmarks: crop speed, box quality")
    which = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    crop = which.add_parser("crop", help="ContrastiveCrop vs RandomResizedCrop, µs per image")
    crop.add_argument("--size", type=positive_int, default=32, help="image and output side")
    crop.add_argument("--n", type=positive_int, default=2000, help="images per timed block")
    crop.add_argument("--repeats", type=positive_int, default=11, help="timed blocks (median)")
    crop.add_argument("--alpha", type=float, default=0.6, help="Beta alpha (paper: 0.6)")
    add_json_argument(crop)
    box = which.add_parser("boxes", help="box IoU with true boxes after SimCLR on clutter-digits")
    box.add_argument("--n", type=positive_int, default=2000, help="clutter-digits images")
    box.add_argument("--epochs", type=positive_int, default=3, help="default: 3")
    box.add_argument("--batch-size", type=positive_int, default=128, help="default: 128")
    box.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="heatmap threshold of the scored boxes (default 0.5; 0.1-0.7 are all reported)",
    )
    box.add_argument("--seed", type=int, default=0)
    add_json_argument(box)
    return parser


_HANDLERS = {"pretrain": _run_pretrain, "boxes": _run_boxes, "eval": _run_eval, "bench": _run_bench}


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``contrastive-crop`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return _HANDLERS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
