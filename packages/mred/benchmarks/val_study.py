"""The goals on the shared val rows: classifier accuracy and extractive ROUGE / control accuracy.

    python packages/mred/benchmarks/val_study.py --data ../shared/data/mred \\
        --classifier runs/clf-bow --out packages/mred/benchmarks/results

* ``classifier_val.json``: accuracy / macro-F1 of the classifier in ``--classifier`` (trained by
  ``mred train-classifier --data DIR --model bow --hold-out-val --out runs/clf-bow`` on the
  gold train subsets; val is held out) on the 709 val meta-reviews (4,272 sentences).
* ``extractive_val.json``: ROUGE-1/2/L (our implementation; rouge-score cross-check on one
  system when installed) of uncontrolled and controlled LexRank / TextRank / MMR on the 665
  filtered val rows (``val_longest_sent-ctrl.csv``: longest-review source, gold sent-ctrl
  control), plus control accuracy: the classifier's labels of the output sentences against the
  requested sequence. The paper's numbers (in ``paper.json``) are on the 674 *test* rows with
  the ``concat``-style sources of the complete release, which the shared copy lacks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N rows only (smoke runs)")
    parser.add_argument("--methods", default="lexrank,textrank,mmr")
    parser.add_argument("--name", default=None, help="classifier result name (default: kind)")
    parser.add_argument("--classifier-only", action="store_true", help="skip the extractive study")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from mred.classify import SentenceClassifier, evaluate_classifier
    from mred.data import Release, read_generation_csv
    from mred.metrics import control_accuracy
    from mred.pipeline import summarize_examples
    from mred.rouge import corpus_rouge
    from ptrain.core.bench import environment_info
    from ptrain.core.cli import write_json

    arguments = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python packages/mred/benchmarks/val_study.py", *arguments])
    classifier = SentenceClassifier.load(args.classifier)
    release = Release(args.data)
    val, _ = release.labeled_documents("val")
    metrics = evaluate_classifier(classifier, val)
    args.out.mkdir(parents=True, exist_ok=True)
    kind = args.name or (
        classifier.config.model if classifier.config.kind != "pretrained" else "pretrained"
    )
    info = classifier.info
    write_json(
        args.out / f"classifier_{kind}_val.json",
        {
            "metrics": [
                {
                    "name": f"classifier_{kind}_val",
                    "values": {
                        "accuracy": metrics["accuracy"],
                        "macro_f1": metrics["macro_f1"],
                        "sentences": metrics["sentences"],
                    },
                }
            ],
            "per_label_f1": {k: v["f1"] for k, v in metrics["per_label"].items()},
            "trained_on": {
                # relative to the release directory: no machine path in the committed JSON
                "files": [
                    str(Path(f).resolve().relative_to(Path(args.data).resolve()))
                    if Path(f).resolve().is_relative_to(Path(args.data).resolve())
                    else f
                    for f in info.get("train_files") or []
                ],
                "meta_reviews": info.get("train_meta_reviews"),
                "sentences": info.get("train_sentences"),
                "notes": info.get("notes"),
                "epoch": info.get("epoch"),
            },
            "meta": {"command": command},
            "environment": environment_info(),
        },
    )
    print(
        f"classifier on val: accuracy {metrics['accuracy']:.2f}, macro-F1 {metrics['macro_f1']:.2f}"
    )

    if args.classifier_only:
        return 0
    csv_path = release.generation_csv("val", "longest", "sent-ctrl")
    examples = read_generation_csv(csv_path)[: args.limit]
    references = [e.summary for e in examples]
    controls = [e.control for e in examples]
    entries = []
    cross_check = {}
    for method in args.methods.split(","):
        for controlled in (False, True):
            start = time.perf_counter()
            summaries = summarize_examples(
                examples, method, classifier=classifier, controlled=controlled
            )
            texts = [s.text for s in summaries]
            scores = corpus_rouge(texts, references)
            produced = classifier.predict([list(s.sentences) for s in summaries])
            control = control_accuracy(controls, produced)
            name = f"{method}{'_ctrl' if controlled else ''}_val"
            values = {
                "rouge1": scores["rouge1"],
                "rouge2": scores["rouge2"],
                "rougeL": scores["rougeL"],
                "control_exact": control["exact_match"],
                "control_sentence_acc": control["sentence_accuracy"],
            }
            entries.append({"name": name, "values": values})
            print(
                f"{name}: R1 {values['rouge1']:.2f} R2 {values['rouge2']:.2f} "
                f"RL {values['rougeL']:.2f}  control exact {values['control_exact']:.1f}% "
                f"sentence {values['control_sentence_acc']:.1f}%  "
                f"({time.perf_counter() - start:.0f} s)"
            )
            if method == "textrank" and controlled:
                try:
                    reference = corpus_rouge(texts, references, backend="rouge-score")
                except ValueError:
                    reference = None
                if reference is not None:
                    cross_check = {
                        "system": name,
                        "ours": {k: scores[k] for k in ("rouge1", "rouge2", "rougeL")},
                        "rouge_score": {k: reference[k] for k in ("rouge1", "rouge2", "rougeL")},
                    }
    write_json(
        args.out / "extractive_val.json",
        {
            "metrics": entries,
            "rows": len(examples),
            "input": str(csv_path.relative_to(release.root)),
            "rouge_cross_check": cross_check,
            "meta": {"command": command},
            "environment": environment_info(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
