"""Simulator and policies on tiny hand-made traces with exact answers."""

from __future__ import annotations

import numpy as np
import pytest

from ptrain.sched.errors import InputError
from ptrain.sched.policies import (
    POLICIES,
    FifoPolicy,
    OnesPolicy,
    SrtfPolicy,
    TiresiasPolicy,
    make_policy,
)
from ptrain.sched.sim import SimConfig, simulate
from ptrain.sched.types import ClusterSpec, JobSpec
from ptrain.sched.workload import synthetic

SHORT = ("cifar10", "ncf", "bert")  # short jobs keep these simulations fast


def _job(i: int, t: float, gpus: int, work: float, app: str = "lin") -> JobSpec:
    return JobSpec(
        job_id=i,
        name=f"j{i}",
        submit_time=t,
        application=app,
        num_gpus=gpus,
        batch_size=gpus,
        work=work,
    )


def _finish(result, job_id):
    return next(r for r in result.records if r.job_id == job_id)


def test_job_finishes_exactly_when_its_work_is_done(linear_models) -> None:
    specs = [_job(0, 7.0, 2, work=100.0)]
    config = SimConfig(tick=60.0, restart_penalty=30.0)
    result = simulate(
        specs,
        FifoPolicy(),
        ClusterSpec(nodes=1, gpus_per_node=4),
        models=linear_models,
        config=config,
    )
    record = result.records[0]
    # starts on arrival (decide on events), pays 30 s restart penalty, then 100 / (2·1) s.
    assert record.start == 7.0
    assert record.finish == pytest.approx(7.0 + 30.0 + 50.0, abs=1e-9)
    assert record.gpu_seconds == pytest.approx(2 * 80.0)


def test_events_in_order_completion_frees_gpus_before_arrival(linear_models) -> None:
    # j0 finishes at 0 + 0 + 10 = 10 s exactly when j1 arrives; j1 must start at 10, not later.
    specs = [_job(0, 0.0, 4, work=40.0), _job(1, 10.0, 4, work=40.0)]
    result = simulate(
        specs,
        FifoPolicy(),
        ClusterSpec(nodes=1, gpus_per_node=4),
        models=linear_models,
        config=SimConfig(restart_penalty=0.0),
    )
    assert _finish(result, 0).finish == pytest.approx(10.0)
    assert _finish(result, 1).start == pytest.approx(10.0)
    assert _finish(result, 1).finish == pytest.approx(20.0)


def test_fifo_runs_in_arrival_order_with_head_of_line_blocking(linear_models) -> None:
    specs = [_job(0, 0.0, 3, 30.0), _job(1, 1.0, 4, 8.0), _job(2, 2.0, 1, 1.0)]
    result = simulate(
        specs,
        FifoPolicy(),
        ClusterSpec(nodes=1, gpus_per_node=4),
        models=linear_models,
        config=SimConfig(restart_penalty=0.0),
    )
    starts = [_finish(result, i).start for i in range(3)]
    # j2 (1 GPU) fits beside j0 but must wait behind j1 (4 GPUs): strict FIFO order.
    assert starts[0] < starts[1] <= starts[2]
    assert starts[1] == pytest.approx(10.0)


def test_srtf_preempts_a_long_job_for_a_short_one(linear_models) -> None:
    specs = [_job(0, 0.0, 4, 400.0), _job(1, 20.0, 4, 20.0)]
    result = simulate(
        specs,
        SrtfPolicy(),
        ClusterSpec(nodes=1, gpus_per_node=4),
        models=linear_models,
        config=SimConfig(restart_penalty=0.0),
    )
    long, short = _finish(result, 0), _finish(result, 1)
    assert short.start == pytest.approx(20.0) and short.finish == pytest.approx(25.0)
    assert long.preemptions == 1 and long.finish == pytest.approx(105.0)


