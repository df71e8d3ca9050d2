"""ptrain-moe tests run single-threaded: small ops on a shared 2-core CPU are far faster so."""

import torch

torch.set_num_threads(1)
