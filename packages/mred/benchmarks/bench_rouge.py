"""Our ROUGE-1/2/L (stemmed) vs rouge-score's RougeScorer on the same meta-review-sized texts.

    python packages/mred/benchmarks/bench_rouge.py [--quick] [--json PATH] [--repeats N]

200 prediction/reference pairs (``--quick``: 40) of ~130 words drawn from a fixed vocabulary
with inflected forms (so stemming matters), seeded. Both compute per-line F1 and the mean; the
script first checks the two agree to 1e-9. The ratio is ours / rouge-score (lower is better;
goal ≤ 1: the own implementation must not be slower than the reference it replaces).
"""

from __future__ import annotations

import random
import sys

from mred.rouge import corpus_rouge
from ptrain.core.bench import bench_argument_parser, compare, write_json

WORDS = [
    "the",
    "paper",
    "proposes",
    "a",
    "novel",
    "method",
    "for",
    "training",
    "deep",
    "networks",
    "reviewers",
    "agreed",
    "that",
    "results",
    "are",
    "strong",
    "but",
    "experiments",
    "limited",
    "authors",
    "addressed",
    "concerns",
    "rebuttal",
    "decision",
    "accept",
    "reject",
    "generalization",
    "generalizes",
    "generalizing",
    "models",
    "modeling",
    "modelled",
    "evaluation",
    "evaluations",
    "evaluated",
    "baselines",
    "baseline",
    "comparisons",
    "compared",
    "theoretical",
    "theory",
    "analysis",
    "analyses",
    "analyzing",
    "clearly",
    "clarity",
    "writing",
    "written",
    "improvements",
    "improved",
    "improving",
    "contribution",
    "contributions",
    "contributes",
    "significant",
    "significance",
    "interesting",
    "interest",
]


def _texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(90, 170))) + "." for _ in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = bench_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    try:
        import rouge_score  # noqa: F401
    except ImportError:
        print("rouge-score is not installed: pip install 'mred[rouge]'", file=sys.stderr)
        return 2
    count = 40 if args.quick else 200
    predictions, references = _texts(count, 1), _texts(count, 2)
    ours = corpus_rouge(predictions, references)
    theirs = corpus_rouge(predictions, references, backend="rouge-score")
    for key in ("rouge1", "rouge2", "rougeL"):
        if abs(float(ours[key]) - float(theirs[key])) > 1e-9:
            raise SystemExit(f"{key}: ours {ours[key]} != rouge-score {theirs[key]}")
    result = compare(
        lambda: corpus_rouge(predictions, references),
        lambda: corpus_rouge(predictions, references, backend="rouge-score"),
        name="rouge_ours_vs_rouge_score",
        repeats=args.repeats,
        goal=1.0,
    )
    print(f"{count} pairs of ~130 words; scores agree (R1 {ours['rouge1']:.4f})")
    print(result.summary())
    if args.json:
        command = "python packages/mred/benchmarks/bench_rouge.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        write_json(args.json, [result], meta={"pairs": count, "command": command.strip()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