def test_tiresias_demotes_a_job_past_the_service_threshold(linear_models) -> None:
    # Threshold 0.01 GPU-h = 36 GPU-s: j0 (4 GPUs) is demoted after 9 s; j1 arrives at 20 s with
    # 0 attained service, takes priority although it came later, and preempts j0.
    policy = TiresiasPolicy(thresholds_gpu_hours=(0.01,))
    specs = [_job(0, 0.0, 4, 400.0), _job(1, 20.0, 4, 40.0)]
    result = simulate(
        specs,
        policy,
        ClusterSpec(nodes=1, gpus_per_node=4),
        models=linear_models,
        config=SimConfig(restart_penalty=0.0),
    )
    assert _finish(result, 1).start == pytest.approx(20.0)
    assert _finish(result, 0).preemptions >= 1
    # Without demotion (default 16 GPU-h) j1 waits for j0: FIFO within the first queue.
    plain = simulate(
        specs,
        TiresiasPolicy(),
        ClusterSpec(nodes=1, gpus_per_node=4),
        models=linear_models,
        config=SimConfig(restart_penalty=0.0),
    )
    assert _finish(plain, 1).start == pytest.approx(100.0)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_finishes_all_jobs_within_capacity(name: str) -> None:
    specs = synthetic(24, duration=3600.0, seed=3, max_gpus=8, applications=SHORT)
    cluster = ClusterSpec(nodes=4, gpus_per_node=4)
    result = simulate(specs, make_policy(name, seed=1), cluster, seed=1)
    assert len(result.records) == 24
    # Never more GPUs allocated than exist, at any moment of the timeline.
    edges = sorted({t for _, s, e, _, _ in result.timeline for t in (s, e)})
    for t in edges:
        held = sum(n for _, s, e, n, _ in result.timeline if s <= t < e)
        assert held <= cluster.num_gpus
    assert 0 < result.summary["gpu_util_allocated"] <= 1.0 + 1e-9


def test_runs_are_deterministic_under_a_seed() -> None:
    specs = synthetic(20, duration=3600.0, seed=5, max_gpus=8, applications=SHORT)
    cluster = ClusterSpec(nodes=4, gpus_per_node=4)

    def run(seed: int, variant: str) -> list[tuple[int, float]]:
        result = simulate(specs, make_policy("ones", seed=seed, variant=variant), cluster)
        return [(r.job_id, r.finish) for r in result.records]

    for variant in ("jct", "artifact"):
        assert run(7, variant) == run(7, variant)
    # The artifact's fitness samples its predictions: another seed, another schedule.
    assert run(7, "artifact") != run(8, "artifact")


def test_batch_size_changes_time_to_finish() -> None:
    from ptrain.sched.apps import load_applications

    cifar = load_applications()["cifar10"]
    small = cifar.total_work / cifar.rate(4, 1, 128, 0.0).progress_per_s
    large = cifar.total_work / cifar.rate(4, 1, 1024, 0.0).progress_per_s
    assert small != pytest.approx(large, rel=0.05)
    # A larger batch makes more progress per iteration, but less than proportionally.
    gain = cifar.gain(1024, 0.0)
    assert 1.0 < gain < 1024 / cifar.min_batch


def test_job_asking_for_more_gpus_than_exist_is_rejected(linear_models) -> None:
    with pytest.raises(InputError, match="asks for 8 GPUs but the cluster has only 4"):
        simulate(
            [_job(0, 0.0, 8, 1.0)],
            FifoPolicy(),
            ClusterSpec(nodes=1, gpus_per_node=4),
            models=linear_models,
        )


def test_unknown_policy_lists_the_valid_ones() -> None:
    with pytest.raises(
        InputError, match="valid policies: fifo, srtf, tiresias, optimus, pollux, ones"
    ):
        make_policy("sjf")


def test_stalling_policy_is_reported(linear_models) -> None:
    class Idle:
        name = "idle"

        def decide(self, state):
            from ptrain.sched.types import Allocation

            return Allocation({})

    with pytest.raises(RuntimeError, match="leaves 1 jobs waiting"):
        simulate(
            [_job(0, 0.0, 1, 1.0)],
            Idle(),
            ClusterSpec(nodes=1, gpus_per_node=1),
            models=linear_models,
        )


def test_pollux_grows_a_lone_job_and_retunes_its_batch() -> None:
    specs = [
        JobSpec(
            job_id=0, name="c", submit_time=0.0, application="cifar10", num_gpus=1, batch_size=128
        )
    ]
    result = simulate(specs, make_policy("pollux"), ClusterSpec(nodes=2, gpus_per_node=4))
    segments = result.timeline
    assert max(n for *_, n, _ in segments) > 1
    assert any(b != 128 for *_, b in segments)


