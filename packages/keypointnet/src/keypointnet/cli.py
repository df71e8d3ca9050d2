"""The ``keypointnet`` command: stats, synth, train, predict, eval, project.

Thin: every subcommand parses its flags, calls the library, prints a short human summary and
writes ``--json PATH`` when asked. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from keypointnet.data import CATEGORY_TO_SYNSET, SYNSET_TO_CATEGORY, ModelAnnotation
from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    positive_int,
    write_json,
)

PROG = "keypointnet"


def _category(text: str) -> str:
    if text in CATEGORY_TO_SYNSET:
        return text
    if text in SYNSET_TO_CATEGORY:
        return SYNSET_TO_CATEGORY[text]
    raise argparse.ArgumentTypeError(
        f"unknown category {text!r}; expected one of {', '.join(sorted(CATEGORY_TO_SYNSET))} "
        f"or a synset id"
    )


# --------------------------------------------------------------------------- stats
def annotation_stats(models: list[ModelAnnotation]) -> dict[str, Any]:
    """The ``stats`` contract: models, keypoints, per-semantic-id and per-category counts."""
    semantic_ids = Counter(kp.semantic_id for model in models for kp in model.keypoints)
    categories = Counter(model.class_id for model in models)
    return {
        "models": len(models),
        "keypoints": sum(len(model.keypoints) for model in models),
        "semantic_ids": {str(key): semantic_ids[key] for key in sorted(semantic_ids)},
        "categories": {key: categories[key] for key in sorted(categories)},
    }


def _run_stats(args: argparse.Namespace) -> int:
    from keypointnet.data import read_annotations

    models = read_annotations(args.annotations)
    stats = annotation_stats(models)
    per_model = Counter(len(model.keypoints) for model in models)
    reflections = sum(len(model.symmetries.reflection) for model in models)
    rotations = sum(len(model.symmetries.rotation) for model in models)
    print(f"{args.annotations}: {stats['models']} models, {stats['keypoints']} keypoints")
    for synset, count in stats["categories"].items():
        print(f"  category {synset} ({SYNSET_TO_CATEGORY.get(synset, 'unknown')}): {count} models")
    print(
        "  keypoints per model: "
        + ", ".join(f"{size}: {count}" for size, count in sorted(per_model.items()))
    )
    print(
        "  keypoints per semantic id: "
        + ", ".join(f"{key}: {count}" for key, count in stats["semantic_ids"].items())
    )
    print(f"  symmetry groups: {reflections} reflection, {rotations} rotation")
    if args.json:
        write_json(args.json, stats)
    return 0


# --------------------------------------------------------------------------- synth
def _run_synth(args: argparse.Namespace) -> int:
    from keypointnet.synth import synthesize

    models = synthesize(args.category, args.n, args.seed, args.out, num_points=args.num_points)
    synset = CATEGORY_TO_SYNSET[args.category]
    print(
        f"wrote {len(models)} synthetic {args.category} models "
        f"({sum(len(m.keypoints) for m in models)} keypoints) to {args.out}: "
        f"annotations/{args.category}.json, pcds/{synset}/*.pcd, "
        f"ShapeNetCore.v2.ply/{synset}/*.ply, splits/*.txt"
    )
    if args.json:
        write_json(
            args.json,
            {
                "category": args.category,
                "synset": synset,
                "models": [model.model_id for model in models],
                "keypoints": sum(len(m.keypoints) for m in models),
                "out": str(args.out),
            },
        )
    return 0


# --------------------------------------------------------------------------- train / predict
def _run_train(args: argparse.Namespace) -> int:
    from keypointnet.train import TrainConfig, train

    try:
        config = TrainConfig(
            data_dir=args.data,
            category=args.category,
            task=args.task,
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            out_dir=args.out,
            resume=args.resume,
            num_points=args.num_points,
            max_models=args.max_models,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Launched by torchrun: every rank trains on its shard of each global batch.
        from ptrain.core.dist import init_distributed

        info = init_distributed()
        result = train(config, rank=info.rank, world_size=info.world_size)
        if info.rank != 0:
            return 0
    else:
        result = train(config)
    _print_metrics(result)
    if args.json:
        write_json(args.json, result)
    return 0


def _print_metrics(result: dict[str, Any]) -> None:
    for name in ("saliency_miou", "saliency_map", "pck", "prior_pck"):
        values = result.get(name)
        if isinstance(values, dict) and values:
            shown = ", ".join(f"{key}: {value:.3f}" for key, value in values.items() if key in
                              ("0.00", "0.01", "0.05", "0.10"))  # fmt: skip
            print(f"  {name}: {shown}")
    for key, value in result.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")


def _run_predict(args: argparse.Namespace) -> int:
    from keypointnet.data import write_annotations
    from keypointnet.train import load_trained, predict_annotations

    model, task, meta = load_trained(args.checkpoint)
    predictions = predict_annotations(
        model, args.data, task, category=args.category or meta.get("category"), split=args.split
    )
    write_annotations(args.out, predictions)
    print(f"wrote {len(predictions)} predicted models ({task}) to {args.out}")
    return 0


# --------------------------------------------------------------------------- eval
def _load_points_for(models: list[ModelAnnotation], pcd_dir: Path) -> dict[str, Any]:
    from keypointnet.data import read_pcd

    points = {}
    for model in models:
        path = pcd_dir / model.class_id / f"{model.model_id}.pcd"
        if not path.is_file():
            raise UserError(
                f"{path}: no point cloud for model {model.key} (--pcd-dir must hold "
                f"<synset>/<model_id>.pcd files, as KeypointNet's pcds/ folder)"
            )
        points[model.key] = read_pcd(path).points
    return points


def _run_eval(args: argparse.Namespace) -> int:
    from keypointnet.data import read_annotations
    from keypointnet.metrics import evaluate_annotations

    gt = read_annotations(args.gt)
    pred = read_annotations(args.pred)
    points = _load_points_for(gt, Path(args.pcd_dir))
    try:
        result = evaluate_annotations(gt, pred, points, k=args.k)
    except ValueError as error:
        raise UserError(f"{args.pred}: {error}") from None
    print(f"{len(gt)} ground-truth models, {len(pred)} predicted; k={args.k} geodesics")
    header = "threshold  " + "  ".join(f"{key:>5}" for key in result["pck"])
    print(header)
    for name in ("saliency_miou", "saliency_map", "pck"):
        print(f"{name:<10} " + "  ".join(f"{value:5.3f}" for value in result[name].values()))
    if args.json:
        write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- project
def _view_result(
    camera: Any,
    azimuth_degrees: float,
    gt: ModelAnnotation,
    gt_view: Any,
    pred_uv: Any | None,
    alpha: float,
) -> dict[str, Any]:
    import numpy as np

    from keypointnet.projection import pck_2d

    keypoints = []
    for index, keypoint in enumerate(gt.keypoints):
        entry: dict[str, Any] = {
            "semantic_id": keypoint.semantic_id,
            "uv": [float(gt_view.uv[index, 0]), float(gt_view.uv[index, 1])],
            "depth": float(gt_view.depth[index]),
            "visible": bool(gt_view.visible[index]),
        }
        if pred_uv is not None:
            predicted = pred_uv[index]
            entry["pred_uv"] = (
                [float(predicted[0]), float(predicted[1])] if np.isfinite(predicted).all() else None
            )
        keypoints.append(entry)
    result: dict[str, Any] = {
        "azimuth_degrees": azimuth_degrees,
        "visible": int(np.count_nonzero(gt_view.visible)),
        "keypoints": keypoints,
    }
    if pred_uv is not None:
        score = pck_2d(
            pred_uv,
            gt_view.uv,
            gt_view.visible,
            alpha=alpha,
            image_shape=(camera.height, camera.width),
        )
        result["pck_2d"] = None if math.isnan(score) else score
    return result


def _run_project(args: argparse.Namespace) -> int:
    import numpy as np

    from keypointnet.data import KeypointNetDirectory, read_annotations
    from keypointnet.projection import (
        look_at_camera,
        plot_projection,
        project_keypoints,
        project_points,
        render_shaded,
    )

    directory = KeypointNetDirectory(args.data)
    models = directory.models(args.category)
    if not models:
        raise UserError(f"{args.data}: no {args.category} models")
    if args.model_id is None:
        model = models[0]
    else:
        matches = [m for m in models if m.model_id == args.model_id]
        if not matches:
            raise UserError(f"{args.data}: no {args.category} model with id {args.model_id!r}")
        model = matches[0]
    mesh = directory.load_mesh(model)
    cloud = directory.load_points(model).points if args.method != "mesh" else None
    gt_xyz = np.array([kp.xyz for kp in model.keypoints], dtype=np.float64).reshape(-1, 3)
    pred_xyz = None
    if args.pred:
        predicted = {m.key: m for m in read_annotations(args.pred)}
        if model.key not in predicted:
            raise UserError(f"{args.pred}: no prediction for model {model.key}")
        # The first predicted keypoint of each semantic id is matched to the ground truth.
        first: dict[int, tuple[float, float, float]] = {}
        for keypoint in predicted[model.key].keypoints:
            first.setdefault(keypoint.semantic_id, keypoint.xyz)
        nan = (math.nan, math.nan, math.nan)
        pred_xyz = np.array([first.get(kp.semantic_id, nan) for kp in model.keypoints])
    views = []
    plots = []
    for view_index in range(args.views):
        azimuth = args.azimuth + 360.0 * view_index / args.views
        camera = look_at_camera(
            math.radians(azimuth), math.radians(args.elevation), args.distance, width=args.size
        )
        gt_view = project_keypoints(
            camera, gt_xyz, mesh=(mesh.vertices, mesh.faces), cloud=cloud, method=args.method
        )
        pred_uv = None
        if pred_xyz is not None:
            pred_uv = np.full((len(pred_xyz), 2), np.nan)
            known = np.isfinite(pred_xyz).all(axis=1)
            if known.any():
                pred_uv[known] = project_points(camera, pred_xyz[known])[0]
        views.append(_view_result(camera, azimuth, model, gt_view, pred_uv, args.alpha))
        plots.append((camera, gt_view, pred_uv))
    result: dict[str, Any] = {
        "model": model.key,
        "method": args.method,
        "elevation_degrees": args.elevation,
        "distance": args.distance,
        "size": args.size,
        "views": views,
    }
    summary = ", ".join(f"{view['visible']}/{len(gt_xyz)}" for view in views)
    print(f"{model.key}: visible keypoints per view ({args.method}): {summary}")
    if pred_xyz is not None:
        scores = [view["pck_2d"] for view in views if view["pck_2d"] is not None]
        result["pck_2d_mean"] = float(np.mean(scores)) if scores else None
        shown = "n/a" if result["pck_2d_mean"] is None else f"{result['pck_2d_mean']:.3f}"
        print(f"  2D PCK@{args.alpha:g} of the projected predictions: {shown}")
    if args.plot:
        for index, (camera, gt_view, pred_uv) in enumerate(plots):
            path = args.plot if len(plots) == 1 else _numbered(args.plot, index)
            image = render_shaded(camera, mesh.vertices, mesh.faces)
            uv, visible = gt_view.uv, gt_view.visible
            labels = [str(kp.semantic_id) for kp in model.keypoints]
            if pred_uv is not None:  # draw the predictions; visibility from the ground truth
                uv = np.where(np.isfinite(pred_uv), pred_uv, gt_view.uv)
                labels = [f"{label}'" for label in labels]
            plot_projection(path, image, uv, visible, labels=labels, title=model.key)
            print(f"  wrote {path}")
    if args.json:
        write_json(args.json, result)
    return 0


def _numbered(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}-{index}{path.suffix}")


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``keypointnet`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="KeypointNet tools: dataset statistics, synthetic shapes, keypoint models, "
        "benchmark metrics and 3D-to-2D keypoint projection.",
    )
    add_version_argument(parser, "keypointnet")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    stats = commands.add_parser("stats", help="count models, keypoints, semantic ids")
    stats.add_argument("annotations", type=Path, help="a category annotation JSON file")
    add_json_argument(stats)

    synth = commands.add_parser(
        "synth", help="write synthetic shapes with keypoints in KeypointNet's formats"
    )
    synth.add_argument("--category", type=_category, required=True, help="chair, table, ...")
    synth.add_argument("--n", type=positive_int, required=True, help="number of models")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--out", type=Path, required=True, help="output dataset directory")
    synth.add_argument(
        "--num-points", type=positive_int, default=2048, help="points per PCD (default: 2048)"
    )
    add_json_argument(synth)

    train = commands.add_parser("train", help="train PointNet/DGCNN for saliency or correspondence")
    train.add_argument("--data", type=Path, required=True, help="KeypointNet-layout directory")
    train.add_argument("--category", type=_category, required=True)
    train.add_argument("--task", choices=("saliency", "correspondence"), default="correspondence")
    train.add_argument("--model", choices=("pointnet", "dgcnn"), default="pointnet")
    train.add_argument("--epochs", type=positive_int, default=50, help="default: 50 (upstream)")
    train.add_argument("--batch-size", type=positive_int, default=8, help="default: 8")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--num-points", type=positive_int, default=2048, help="points per cloud (2048)"
    )
    train.add_argument(
        "--max-models", type=positive_int, default=None, help="use at most N models per split"
    )
    train.add_argument("--out", type=Path, required=True, help="run directory (checkpoints)")
    train.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out"
    )
    add_json_argument(train)

    predict = commands.add_parser("predict", help="write a trained model's predictions as JSON")
    predict.add_argument("--checkpoint", type=Path, required=True, help="RUN/model.pt")
    predict.add_argument("--data", type=Path, required=True)
    predict.add_argument("--category", type=_category, default=None)
    predict.add_argument("--split", choices=("train", "val", "test"), default="test")
    predict.add_argument("--out", type=Path, required=True, help="predictions (annotation JSON)")

    evaluate = commands.add_parser(
        "eval", help="saliency mIoU/mAP and correspondence PCK at geodesic thresholds 0.00-0.10"
    )
    evaluate.add_argument("--gt", type=Path, required=True, help="ground-truth annotations")
    evaluate.add_argument(
        "--pred", type=Path, required=True, help="predictions in the annotation schema"
    )
    evaluate.add_argument(
        "--pcd-dir", type=Path, required=True, help="folder of <synset>/<model_id>.pcd files"
    )
    evaluate.add_argument("--k", type=positive_int, default=20, help="k-NN graph size (20)")
    add_json_argument(evaluate)

    project = commands.add_parser(
        "project", help="project 3D keypoints onto a rendered view, with visibility"
    )
    project.add_argument("--data", type=Path, required=True, help="dataset with meshes")
    project.add_argument("--category", type=_category, required=True)
    project.add_argument("--model-id", default=None, help="default: the first model")
    project.add_argument("--pred", type=Path, default=None, help="project predictions instead")
    project.add_argument(
        "--azimuth",
        type=float,
        default=210.0,
        help="degrees about +y from +z (the back of a ShapeNet model); default 210: front-left",
    )
    project.add_argument(
        "--elevation", type=float, default=65.0, help="degrees from +y (default: 65)"
    )
    project.add_argument("--distance", type=float, default=1.1, help="camera distance (1.1)")
    project.add_argument("--size", type=positive_int, default=256, help="image size in pixels")
    project.add_argument(
        "--views",
        type=positive_int,
        default=1,
        help="cameras evenly spaced in azimuth around the object, starting at --azimuth",
    )
    project.add_argument(
        "--alpha", type=float, default=0.1, help="2D PCK threshold as a fraction of the image"
    )
    project.add_argument(
        "--method", choices=("mesh", "hpr", "splat"), default="mesh", help="visibility test"
    )
    project.add_argument(
        "--plot", type=Path, default=None, help="write a PNG with keypoints (PATH-<i>.png per view)"
    )
    add_json_argument(project)
    return parser


_HANDLERS = {
    "stats": _run_stats,
    "synth": _run_synth,
    "train": _run_train,
    "predict": _run_predict,
    "eval": _run_eval,
    "project": _run_project,
}


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``keypointnet`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return _HANDLERS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
