"""The ``ones-distill`` command: train, gather, distill, report, bench speed.

Thin: each subcommand parses its flags, calls the library, prints a short summary and writes
``--json PATH`` when asked. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    non_negative_int,
    positive_float,
    positive_int,
    write_json,
)

PROG = "ones-distill"


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _add_data_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--data",
        choices=("synthetic", "digits"),
        default=default,
        help="task: the design doc's synthetic cluster task or scikit-learn's digits"
        + ("" if default else " (default: the one stored with the teacher)"),
    )
    parser.add_argument("--data-seed", type=int, default=None, help="task seed (default 0)")
    parser.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        help="training examples (synthetic: drawn; digits: a cap)",
    )
    parser.add_argument("--test-size", type=positive_int, default=None, help="test examples")


def _add_fit_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--epochs", type=positive_int, default=epochs, help=f"default {epochs}")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="AdamW lr (cosine)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save an atomic checkpoint every epoch here and resume from it",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="ignore checkpoints already in --checkpoint-dir"
    )


def _data_settings(args: argparse.Namespace, stored: dict[str, Any]) -> dict[str, Any]:
    settings = dict(stored.get("data") or {})
    if args.data is not None:
        if settings.get("name") not in (None, args.data):
            settings = {}
        settings["name"] = args.data
    for key in ("data_seed", "train_size", "test_size"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if "name" not in settings:
        raise UserError("no --data given and the teacher file does not name its training data")
    settings.setdefault("data_seed", 0)
    return settings


def _load_task(settings: dict[str, Any]) -> Any:
    from ones_distill.data import load_task

    return load_task(
        settings["name"],
        seed=settings["data_seed"],
        train_size=settings.get("train_size"),
        test_size=settings.get("test_size"),
    )


def _fit_config(args: argparse.Namespace, **kd: Any) -> Any:
    from ones_distill.distill import FitConfig

    try:
        return FitConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, **kd
        )
    except ValueError as error:
        raise UserError(str(error)) from error


# --------------------------------------------------------------------------- train
def _run_train(args: argparse.Namespace) -> int:
    from ones_distill.distill import fit
    from ones_distill.gather import parameter_count
    from ones_distill.metrics import accuracy
    from ones_distill.modelfile import save_model
    from ones_distill.models import (
        MixerClassifier,
        MixerClassifierConfig,
        VectorClassifier,
        VectorClassifierConfig,
    )

    settings = _data_settings(args, {})
    split = _load_task(settings)
    torch.manual_seed(args.seed)
    model: torch.nn.Module
    try:
        if settings["name"] == "synthetic":
            model = VectorClassifier(
                VectorClassifierConfig(
                    in_features=split.train_x.shape[1],
                    dim=args.dim,
                    hidden=args.hidden,
                    depth=args.depth,
                    num_classes=split.num_classes,
                    num_experts=args.experts,
                    top_k=args.top_k,
                )
            )
        else:
            size = split.train_x.shape[-1]
            model = MixerClassifier(
                MixerClassifierConfig(
                    image_size=size,
                    patch_size=2,
                    in_channels=split.train_x.shape[1],
                    dim=args.dim,
                    depth=args.depth,
                    token_hidden=max(1, args.dim // 2),
                    channel_hidden=args.hidden,
                    num_classes=split.num_classes,
                    num_experts=args.experts,
                    top_k=args.top_k,
                )
            )
    except ValueError as error:
        raise UserError(str(error)) from error
    config = _fit_config(args)
    result = fit(
        model,
        split.train_x,
        split.train_y,
        config,
        test_x=split.test_x,
        test_y=split.test_y,
        checkpoint_dir=args.checkpoint_dir,
        resume=not args.no_resume,
        desc="train",
    )
    acc = accuracy(model, split.test_x, split.test_y)
    save_model(args.out, model, data=settings, fit=config.to_dict(), test_acc=acc)
    kind = f"MoE {args.experts}x{args.hidden} top-{args.top_k}" if args.experts else "dense"
    print(f"{args.out}: {kind}, {parameter_count(model)} parameters, test accuracy {acc:.4f}")
    if args.json:
        write_json(
            args.json,
            {
                "out": str(args.out),
                "test_acc": acc,
                "params": parameter_count(model),
                "data": settings,
                "history": result.history,
            },
        )
    return 0


# --------------------------------------------------------------------------- gather
def _run_gather(args: argparse.Namespace) -> int:
    from ones_distill.gather import GatherConfig, find_moe_layers, gather_model, parameter_count
    from ones_distill.modelfile import load_model, save_model

    try:
        config = GatherConfig(
            method=args.method,
            rank=args.rank,
            combine=args.combine,
            neurons_per_expert=args.neurons_per_expert,
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    teacher, extra = load_model(args.teacher)
    layers = [name for name, _ in find_moe_layers(teacher)]
    student = gather_model(teacher, config, source=str(args.teacher))
    save_model(
        args.out,
        student,
        data=extra.get("data"),
        gather=config.to_dict(),
        teacher=str(args.teacher),
    )
    summary = {
        "teacher": str(args.teacher),
        "student": str(args.out),
        "gather": config.to_dict(),
        "layers": layers,
        "teacher_params": parameter_count(teacher),
        "student_params": parameter_count(student),
    }
    print(
        f"{args.out}: gathered {len(layers)} MoE layer(s) with {args.method}; "
        f"{summary['teacher_params']} -> {summary['student_params']} parameters"
    )
    if args.json:
        write_json(args.json, summary)
    return 0


# --------------------------------------------------------------------------- distill
def _run_distill(args: argparse.Namespace) -> int:
    from ones_distill.distill import fit
    from ones_distill.metrics import accuracy, mean_kl
    from ones_distill.modelfile import load_model, save_model

    teacher, teacher_extra = load_model(args.teacher)
    student, student_extra = load_model(args.student)
    settings = _data_settings(args, teacher_extra)
    split = _load_task(settings)
    config = _fit_config(
        args, temperature=args.temperature, alpha=args.alpha, feature_weight=args.feature_weight
    )
    before = {
        "kl": mean_kl(teacher, student, split.test_x),
        "test_acc": accuracy(student, split.test_x, split.test_y),
    }
    result = fit(
        student,
        split.train_x,
        split.train_y,
        config,
        teacher=teacher,
        test_x=split.test_x,
        test_y=split.test_y,
        checkpoint_dir=args.checkpoint_dir,
        resume=not args.no_resume,
        desc="distill",
    )
    after = {
        "kl": mean_kl(teacher, student, split.test_x),
        "test_acc": accuracy(student, split.test_x, split.test_y),
    }
    out = args.out or args.student.with_name(args.student.stem + ".distilled.pt")
    save_model(
        out,
        student,
        data=settings,
        gather=student_extra.get("gather"),
        distill=config.to_dict(),
        teacher=str(args.teacher),
    )
    print(
        f"{out}: KL to teacher {before['kl']:.4f} -> {after['kl']:.4f}, "
        f"test accuracy {before['test_acc']:.4f} -> {after['test_acc']:.4f}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "out": str(out),
                "before": before,
                "after": after,
                "config": config.to_dict(),
                "data": settings,
                "history": result.history,
            },
        )
    return 0


# --------------------------------------------------------------------------- report
def _run_report(args: argparse.Namespace) -> int:
    from ones_distill.gather import parameter_count
    from ones_distill.metrics import BenefitWarning, accuracy, moe_benefit
    from ones_distill.modelfile import load_model
    from ptrain.core.bench import compare

    teacher, teacher_extra = load_model(args.teacher)
    models = {"teacher": teacher, "student": load_model(args.student)[0]}
    if args.dense is not None:
        models["dense"] = load_model(args.dense)[0]
    split = _load_task(_data_settings(args, teacher_extra))
    rows = {
        name: {"test_acc": accuracy(m, split.test_x, split.test_y), "params": parameter_count(m)}
        for name, m in models.items()
    }
    report: dict[str, Any] = {"models": rows}
    print(f"{'model':<8} {'params':>10} {'test acc':>9}")
    for name, row in rows.items():
        print(f"{name:<8} {row['params']:>10} {row['test_acc']:>9.4f}")
    if "dense" in rows:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BenefitWarning)
            benefit = moe_benefit(
                rows["student"]["test_acc"], rows["dense"]["test_acc"], rows["teacher"]["test_acc"]
            )
        report["benefit"] = {
            "value": None if math.isnan(benefit) else benefit,
            "acc_student": rows["student"]["test_acc"],
            "acc_dense": rows["dense"]["test_acc"],
            "acc_moe": rows["teacher"]["test_acc"],
            "definition": "(acc_student - acc_dense) / (acc_moe - acc_dense)",
        }
        for warning in caught:
            print(f"warning: {warning.message}")
        print(
            f"MoE benefit preserved: {benefit:.3f}"
            if not math.isnan(benefit)
            else "MoE benefit preserved: undefined (NaN)"
        )
    if args.speed_repeats:
        batch = split.test_x[: args.speed_batch]
        student = models["student"]
        with torch.no_grad():
            result = compare(
                lambda: student(batch),
                lambda: teacher(batch),
                name="student_vs_teacher",
                repeats=args.speed_repeats,
                threads=1,
            )
        speedup = result.baseline_s / result.candidate_s if result.candidate_s > 0 else math.inf
        report["speed"] = {
            "batch": int(batch.shape[0]),
            "teacher_s": result.baseline_s,
            "student_s": result.candidate_s,
            "speedup": speedup,
        }
        print(f"speedup teacher/student at batch {batch.shape[0]}: {speedup:.2f}x")
    if args.json:
        write_json(args.json, report)
    return 0


# --------------------------------------------------------------------------- bench
def _run_bench(args: argparse.Namespace) -> int:
    from ones_distill.bench import speed_benchmark

    times, _, meta = speed_benchmark(repeats=args.repeats)
    for batch in (1, 64):
        teacher, student = times[f"teacher_b{batch}_s"], times[f"student_b{batch}_s"]
        print(
            f"batch {batch:>2}: teacher {teacher * 1e3:.2f} ms, student {student * 1e3:.2f} ms, "
            f"teacher/student {teacher / student:.2f}x"
        )
    print(f"parameters: teacher {meta['teacher_params']}, student {meta['student_params']}")
    if args.json:
        write_json(args.json, times)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ones-distill``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="OneS knowledge integration: gather an MoE into a dense student, distil it.",
    )
    add_version_argument(parser, "ones-distill")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train an MoE teacher (--experts N) or a dense baseline (--experts 0) on a task",
    )
    _add_data_arguments(train, "synthetic")
    train.add_argument(
        "--experts", type=non_negative_int, default=8, help="experts per FFN (0: dense; default 8)"
    )
    train.add_argument("--top-k", type=positive_int, default=1, help="experts per token (1|2)")
    train.add_argument(
        "--hidden",
        type=positive_int,
        default=16,
        help="FFN hidden width (of each expert; default 16)",
    )
    train.add_argument("--dim", type=positive_int, default=64, help="model dim (default 64)")
    train.add_argument("--depth", type=positive_int, default=1, help="FFN blocks (default 1)")
    _add_fit_arguments(train, epochs=20)
    train.add_argument("--out", type=Path, required=True, help="model file to write")
    add_json_argument(train)

    gather = sub.add_parser("gather", help="gather every MoE layer of a teacher into a dense FFN")
    gather.add_argument(
        "--teacher",
        type=Path,
        required=True,
        help="teacher model file (ones-distill or ptrain-moe format)",
    )
    gather.add_argument(
        "--method",
        choices=("sum", "avg", "topk", "svd"),
        default="svd",
        help="gathering method (default svd)",
    )
    gather.add_argument(
        "--rank",
        type=positive_int,
        default=None,
        help="svd rank per expert and matrix (default min(D, H) // E)",
    )
    gather.add_argument(
        "--combine",
        choices=("sum", "mean"),
        default="sum",
        help="svd: sum or mean of the experts' low-rank pieces (default sum)",
    )
    gather.add_argument(
        "--neurons-per-expert",
        type=positive_int,
        default=None,
        help="topk: hidden neurons kept per expert (default H / E)",
    )
    gather.add_argument("--out", type=Path, required=True, help="student model file to write")
    add_json_argument(gather)

    distill = sub.add_parser("distill", help="distil a gathered student from its MoE teacher")
    distill.add_argument("--teacher", type=Path, required=True, help="teacher model file")
    distill.add_argument("--student", type=Path, required=True, help="student model file")
    _add_data_arguments(distill, None)
    _add_fit_arguments(distill, epochs=10)
    distill.add_argument(
        "--temperature", type=positive_float, default=2.0, help="KD temperature T (default 2)"
    )
    distill.add_argument(
        "--alpha",
        type=_unit_float,
        default=0.5,
        help="weight of hard-label CE; 1 - alpha on the soft KL (default 0.5)",
    )
    distill.add_argument(
        "--feature-weight",
        type=float,
        default=0.0,
        help="weight of the per-layer FFN-output MSE to the teacher (default 0)",
    )
    distill.add_argument(
        "--out",
        type=Path,
        default=None,
        help="distilled student file (default <student>.distilled.pt)",
    )
    add_json_argument(distill)

    report = sub.add_parser("report", help="accuracy table, MoE benefit preserved, speedup")
    report.add_argument("--teacher", type=Path, required=True, help="teacher model file")
    report.add_argument("--student", type=Path, required=True, help="student model file")
    report.add_argument(
        "--dense",
        type=Path,
        default=None,
        help="dense baseline of the student's size trained from scratch",
    )
    _add_data_arguments(report, None)
    report.add_argument(
        "--speed-repeats",
        type=non_negative_int,
        default=5,
        help="timed blocks for the speedup (0: skip; default 5)",
    )
    report.add_argument(
        "--speed-batch", type=positive_int, default=64, help="batch for the speedup (default 64)"
    )
    add_json_argument(report)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    speed = bench_sub.add_parser(
        "speed", help="MoE-Mixer teacher vs gathered student inference, batch 1 and 64, 1 thread"
    )
    speed.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timed blocks per model and batch (default 5)",
    )
    add_json_argument(speed)
    return parser


_COMMANDS = {
    "train": _run_train,
    "gather": _run_gather,
    "distill": _run_distill,
    "report": _run_report,
    "bench": _run_bench,
}


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    """Runs ``ones-distill``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    args = build_parser().parse_args(argv)
    return _COMMANDS[args.command](args)