def test_ones_caps_double_only_at_cap_and_keep_feasible() -> None:
    specs = [
        JobSpec(
            job_id=i, name=f"n{i}", submit_time=0.0, application="ncf", num_gpus=2, batch_size=8192
        )
        for i in range(2)
    ]
    policy = OnesPolicy.from_variant("artifact", seed=0)
    result = simulate(specs, policy, ClusterSpec(nodes=2, gpus_per_node=4))
    assert len(result.records) == 2
    assert max(r.max_gpus for r in result.records) <= 4 * 2  # 4× the request
    assert max(r.max_gpus for r in result.records) > 1  # grew past its slow-start cap of 1


def test_ones_batch_rule_linear_then_capped() -> None:
    from ptrain.sched.policies import ones_batch_size
    from ptrain.sched.types import JobView

    view = JobView(
        spec=JobSpec(job_id=0, name="x", submit_time=0, application="x", num_gpus=2, batch_size=64),
        work_done=0,
        samples_done=0,
        epochs_done=0,
        attained_service=0,
        num_gpus=0,
        batch_size=64,
        throughput_history={},
        epochs_at_last_change=None,
        ever_ran=False,
        restarts=0,
    )
    assert [ones_batch_size(view, n, 4.0) for n in (1, 2, 4)] == [32, 64, 128]
    # Beyond the LR cap the global batch stays ≈ 32·4 and the per-GPU batch shrinks.
    assert ones_batch_size(view, 8, 4.0) == 8 * (128 // 8)
    assert ones_batch_size(view, 5, 4.0) == 5 * (128 // 5)


def test_ones_operators_keep_allocations_feasible() -> None:
    rng = np.random.default_rng(0)
    policy = OnesPolicy(seed=0)
    size, slots = 12, 32
    caps = rng.integers(1, 6, size=size)
    protected = rng.random(size) < 0.3
    pending = rng.integers(1, 6, size=size)
    for _ in range(50):
        parents = rng.integers(-1, size, size=(4, slots))
        parents = policy.enforce_caps(parents, caps)
        first, second = policy.crossover(parents[:2], parents[2:], caps)
        mutants = policy.mutate(parents, protected)
        padded = policy.pad(
            np.concatenate([first, second, mutants]),
            np.array([0, 1]),
            np.arange(2, size),
            pending,
            caps,
        )
        for chromosome in np.concatenate([parents, first, second, mutants, padded]):
            counts = np.bincount(chromosome[chromosome >= 0], minlength=size)
            assert (counts <= caps).all()
        # mutation never removes a protected job
        for before, after in zip(parents, mutants, strict=True):
            kept = np.bincount(after[after >= 0], minlength=size)
            had = np.bincount(before[before >= 0], minlength=size)
            assert (kept[protected] == had[protected]).all()
        # padding fills every free slot while some job is below its cap
        for chromosome in padded:
            counts = np.bincount(chromosome[chromosome >= 0], minlength=size)
            assert (chromosome >= 0).all() or (counts[2:] >= caps[2:]).all()


def test_online_table_mean_of_last_five_and_extrapolation() -> None:
    from ptrain.sched.policies.base import online_table

    history = {1: (100.0, 1.0, 1.0, 1.0, 1.0, 1.0), 2: (1.5,)}
    estimate = online_table(history, np.array([0, 1, 2, 4]))
    assert estimate[1] == pytest.approx(1.0)  # the first (100) is outside the window of 5
    assert estimate[2] == pytest.approx(1.5)
    assert estimate[3] == pytest.approx(2.5)  # linear extrapolation through the last two
    assert estimate[0] == pytest.approx(0.01 * 1.5)  # (0, 0) floored at 1% of the max


def test_ones_generations_are_configurable_and_sim_fast() -> None:
    specs = synthetic(30, duration=3600.0, seed=2, max_gpus=8, applications=SHORT)
    cluster = ClusterSpec(nodes=4, gpus_per_node=4)
    # The artifact variant: its decide() is cheap, so the cost of generations shows.
    one = simulate(
        specs, OnesPolicy.from_variant("artifact", seed=0, generations_per_decision=1), cluster
    )
    three = simulate(
        specs, OnesPolicy.from_variant("artifact", seed=0, generations_per_decision=3), cluster
    )
    assert len(one.records) == len(three.records) == 30
    assert one.summary["decide_latency_ms_median"] < three.summary["decide_latency_ms_median"]
