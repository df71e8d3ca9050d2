"""A tour of ptrain: one short step per package, each doing that package's main job.

    nox -s demo               # installs every package, then runs this file
    python examples/tour.py   # with the packages already installed

Each step prints what it did. A step whose package is not installed is skipped with a note, so
the tour also runs when only some packages are installed. The whole tour must stay under three
minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

STEPS: list[tuple[str, str, Callable[[], None]]] = []


def step(package: str, module: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Register a tour step for ``package`` (skipped when ``module`` is not importable)."""

    def register(function: Callable[[], None]) -> Callable[[], None]:
        STEPS.append((package, module, function))
        return function

    return register


# --------------------------------------------------------------------------- ptrain-core
def _core_data_parallel_rank(rank: int, world_size: int, steps: int) -> dict[str, object]:
    """One rank of a data-parallel LAMB run: shard the batch, average grads, step."""
    import torch

    from ptrain.core import comm
    from ptrain.core.optim import LAMB, warmup_cosine_schedule

    torch.manual_seed(0)  # same initial model and data on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 64), torch.nn.GELU(),
        torch.nn.Linear(64, 1),
    )  # fmt: skip
    inputs = torch.randn(1024, 16)
    with torch.no_grad():  # a smooth non-linear target the MLP can learn
        targets = torch.sin(inputs @ torch.randn(16, 1) * 0.5) + 0.1 * inputs[:, :1]
    optimizer = LAMB(model.parameters(), lr=1e-1, weight_decay=1e-2)
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=5, total_steps=steps)
    generator = torch.Generator().manual_seed(1234)
    losses = []
    with comm.CommTracker() as tracker:
        for _ in range(steps):
            batch = torch.randint(0, len(inputs), (128,), generator=generator)  # global batch
            local = batch.chunk(world_size)[rank]  # this rank's share
            loss = torch.nn.functional.mse_loss(model(inputs[local]), targets[local])
            optimizer.zero_grad()
            loss.backward()
            grads = [p.grad for p in model.parameters()]
            flat = comm.all_reduce(torch.cat([g.reshape(-1) for g in grads]), op="avg")
            for grad, averaged in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                grad.copy_(averaged.view_as(grad))
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # loss on the whole data set (every rank has the same model)
                losses.append(float(torch.nn.functional.mse_loss(model(inputs), targets)))
    return {"losses": losses, "bytes": tracker.as_dict()["all_reduce"]}


@step("ptrain-core", "ptrain.core")
def core_step() -> None:
    """2-rank data-parallel training of a small MLP with LAMB through the fork harness."""
    from ptrain.core.testing import run_distributed

    steps = 60
    results = run_distributed(_core_data_parallel_rank, 2, steps, timeout=120)
    losses = results[0]["losses"]
    assert losses == results[1]["losses"], "data-parallel ranks disagree"
    for index in [0, 9, 19, 29, 39, 49, steps - 1]:
        print(f"  step {index + 1:>3}  loss {losses[index]:.4f}")
    traffic = results[0]["bytes"]
    print(
        f"  2 ranks x {steps} steps: {traffic['calls']} all-reduces, "
        f"{traffic['bytes_sent'] / 1e6:.2f} MB sent per rank (logical, ring model)"
    )
    single = run_distributed(_core_data_parallel_rank, 1, steps, timeout=120)[0]["losses"]
    gap = max(abs(a - b) for a, b in zip(losses, single, strict=True))
    print(f"  same run on 1 process with the whole batch: max |loss difference| = {gap:.1e}")
    if gap > 1e-4:
        raise SystemExit(f"ptrain-core: data-parallel run differs from single-process ({gap:.1e})")
    if not losses[-1] < 0.5 * losses[0]:
        raise SystemExit(f"ptrain-core: loss did not fall ({losses[0]:.4f} -> {losses[-1]:.4f})")
    print(f"  loss fell {losses[0]:.4f} -> {losses[-1]:.4f}")


