"""LAMB step time vs torch.optim.AdamW(foreach=True) on a stack of Linear layers.

    python benchmarks/bench_lamb.py [--quick] [--json PATH] [--repeats N]

Two copies of the same fp32 model (12 × Linear(2048, 2048) ≈ 50M parameters; ``--quick``:
5 × Linear(1024, 1024) ≈ 5M), gradients filled with random values once. ``compare`` times one
``LAMB.step()`` against one ``AdamW.step()`` (same lr, betas, eps and weight decay), interleaved,
on 1 thread. LAMB does AdamW's work plus two norms per tensor and the trust-ratio scaling, so
the goal is a ratio ≤ 1.5×.
"""

from __future__ import annotations

import torch
from torch import nn

from ptrain.core.bench import bench_argument_parser, compare, write_json
from ptrain.core.optim import LAMB

GOAL = 1.5
FULL = {"layers": 12, "width": 2048}  # 12·(2048² + 2048) = 50.36M parameters
QUICK = {"layers": 5, "width": 1024}  # 5·(1024² + 1024) = 5.25M parameters


def build_model(layers: int, width: int, seed: int = 0) -> nn.Module:
    """A stack of ``layers`` Linear(width, width) layers with random gradients already set.

    Args:
        layers: number of Linear layers.
        width: input and output features of every layer.
        seed: seeds the weights and the gradients.

    Returns:
        The model, fp32, on CPU, with ``.grad`` filled for every parameter.
    """
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            param.grad = torch.randn(param.shape, generator=generator)
    return model


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one summary line.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code (0).
    """
    parser = bench_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    hparams = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01}

    lamb_model = build_model(**shape)
    adamw_model = build_model(**shape)
    lamb = LAMB(lamb_model.parameters(), **hparams)
    adamw = torch.optim.AdamW(adamw_model.parameters(), **hparams, foreach=True)
    parameters = sum(p.numel() for p in lamb_model.parameters())

    result = compare(
        lamb.step,
        adamw.step,
        name="lamb_step_vs_adamw",
        repeats=args.repeats,
        warmup=1,
        number=1,
        threads=1,
        goal=GOAL,
    )
    print(f"{parameters / 1e6:.2f}M fp32 parameters in {shape['layers']} Linear layers")
    print(result.summary())
    if args.json:
        write_json(
            args.json,
            [result],
            meta={
                "benchmark": "bench_lamb",
                "parameters": parameters,
                "layers": shape["layers"],
                "width": shape["width"],
                "dtype": "float32",
                "hparams": {
                    key: list(v) if isinstance(v, tuple) else v for key, v in hparams.items()
                },
                "quick": args.quick,
                "command": "python packages/ptrain-core/benchmarks/bench_lamb.py"
                + (" --quick" if args.quick else ""),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
