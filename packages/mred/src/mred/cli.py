"""The ``mred`` command: stats, train-classifier, classify, summarize, evaluate, train-generator,
generate.

Thin: every subcommand parses its flags, calls the library, prints a short human summary and
writes ``--json PATH`` when asked. Bad input ends in one line on stderr and exit code 2.
Heavy imports (torch, transformers) happen inside the subcommands that need them, so
``mred evaluate`` and ``mred stats`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    positive_float,
    positive_int,
    write_json,
)

PROG = "mred"


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _write_lines(path: Path, lines: list[str]) -> None:
    from ptrain.core.checkpoint import atomic_write

    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as file:
        for line in lines:
            file.write(" ".join(line.split()) + "\n")


# --------------------------------------------------------------------------- stats
def _run_stats(args: argparse.Namespace) -> int:
    from mred.data import release_stats

    stats = release_stats(args.directory)
    for split, counts in stats["splits"].items():
        print(f"{split}: {counts['meta_reviews']} meta-reviews, {counts['sentences']} sentences")
    total = sum(stats["labels"].values()) or 1
    print(
        "labels: "
        + ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in stats["labels"].items())
    )
    if args.json:
        write_json(args.json, stats)
    return 0


# --------------------------------------------------------------------------- classifier
def _load_training_data(args: argparse.Namespace) -> tuple[list[Any], list[Any], dict[str, Any]]:
    from mred.data import Release

    release = Release(args.data)
    train, train_files = release.labeled_documents("train")
    dev, dev_files = release.labeled_documents("val")
    full_train = (
        release.classification_path("train") is not None or release.bio_path("train") is not None
    )
    notes = []
    if not full_train and train:
        notes.append(
            f"the full train split is absent: training on the gold train subsets "
            f"({len(train)} meta-reviews)"
        )
        if dev and not args.hold_out_val:
            train = train + dev
            notes.append(
                f"val ({len(dev)} meta-reviews) is added to the training data as well: val "
                "scores are NOT held out (--hold-out-val keeps val for evaluation)"
            )
    elif args.train_on_val and dev:
        train = train + dev
        notes.append("val is added to the training data: val scores are NOT held out")
    if not train and dev:
        train = dev
        notes.append("no train data found: training on val (val scores are NOT held out)")
    if not train:
        raise UserError(
            f"{args.data}: no labelled sentences found (expected classification/data/train.txt, "
            f"val.txt, or summarization/extractive/data/target/filtered_train_labeled_sentences*)"
        )
    info = {
        "train_files": [str(p) for p in train_files],
        "dev_files": [str(p) for p in dev_files],
        "train_meta_reviews": len(train),
        "train_sentences": sum(len(d.sentences) for d in train),
        "dev_meta_reviews": len(dev),
        "notes": notes,
    }
    return train, dev, info


def _run_train_classifier(args: argparse.Namespace) -> int:
    import torch

    from mred.classify import ClassifierConfig, TrainConfig, train_classifier

    # per-document tensors are tiny: intra-op threads only add spin-waiting (10x slower on a
    # busy 2-core machine), so one thread unless asked otherwise
    torch.set_num_threads(args.threads or 1)
    train, dev, info = _load_training_data(args)
    for note in info["notes"]:
        print(f"note: {note}")
    print(
        f"training {args.model} classifier on {info['train_meta_reviews']} meta-reviews "
        f"({info['train_sentences']} sentences); dev: {info['dev_meta_reviews']} meta-reviews"
    )
    try:
        config = ClassifierConfig(
            model=args.model,
            use_crf=not args.no_crf,
            freeze_encoder=args.freeze_encoder,
            max_length=args.max_length,
            pooling=args.pooling,
        )
        train_config = TrainConfig(
            out_dir=args.out,
            epochs=args.epochs,
            lr=args.lr
            if args.lr is not None
            else (2e-3 if args.model == "bow" else 2e-5 if config.kind == "pretrained" else 1e-3),
            seed=args.seed,
            resume=args.resume,
            patience=args.patience,
            max_train_documents=args.max_train_docs,
        )
    except ValueError as error:
        raise UserError(str(error)) from None

    def report(record: dict[str, Any]) -> None:
        dev_text = (
            f", dev accuracy {record['dev_accuracy']:.2f}, macro-F1 {record['dev_macro_f1']:.2f}"
            if "dev_accuracy" in record
            else ""
        )
        print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}{dev_text}")

    _, result = train_classifier(
        train, dev, config, train_config, info=info, on_epoch=report, show_progress=_show_progress()
    )
    if "dev" in result:
        print(
            f"best epoch {result['best_epoch']}: dev accuracy {result['dev']['accuracy']:.2f}, "
            f"macro-F1 {result['dev']['macro_f1']:.2f} -> {args.out}"
        )
    if args.json:
        write_json(args.json, {"model": args.model, **info, **result})
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    from mred.classify import SentenceClassifier
    from mred.data import read_labeled_sentences, read_lines, split_sentences
    from mred.metrics import classification_metrics

    classifier = SentenceClassifier.load(args.classifier)
    first = read_lines(args.input)[:1]
    labelled = bool(first) and first[0].count("\t") == 2
    if labelled:
        documents = read_labeled_sentences(args.input)
        texts = [d.texts for d in documents]
    else:
        texts = [split_sentences(line) for line in read_lines(args.input)]
    predicted = classifier.predict(texts)
    result: dict[str, Any] = {"documents": len(texts), "sentences": sum(map(len, texts))}
    if labelled:
        result.update(classification_metrics([d.labels for d in documents], predicted))
        print(
            f"{args.input}: accuracy {result['accuracy']:.2f}, macro-F1 {result['macro_f1']:.2f} "
            f"over {result['sentences']} sentences"
        )
    if args.out:
        lines = []
        for index, (sentences, labels) in enumerate(zip(texts, predicted, strict=True)):
            paper = documents[index].paper_id if labelled else str(index)
            lines += [f"{paper}\t{s}\t{label}" for s, label in zip(sentences, labels, strict=True)]
            lines.append("")
        from ptrain.core.checkpoint import atomic_write

        with atomic_write(args.out, "w") as file:
            file.write("\n".join(lines) + "\n")
        print(f"wrote {result['sentences']} labelled sentences to {args.out}")
    if args.json:
        write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- summarize
def _run_summarize(args: argparse.Namespace) -> int:
    from mred.data import read_generation_csv

    examples = read_generation_csv(args.input)
    classifier = None
    if args.controlled:
        if args.classifier is None:
            raise UserError("--controlled needs --classifier CLF (labels for source sentences)")
        from mred.classify import SentenceClassifier

        classifier = SentenceClassifier.load(args.classifier)
    from mred.pipeline import summarize_examples

    if args.limit:
        examples = examples[: args.limit]
    summaries = summarize_examples(
        examples,
        args.method,
        classifier=classifier,
        controlled=args.controlled,
        show_progress=_show_progress(),
    )
    _write_lines(args.out, [summary.text for summary in summaries])
    mean = sum(len(s.sentences) for s in summaries) / max(len(summaries), 1)
    kind = "controlled" if args.controlled else "uncontrolled"
    print(
        f"wrote {len(summaries)} {kind} {args.method} summaries ({mean:.2f} sentences each) "
        f"to {args.out}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "method": args.method,
                "controlled": args.controlled,
                "rows": len(summaries),
                "mean_sentences": mean,
                "labels": [list(s.labels) for s in summaries] if args.controlled else None,
            },
        )
    return 0


# --------------------------------------------------------------------------- evaluate
def _read_texts(path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    """Lines of a text file, or the summary column (and controls) of a generation CSV."""
    from mred.data import read_generation_csv, read_lines

    if path.suffix == ".csv":
        examples = read_generation_csv(path)
        return [e.summary for e in examples], [e.control for e in examples]
    return read_lines(path), []


def _run_evaluate(args: argparse.Namespace) -> int:
    from mred.rouge import corpus_rouge

    predictions, _ = _read_texts(args.pred)
    references, controls = _read_texts(args.ref)
    if len(predictions) != len(references):
        raise UserError(
            f"{args.pred} has {len(predictions)} lines but {args.ref} has {len(references)}; "
            f"they must align (one text per line)"
        )
    try:
        result: dict[str, Any] = dict(corpus_rouge(predictions, references, backend=args.backend))
    except ValueError as error:
        raise UserError(str(error)) from None
    print(
        f"ROUGE-1 {result['rouge1']:.2f}  ROUGE-2 {result['rouge2']:.2f}  "
        f"ROUGE-L {result['rougeL']:.2f}  (F1 x 100, stemmed, n = {result['n']})"
    )
    if args.classifier is not None:
        if args.control is not None:
            from mred.data import read_generation_csv

            controls = [e.control for e in read_generation_csv(args.control)]
        if len(controls) != len(predictions) or not all(controls):
            raise UserError(
                "control accuracy needs one control sequence per prediction: pass --ref or "
                "--control as a controlled generation CSV"
            )
        from mred.classify import SentenceClassifier
        from mred.data import split_sentences
        from mred.metrics import control_accuracy

        classifier = SentenceClassifier.load(args.classifier)
        produced = classifier.predict([split_sentences(p) for p in predictions])
        result["control"] = control_accuracy(controls, produced)
        c = result["control"]
        print(
            f"control: exact structure {c['exact_match']:.2f}%, sentence accuracy "
            f"{c['sentence_accuracy']:.2f}%, normalised edit distance {c['edit_distance']:.3f}"
        )
    if args.json:
        write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- generator
def _run_train_generator(args: argparse.Namespace) -> int:
    from mred.data import read_generation_csv
    from mred.generate import GeneratorConfig, GeneratorTrainConfig, train_generator

    examples = read_generation_csv(args.input)[: args.limit]
    try:
        config = GeneratorConfig(
            model=args.model,
            max_source_length=args.max_source_length,
            max_target_length=args.max_target_length,
        )
        train_config = GeneratorTrainConfig(
            out_dir=args.out,
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            resume=args.resume,
            save_every=args.save_every,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    result = train_generator(examples, config, train_config, show_progress=_show_progress())
    print(
        f"trained {result['steps']} steps on {len(examples)} rows: loss "
        f"{result['first_loss']:.3f} -> {result['last_loss']:.3f}; model in {args.out}"
    )
    if args.json:
        write_json(args.json, result)
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from mred.data import read_generation_csv
    from mred.generate import Generator

    examples = read_generation_csv(args.input)[: args.limit]
    generator = Generator.load(args.model)
    outputs = generator.generate(
        [e.text for e in examples],
        num_beams=args.num_beams,
        min_length=args.min_length,
        max_length=args.max_length,
    )
    _write_lines(args.out, outputs)
    print(f"wrote {len(outputs)} generated summaries to {args.out}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mred`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MReD meta-review tools: data statistics, sentence classifier, "
        "controllable extractive/abstractive summarisation, ROUGE and control accuracy.",
    )
    add_version_argument(parser, "mred")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    stats = commands.add_parser("stats", help="count meta-reviews, sentences and labels per split")
    stats.add_argument("directory", type=Path, help="an MReD release directory (complete or not)")
    add_json_argument(stats)

    train = commands.add_parser(
        "train-classifier", help="train the sentence classifier (encoder -> BiLSTM -> CRF)"
    )
    train.add_argument("--data", type=Path, required=True, help="MReD release directory")
    train.add_argument(
        "--model",
        default="bow",
        help="'bow' (bag of words, fast), 'transformer' (tiny BERT from a config) or a local "
        "transformers model directory (never downloaded); default bow",
    )
    train.add_argument("--out", type=Path, required=True, help="output classifier directory")
    train.add_argument("--epochs", type=positive_int, default=10, help="default: 10")
    train.add_argument("--patience", type=positive_int, default=3, help="early stop (3 epochs)")
    train.add_argument(
        "--lr", type=positive_float, default=None, help="AdamW lr (bow 2e-3, tiny 1e-3, path 2e-5)"
    )
    train.add_argument("--seed", type=int, default=42, help="default: 42 (upstream)")
    train.add_argument("--max-length", type=positive_int, default=64, help="tokens per sentence")
    train.add_argument(
        "--pooling", choices=("cls", "mean"), default="cls", help="transformer sentence vector"
    )
    train.add_argument("--max-train-docs", type=positive_int, default=None)
    train.add_argument("--no-crf", action="store_true", help="softmax per sentence, no CRF")
    train.add_argument(
        "--freeze-encoder", action="store_true", help="transformer fixed, sentence vectors cached"
    )
    train.add_argument(
        "--train-on-val",
        action="store_true",
        help="add val to the full train split (val no longer held out)",
    )
    train.add_argument(
        "--hold-out-val",
        action="store_true",
        help="without the full train split, train on the gold subsets only and keep val for "
        "evaluation (by default val is added to them, as nothing else is labelled)",
    )
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    train.add_argument("--threads", type=positive_int, default=None, help="torch threads (1)")
    add_json_argument(train)

    classify = commands.add_parser("classify", help="label sentences (and score labelled input)")
    classify.add_argument("--classifier", type=Path, required=True, help="trained classifier dir")
    classify.add_argument(
        "--input",
        type=Path,
        required=True,
        help="labelled TSV (paper_id, sentence, label: scored) or text, one document per line",
    )
    classify.add_argument("--out", type=Path, default=None, help="write predictions as TSV")
    add_json_argument(classify)

    summarize = commands.add_parser("summarize", help="extractive LexRank/TextRank/MMR summaries")
    summarize.add_argument("--method", choices=("lexrank", "textrank", "mmr"), required=True)
    summarize.add_argument(
        "--controlled", action="store_true", help="follow each row's control sequence"
    )
    summarize.add_argument("--classifier", type=Path, default=None, help="labels source sentences")
    summarize.add_argument("--input", type=Path, required=True, help="generation CSV text,summary")
    summarize.add_argument("--out", type=Path, required=True, help="one summary per line")
    summarize.add_argument("--limit", type=positive_int, default=None, help="first N rows only")
    add_json_argument(summarize)

    evaluate = commands.add_parser("evaluate", help="ROUGE-1/2/L F1 x 100 (+ control accuracy)")
    evaluate.add_argument("--pred", type=Path, required=True, help="predictions, one per line")
    evaluate.add_argument(
        "--ref", type=Path, required=True, help="references, one per line (or a generation CSV)"
    )
    evaluate.add_argument(
        "--backend", choices=("ours", "rouge-score"), default="ours", help="ROUGE implementation"
    )
    evaluate.add_argument(
        "--classifier", type=Path, default=None, help="also measure control accuracy"
    )
    evaluate.add_argument(
        "--control", type=Path, default=None, help="controlled CSV holding the control sequences"
    )
    add_json_argument(evaluate)

    gen = commands.add_parser("train-generator", help="fine-tune BART with the control prefix")
    gen.add_argument("--input", type=Path, required=True, help="generation CSV (train rows)")
    gen.add_argument("--out", type=Path, required=True, help="output model directory")
    gen.add_argument(
        "--model", default="tiny", help="'tiny' (BartConfig, own tokenizer) or a local BART dir"
    )
    gen.add_argument("--steps", type=positive_int, default=200)
    gen.add_argument("--batch-size", type=positive_int, default=4)
    gen.add_argument("--lr", type=positive_float, default=1e-3)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--max-source-length", type=positive_int, default=1024)
    gen.add_argument("--max-target-length", type=positive_int, default=400)
    gen.add_argument("--save-every", type=positive_int, default=50, help="checkpoint period")
    gen.add_argument("--limit", type=positive_int, default=None, help="first N rows only")
    gen.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    add_json_argument(gen)

    generate = commands.add_parser("generate", help="generate with a trained BART")
    generate.add_argument("--model", type=Path, required=True, help="train-generator output")
    generate.add_argument("--input", type=Path, required=True, help="generation CSV")
    generate.add_argument("--out", type=Path, required=True, help="one summary per line")
    generate.add_argument("--num-beams", type=positive_int, default=4)
    generate.add_argument("--min-length", type=int, default=20, help="tokens (upstream 20)")
    generate.add_argument("--max-length", type=positive_int, default=400, help="(upstream 400)")
    generate.add_argument("--limit", type=positive_int, default=None)
    return parser


_COMMANDS = {
    "stats": _run_stats,
    "train-classifier": _run_train_classifier,
    "classify": _run_classify,
    "summarize": _run_summarize,
    "evaluate": _run_evaluate,
    "train-generator": _run_train_generator,
    "generate": _run_generate,
}


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mred`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if os.environ.get("MRED_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["MRED_THREADS"]))
    return _COMMANDS[args.command](args)