# --------------------------------------------------------------------------- ptrain-core (parallel)
def _core_parallel_rank(rank: int, world_size: int, steps: int) -> dict[str, list[float]]:
    """One of 4 ranks: the debug GPT under dp2 x tp2 (1D), then under 2D tensor parallelism."""
    from ptrain.core.dist import ParallelDims
    from ptrain.core.train_gpt import TrainSettings, train_gpt

    settings = TrainSettings(steps=steps, batch_size=8, lr=1e-2)
    layouts = {
        "dp2 x tp2 (1D)": (ParallelDims(dp_shard=2, tp=2, world_size=world_size), {"tp": "1d"}),
        "tp4 (2D SUMMA)": (ParallelDims(dp_shard=1, tp=4, world_size=world_size), {"tp": "2d"}),
    }
    return {name: train_gpt(dims, plan, settings) for name, (dims, plan) in layouts.items()}


def _core_single_rank(rank: int, world_size: int, steps: int) -> list[float]:
    from ptrain.core.dist import ParallelDims
    from ptrain.core.train_gpt import TrainSettings, train_gpt

    return train_gpt(
        ParallelDims(world_size=1), {}, TrainSettings(steps=steps, batch_size=8, lr=1e-2)
    )


@step("ptrain-core", "ptrain.core.parallel")
def core_parallel_step() -> None:
    """The debug GPT trained on 4 forked ranks under two parallel layouts vs one process."""
    from ptrain.core.testing import run_distributed

    steps = 5
    parallel = run_distributed(_core_parallel_rank, 4, steps, timeout=120)[0]
    single = run_distributed(_core_single_rank, 1, steps, timeout=120)[0]
    names = list(parallel)
    print("  step  single process  " + "  ".join(f"{name:>15}" for name in names))
    for index in range(steps):
        row = "  ".join(f"{parallel[name][index]:>15.5f}" for name in names)
        print(f"  {index + 1:>4}  {single[index]:>14.5f}  {row}")
    gap = max(abs(a - b) for name in names for a, b in zip(parallel[name], single, strict=True))
    print(f"  max |loss difference| to single process: {gap:.1e}")
    if gap > 1e-4:
        raise SystemExit(
            f"ptrain-core: parallel GPT training differs from single process ({gap:.1e})"
        )
    if not single[-1] < single[0]:
        raise SystemExit(f"ptrain-core: loss did not fall ({single[0]:.4f} -> {single[-1]:.4f})")


# --------------------------------------------------------------------------- ptrain-hetmem
@step("ptrain-hetmem", "ptrain.hetmem")
def hetmem_step() -> None:
    """Train a debug GPT whose model data is larger than the device budget: chunks move."""
    import torch

    from ptrain.core.models.gpt import GPT, GPTConfig, gpt_loss, synthetic_batch
    from ptrain.hetmem import AdamConfig, HetMemConfig, initialize

    config = GPTConfig.debug(n_layers=4)  # dim 64, vocab 128, seq 32
    torch.manual_seed(0)
    model = GPT(config)
    reference = GPT(config)
    reference.load_state_dict(model.state_dict())
    model_data = 16 * sum(p.numel() for p in model.parameters())  # fp32: param, grad, m, v
    budget = model_data * 8 // 10  # below the model data (and activations need room)
    engine = initialize(
        model,
        optimizer=AdamConfig(lr=3e-3),
        config=HetMemConfig(device_budget=budget, chunk_size="auto", policy="opt"),
        loss_fn=gpt_loss,
    )
    adam = torch.optim.Adam(reference.parameters(), lr=3e-3, foreach=False)
    losses = []
    for step_index in range(5):
        tokens, targets = synthetic_batch(config, 4, seed=step_index)
        loss = engine(tokens, targets)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        plain = gpt_loss(reference(tokens), targets)  # plain torch on the same batch
        adam.zero_grad()
        plain.backward()
        adam.step()
        if plain.item() != losses[-1]:
            raise SystemExit("ptrain-hetmem: loss differs from plain torch Adam")
    report = engine.memory_report()
    print(
        f"  model data {model_data / 2**20:.1f} MiB in {report['chunk_groups']} chunk groups of "
        f"{report['chunk_size']:,} elements; device budget {budget / 2**20:.1f} MiB"
    )
    print(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f} (bitwise equal to torch.optim.Adam)")
    for name, tier in report["tiers"].items():
        cap = "unbounded" if tier["capacity"] is None else f"{tier['capacity'] / 2**20:.1f} MiB"
        moved_in, moved_out = tier["bytes_in"] / 2**20, tier["bytes_out"] / 2**20
        print(
            f"  {name:>6} tier: peak {tier['peak'] / 2**20:5.1f} MiB of {cap:>9}, "
            f"moved in {moved_in:6.1f} MiB, out {moved_out:6.1f} MiB"
        )
    steady = engine.iteration_traffic[-1] / 2**20
    print(f"  steady-state traffic: {steady:.1f} MiB per iteration (OPT eviction, memory tide)")
    fast = engine.tiers[0]
    engine.close()
    if fast.capacity is not None and fast.peak > fast.capacity:
        raise SystemExit("ptrain-hetmem: the device tier exceeded its budget")
    if not fast.bytes_in:
        raise SystemExit("ptrain-hetmem: nothing moved; the budget did not bind")


