"""CUDA paths (run by `nox -s gpu` on a machine with a GPU; deselected elsewhere)."""

from __future__ import annotations

import pytest
import torch

from ptrain.core.optim import LAMB, LARS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("optimizer_class", [LAMB, LARS])
def test_cuda_step_matches_cpu_step(optimizer_class: type) -> None:
    torch.manual_seed(0)
    cpu = [torch.randn(8, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    gpu = [p.clone().cuda() for p in cpu]
    for params in (cpu, gpu):
        for p in params:
            p.requires_grad_()
    optimizers = [optimizer_class(params, lr=0.1, weight_decay=0.01) for params in (cpu, gpu)]
    for step in range(5):
        grads = [torch.randn_like(p, device="cpu").mul(step + 1) for p in cpu]
        for params, optimizer in zip((cpu, gpu), optimizers, strict=True):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(p.device)
            optimizer.step()
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-10, atol=1e-12)


def test_init_distributed_picks_nccl_and_the_local_gpu(monkeypatch) -> None:
    from ptrain.core import comm
    from ptrain.core.dist import destroy_distributed, init_distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PTRAIN_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    try:
        info = init_distributed()
        assert info.backend == "nccl"
        assert info.device.type == "cuda"
        x = torch.arange(4.0, device=info.device, requires_grad=True)
        comm.all_gather(x).sum().backward()
        torch.testing.assert_close(x.grad, torch.ones(4, device=info.device))
    finally:
        destroy_distributed()
