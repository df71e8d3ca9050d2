"""One torch thread: the test machines are small and shared, and two OpenMP threads on a busy
2-core machine run the tiny test models several times slower than one."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