# --------------------------------------------------------------------------- ptrain-moe
def _moe_pretrain_rank(rank: int, world_size: int, out_dir: str) -> dict[str, object]:
    """One rank of a MoCo v3 pre-training run with the experts split over 2 ranks."""
    import torch
    import torch.distributed as dist

    from ptrain.moe.data import TensorImageDataset
    from ptrain.moe.train import PretrainConfig, pretrain

    generator = torch.Generator().manual_seed(0)  # 8x8 images: a horizontal or vertical bar
    labels = torch.randint(0, 2, (256,), generator=generator)
    where = torch.randint(1, 7, (256,), generator=generator)
    images = 0.1 * torch.rand(256, 1, 8, 8, generator=generator)
    rows = torch.arange(256)
    images[rows[labels == 0], 0, where[labels == 0], 1:7] = 1.0
    images[rows[labels == 1], 0, 1:7, where[labels == 1]] = 1.0
    data = TensorImageDataset(images, labels)
    config = PretrainConfig(
        model="debug", overrides={"patch_size": 2, "dim": 16}, steps=12, batch_size=64,
        lr=5e-3, warmup_steps=2, checkpoint_every=0, head_hidden=64, head_out=32,
    )  # fmt: skip
    result = pretrain(config, data, out_dir, group=dist.group.WORLD)
    return {"losses": result["losses"], "backbone": result["backbone"]}


@step("ptrain-moe", "ptrain.moe")
def moe_step() -> None:
    """Pre-train a debug Sparse-MLP with MoCo v3 for a few steps, experts split over 2 ranks."""
    import tempfile

    from ptrain.core.testing import run_distributed
    from ptrain.moe import MoE, load_model

    with tempfile.TemporaryDirectory() as out_dir:
        results = run_distributed(_moe_pretrain_rank, 2, out_dir, timeout=120)
        losses = results[0]["losses"]
        if losses != results[1]["losses"]:
            raise SystemExit("ptrain-moe: expert-parallel ranks disagree on the loss")
        for index in (0, 3, 7, len(losses) - 1):
            print(f"  step {index + 1:>3}  MoCo v3 loss {losses[index]:.4f}")
        backbone = load_model(results[0]["backbone"])  # rank 0 gathered every expert
        layers = [m for m in backbone.modules() if isinstance(m, MoE)]
        print(
            f"  {len(layers)} MoE layers (MoE_s top-1, MoE_c top-2), "
            f"{layers[0].num_experts} experts each, 2 per rank during training; the saved "
            f"backbone reloads on 1 process with all {layers[0].num_experts}"
        )
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    if not last < first:
        raise SystemExit(f"ptrain-moe: loss did not fall ({first:.4f} -> {last:.4f})")
    print(f"  mean loss of the first 3 steps {first:.4f} -> last 3 steps {last:.4f}")


