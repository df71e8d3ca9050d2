"""Train the reference GPT under data, tensor and sequence parallelism (CPU/gloo or GPU/nccl).

    torchrun --nproc-per-node 4 examples/train_gpt.py --dp 2 --tp 2 --tp-mode 1d
    torchrun --nproc-per-node 4 examples/train_gpt.py --tp 4 --tp-mode 2d --zero 3
    python examples/train_gpt.py --steps 10          # one process: the reference losses

All flags: ``python examples/train_gpt.py --help``; the code is ``ptrain.core.train_gpt``.
"""

import sys

from ptrain.core.train_gpt import main

if __name__ == "__main__":
    sys.exit(main())