# --------------------------------------------------------------------------- keypointnet
@step("keypointnet", "keypointnet")
def keypointnet_step() -> None:
    """Synthesise chairs in KeypointNet's format, train PointNet, evaluate PCK, project a view."""
    import math
    import tempfile

    import numpy as np

    from keypointnet.data import KeypointNetDirectory
    from keypointnet.projection import look_at_camera, project_keypoints
    from keypointnet.synth import synthesize
    from keypointnet.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as root:
        models = synthesize("chair", 20, 0, root, num_points=512)
        print(f"  wrote {len(models)} synthetic chairs (annotations JSON, PCD, PLY, splits)")
        result = train(
            TrainConfig(
                data_dir=root,
                category="chair",
                task="correspondence",
                out_dir=f"{root}/run",
                epochs=20,
                batch_size=4,
                num_points=256,
                eval_split="test",
            ),
            progress=False,
        )
        losses = result["losses"]
        print(f"  PointNet correspondence: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        for key in ("0.05", "0.10"):
            print(
                f"  test PCK@{key}: {result['pck'][key]:.3f} "
                f"(semantic-id prior baseline {result['prior_pck'][key]:.3f})"
            )
        data = KeypointNetDirectory(root)
        chair = data.models("chair", split="test")[0]
        mesh = data.load_mesh(chair)
        camera = look_at_camera(math.radians(210), math.radians(65), 1.1, width=256)
        xyz = np.array([kp.xyz for kp in chair.keypoints])
        view = project_keypoints(camera, xyz, mesh=(mesh.vertices, mesh.faces))
        print(
            f"  projected {len(xyz)} keypoints of {chair.key} onto a 256 px view: "
            f"{int(view.visible.sum())} visible, {int((~view.visible).sum())} occluded by the mesh"
        )
        if not losses[-1] < losses[0]:
            raise SystemExit("keypointnet: training loss did not fall")


# --------------------------------------------------------------------------- infjesp
SHARED_DPOMDP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dpomdp"

DEC_TIGER = """\
# Dec-Tiger (Nair et al. 2003), the MADP encoding
agents: 2
discount: 0.9
values: reward
states: tiger-left tiger-right
start:
uniform
actions:
listen open-left open-right
listen open-left open-right
observations:
hear-left hear-right
hear-left hear-right
T: * :
uniform
T: listen listen :
identity
O: * :
uniform
O: listen listen : tiger-left : hear-left hear-left : 0.7225
O: listen listen : tiger-left : hear-left hear-right : 0.1275
O: listen listen : tiger-left : hear-right hear-left : 0.1275
O: listen listen : tiger-left : hear-right hear-right : 0.0225
O: listen listen : tiger-right : hear-right hear-right : 0.7225
O: listen listen : tiger-right : hear-left hear-right : 0.1275
O: listen listen : tiger-right : hear-right hear-left : 0.1275
O: listen listen : tiger-right : hear-left hear-left : 0.0225
R: listen listen : * : * : * : -2
R: open-left open-left : tiger-left : * : * : -50
R: open-right open-right : tiger-right : * : * : -50
R: open-left open-left : tiger-right : * : * : 20
R: open-right open-right : tiger-left : * : * : 20
R: open-left open-right : * : * : * : -100
R: open-right open-left : * : * : * : -100
R: open-left listen : tiger-left : * : * : -101
R: listen open-right : tiger-left : * : * : 9
R: listen open-left : tiger-left : * : * : -101
R: open-right listen : tiger-left : * : * : 9
R: open-left listen : tiger-right : * : * : 9
R: listen open-right : tiger-right : * : * : -101
R: listen open-left : tiger-right : * : * : 9
R: open-right listen : tiger-right : * : * : -101
"""


@step("infjesp", "infjesp")
def infjesp_step() -> None:
    """Parse Dec-Tiger, bound it, evaluate controllers exactly, solve it with Inf-JESP."""
    import numpy as np

    from infjesp import (
        FSC,
        best_constant_joint_action,
        evaluate_joint,
        parse_dpomdp,
        qmdp_value,
        solve,
    )
    from infjesp.finite import brute_force_optimum
    from infjesp.fsc import simulate_joint

    shared = SHARED_DPOMDP / "dectiger.dpomdp"
    if shared.is_file():
        text, source = shared.read_text(), str(shared)
    else:
        text, source = DEC_TIGER, "<built-in Dec-Tiger>"
    model = parse_dpomdp(text, source).with_discount(0.9)
    best, _ = best_constant_joint_action(model)
    print(
        f"  {source}: {model.num_states} states, {model.num_joint_actions} joint actions; "
        f"at gamma 0.9 the optimal joint FSC is worth between {best:.1f} (best constant) "
        f"and {qmdp_value(model):.1f} (QMDP)"
    )
    rng = np.random.default_rng(0)
    fscs = [FSC.random(3, 2, 4, rng), FSC.random(3, 2, 4, rng)]
    exact = evaluate_joint(model, fscs).value
    mean, ci95 = simulate_joint(model, fscs, 20_000, None, rng)
    print(
        f"  random 4-node controllers: exact value {exact:.3f}, Monte-Carlo {mean:.3f} ± {ci95:.3f}"
    )
    optimum, _ = brute_force_optimum(model.with_discount(1.0), 3)
    print(f"  horizon 3, undiscounted: brute-force optimum {optimum:.6f} (published 5.190812)")
    result = solve(model, restarts=1, seed=0, time_limit=15.0)  # restart 0: the periodic init
    print(
        f"  Inf-JESP, 15 s budget: joint FSC worth {result.value:.4f} (exact) with "
        f"{result.fsc_sizes} nodes after {result.iterations} best responses "
        f"(best known ≈ 13.448, FB-HSVI / PBVI-BB)"
    )
    if not best - 1e-9 <= result.value <= qmdp_value(model) + 1e-9:
        raise SystemExit("infjesp: solve returned a value outside its bounds")
    if result.value < 0.99 * 13.448:
        raise SystemExit("infjesp: Dec-Tiger below 99 % of the best-known value")
    if abs(mean - exact) > ci95 + 1e-3:
        raise SystemExit("infjesp: Monte-Carlo disagrees with the exact value")


# --------------------------------------------------------------------------- ones-distill
@step("ones-distill", "ones_distill")
def ones_distill_step() -> None:
    """Gather a small Sparse-MLP classifier's MoE layers into dense FFNs (SVD-KG), then distil."""
    import torch

    from ones_distill import (
        FitConfig,
        GatherConfig,
        SparseMLPClassifier,
        SparseMLPClassifierConfig,
        accuracy,
        find_moe_layers,
        fit,
        gather_model,
        mean_kl,
        parameter_count,
    )
    from ptrain.moe import sparse_mlp_config

    generator = torch.Generator().manual_seed(0)  # 8x8 images: a bar at one of 6 rows/columns
    labels = torch.randint(0, 12, (576,), generator=generator)
    images = 0.3 * torch.rand(576, 1, 8, 8, generator=generator)
    rows = torch.arange(576)
    rows_h, rows_v = rows[labels < 6], rows[labels >= 6]
    images[rows_h, 0, 1 + labels[rows_h], 1:7] = 1.0
    images[rows_v, 0, 1:7, labels[rows_v] - 5] = 1.0
    train_x, train_y, test_x, test_y = images[:384], labels[:384], images[384:], labels[384:]

    torch.manual_seed(0)
    backbone = sparse_mlp_config("debug", image_size=8, patch_size=2, in_channels=1, dim=16)
    teacher = SparseMLPClassifier(
        SparseMLPClassifierConfig(backbone=backbone.to_dict(), num_classes=12)
    )
    fit(teacher, train_x, train_y, FitConfig(epochs=6, batch_size=64, lr=5e-3),
        show_progress=False)  # fmt: skip
    layers = [name for name, _ in find_moe_layers(teacher)]
    student = gather_model(teacher, GatherConfig(method="svd"))  # rank min(D, H) // E
    kl_before = mean_kl(teacher, student, test_x)
    acc_before = accuracy(student, test_x, test_y)
    fit(student, train_x, train_y, FitConfig(epochs=3, batch_size=64, lr=3e-3, temperature=2.0,
        alpha=0.5), teacher=teacher, show_progress=False)  # fmt: skip
    kl_after = mean_kl(teacher, student, test_x)
    print(f"  teacher: Sparse-MLP with MoE layers {layers}, {parameter_count(teacher)} parameters,"
          f" test accuracy {accuracy(teacher, test_x, test_y):.3f}")  # fmt: skip
    print(f"  student (SVD-KG, routers dropped): {parameter_count(student)} parameters")
    print(f"  distillation: KL to teacher {kl_before:.4f} -> {kl_after:.4f}, "
          f"test accuracy {acc_before:.3f} -> {accuracy(student, test_x, test_y):.3f}")  # fmt: skip
    if find_moe_layers(student) or not kl_after < kl_before:
        raise SystemExit("ones-distill: the student kept an MoE layer or KD did not lower the KL")


# --------------------------------------------------------------------------- ptrain-sched
@step("ptrain-sched", "ptrain.sched")
def sched_step() -> None:
    """Simulate ONES (elastic batch size) against Tiresias on a small workload; JCT table."""
    from ptrain.sched.policies import make_policy
    from ptrain.sched.report import format_table
    from ptrain.sched.sim import simulate
    from ptrain.sched.types import ClusterSpec
    from ptrain.sched.workload import synthetic

    # 40 jobs (cifar10, ncf, bert; Pollux application tables) arriving over 2 h on 4 x 4 GPUs.
    jobs = synthetic(40, duration=7200.0, seed=0, applications=("cifar10", "ncf", "bert"))
    cluster = ClusterSpec(nodes=4, gpus_per_node=4)
    results = {n: simulate(jobs, make_policy(n, seed=0), cluster) for n in ("tiresias", "ones")}
    print(format_table([{"policy": n, **r.summary} for n, r in results.items()]))
    batches: dict[int, set[int]] = {}
    for job_id, _, _, _, batch in results["ones"].timeline:
        batches.setdefault(job_id, set()).add(batch)
    resized = sum(len(sizes) > 1 for sizes in batches.values())
    print(f"  ONES changed the batch size (with the GPU count) of {resized} of {len(jobs)} jobs")
    for name, result in results.items():
        if len(result.records) != len(jobs):
            done = len(result.records)
            raise SystemExit(f"ptrain-sched: {name} finished {done}/{len(jobs)} jobs")
    if resized == 0:
        raise SystemExit("ptrain-sched: ONES never resized a job")


# --------------------------------------------------------------------------- contrastive-crop
@step("contrastive-crop", "contrastive_crop")
def contrastive_crop_step() -> None:
    """A few SimCLR steps with ContrastiveCrop on clutter-digits; boxes computed once."""
    import importlib.util
    import math

    if importlib.util.find_spec("sklearn") is None:
        print("  skipped: clutter-digits needs scikit-learn (pip install contrastive-crop[data])")
        return
    import torch

    from contrastive_crop.localization import box_iou
    from contrastive_crop.train import PretrainConfig, load_data, pretrain

    data = load_data("clutter-digits", num_images=256)
    print(
        f"  clutter-digits: {len(data.train)} digits on 32x32 cluttered canvases, true boxes known"
    )
    config = PretrainConfig(
        method="simclr",
        crop="contrastive",
        backbone="tiny",
        epochs=2,
        batch_size=64,
        lr=0.3,
        box_warmup_epochs=1,
        loc_interval=1,
        threshold=0.5,
        knn=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on a busy 2-core machine
    try:
        result = pretrain(config, data)
    finally:
        torch.set_num_threads(threads)
    losses = result["losses"]
    print(
        f"  SimCLR, epoch 1 RandomResizedCrop, epoch 2 ContrastiveCrop: loss per epoch "
        f"{losses[0]:.3f}, {losses[1]:.3f}"
    )
    (update,) = result["box_updates"]
    full_iou = float(
        box_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(256, 4), data.train.boxes).mean()
    )
    print(
        f"  boxes after epoch {update['epoch']}: mean area {update['mean_area']:.2f}, "
        f"IoU with true digit boxes {update['mean_iou']:.3f} (full image: {full_iou:.3f}), "
        f"{update['seconds']:.2f} s"
    )
    if not all(math.isfinite(loss) for loss in losses):
        raise SystemExit("contrastive-crop: a loss is not finite")
    if not update["mean_area"] < 1.0:
        raise SystemExit("contrastive-crop: localisation produced only full-image boxes")


# --------------------------------------------------------------------------- mred
@step("mred", "mred")
def mred_step() -> None:
    """Controlled TextRank on shared MReD val rows: ROUGE and control accuracy."""
    import tempfile

    import torch

    from mred.classify import ClassifierConfig, TrainConfig, train_classifier
    from mred.data import Release, read_generation_csv
    from mred.metrics import control_accuracy
    from mred.pipeline import summarize_examples
    from mred.rouge import corpus_rouge

    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mred"
    if not (data / "full_data_info.txt").is_file():
        print(f"  skipped: the shared MReD copy is absent ({data})")
        return
    release = Release(data)
    train, _ = release.labeled_documents("train")  # gold train subsets (the full split is absent)
    rows = read_generation_csv(release.generation_csv("val", "longest", "sent-ctrl"))[:30]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-document tensors: extra threads only spin
    try:
        with tempfile.TemporaryDirectory() as root:
            classifier, _ = train_classifier(
                train[:200], [], ClassifierConfig(model="bow"),
                TrainConfig(out_dir=root, epochs=3, lr=5e-3), show_progress=False,
            )  # fmt: skip
        print(f"  bag-of-words BiLSTM-CRF tagger trained on {len(train[:200])} gold meta-reviews")
        references = [row.summary for row in rows]
        for controlled in (False, True):
            summaries = summarize_examples(
                rows, "textrank", classifier=classifier, controlled=controlled
            )
            scores = corpus_rouge([s.text for s in summaries], references)
            produced = classifier.predict([list(s.sentences) for s in summaries])
            control = control_accuracy([row.control for row in rows], produced)
            print(
                f"  {'controlled  ' if controlled else 'uncontrolled'} TextRank on {len(rows)} "
                f"val rows: ROUGE-1/2/L {scores['rouge1']:.2f}/{scores['rouge2']:.2f}/"
                f"{scores['rougeL']:.2f}, control: {control['sentence_accuracy']:.1f}% of "
                f"sentences carry the requested label"
            )
    finally:
        torch.set_num_threads(threads)
    picked = sum(
        a == b for s in summaries for a, b in zip(s.labels, s.control, strict=False)
    ) / max(sum(len(s.control) for s in summaries), 1)
    first = summaries[0]
    print(f"  row 1: control {' | '.join(first.control)}")
    print(
        f"         picked  {' | '.join(first.labels)} (source-side labels; {100 * picked:.0f}% "
        f"of all picks carry the requested label, the rest are fallbacks)"
    )
    if not all(
        len(s.sentences) == len(row.control) for s, row in zip(summaries, rows, strict=True)
    ):
        raise SystemExit("mred: controlled summaries do not follow the control length")
    if not scores["rouge1"] > 15.0:
        raise SystemExit("mred: controlled TextRank ROUGE-1 is implausibly low")


# --------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only these packages' steps")
    args = parser.parse_args(argv)
    failures = 0
    tour_start = time.monotonic()
    for package, module, function in STEPS:
        if args.only and package not in args.only:
            continue
        if importlib.util.find_spec(module.split(".")[0]) is None or (
            "." in module and importlib.util.find_spec(module) is None
        ):
            print(f"[{package}] skipped: {module} is not installed")
            continue
        print(f"[{package}] {function.__doc__}")
        start = time.monotonic()
        try:
            function()
        except SystemExit as error:
            print(f"[{package}] FAILED: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"[{package}] done in {time.monotonic() - start:.1f} s")
    print(f"tour finished in {time.monotonic() - tour_start:.1f} s, {failures} step(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
