"""ONES's default ("jct") variant: completion-rate fitness, restart cost, greedy seeding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptrain.sched.policies import ONES_VARIANTS, OnesPolicy, make_policy
from ptrain.sched.sim import SimConfig, simulate
from ptrain.sched.types import ClusterSpec, JobSpec
from ptrain.sched.workload import synthetic

SHORT = ("cifar10", "ncf", "bert")


def _job(i: int, t: float, gpus: int, work: float) -> JobSpec:
    return JobSpec(
        job_id=i,
        name=f"j{i}",
        submit_time=t,
        application="lin",
        num_gpus=gpus,
        batch_size=gpus,
        work=work,
    )


def _max_held(result) -> int:
    edges = sorted({t for _, s, e, _, _ in result.timeline for t in (s, e)})
    return max(sum(n for _, s, e, n, _ in result.timeline if s <= t < e) for t in edges)


def test_default_is_jct_and_artifact_preset_restores_the_artifact() -> None:
    default = make_policy("ones")
    assert (default.fitness, default.growth, default.seed_greedy) == ("jct", "none", True)
    artifact = make_policy("ones", variant="artifact", seed=3)
    for key, value in ONES_VARIANTS["artifact"].items():
        assert getattr(artifact, key) == value
    assert artifact.seed == 3
    # Explicit fields override the preset.
    assert make_policy("ones", variant="artifact", fitness="jct").fitness == "jct"
    with pytest.raises(ValueError, match="variant must be one of jct, artifact"):
        OnesPolicy.from_variant("paper")
    with pytest.raises(ValueError, match="fitness must be one of"):
        OnesPolicy(fitness="makespan")


def test_jct_ones_is_deterministic_and_never_over_allocates() -> None:
    specs = synthetic(24, duration=3600.0, seed=11, max_gpus=8, applications=SHORT)
    cluster = ClusterSpec(nodes=2, gpus_per_node=4)
    first = simulate(specs, make_policy("ones", seed=5), cluster, seed=5)
    again = simulate(specs, make_policy("ones", seed=5), cluster, seed=5)
    assert [(r.job_id, r.finish, r.reconfigurations) for r in first.records] == [
        (r.job_id, r.finish, r.reconfigurations) for r in again.records
    ]
    assert len(first.records) == 24
    assert _max_held(first) <= cluster.num_gpus


def test_jct_fitness_prefers_the_short_job(linear_models) -> None:
    # One GPU. A long job runs; a short one arrives: finishing it first lowers the mean JCT by
    # far more than the restarts cost, so the completion-rate fitness preempts the long job.
    specs = [_job(0, 0.0, 1, 2000.0), _job(1, 100.0, 1, 100.0)]
    cluster = ClusterSpec(nodes=1, gpus_per_node=1)
    config = SimConfig(restart_penalty=5.0)
    policy = make_policy(
        "ones", seed=0, restart_penalty=5.0, restart_weight=1.0, predictor="oracle"
    )
    result = simulate(specs, policy, cluster, models=linear_models, config=config)
    long, short = sorted(result.records, key=lambda r: r.job_id)
    assert short.finish < long.finish
    assert short.finish == pytest.approx(100.0 + 5.0 + 100.0)
    assert long.preemptions == 1


def test_restart_cost_in_the_fitness_damps_reconfigurations() -> None:
    specs = synthetic(30, duration=3600.0, seed=4, max_gpus=8, applications=SHORT)
    cluster = ClusterSpec(nodes=4, gpus_per_node=4)

    def reconfigurations(weight: float) -> float:
        policy = make_policy("ones", seed=0, restart_weight=weight)
        return simulate(specs, policy, cluster).summary["reconfigurations_per_job"]

    assert reconfigurations(20.0) < reconfigurations(0.0)


def test_greedy_counts_respect_caps_and_slots_and_improve_the_fitness() -> None:
    rng = np.random.default_rng(0)
    jobs, cap = 10, 6
    # A concave completion-rate table with a restart penalty at random current sizes.
    rates = np.cumsum(rng.uniform(0.2, 1.0, size=(jobs, cap)), axis=1)
    table = np.zeros((jobs, cap + 1))
    table[:, 1:] = -rates / rng.uniform(1.0, 10.0, size=(jobs, 1))
    caps = rng.integers(1, cap + 1, size=jobs)
    start = np.zeros(jobs, dtype=np.int64)
    for slots in (3, 12, 100):
        counts = OnesPolicy.greedy_counts(table, caps, list(range(jobs)), slots, start)
        assert counts.sum() <= slots and (counts <= caps).all()
        assert table[np.arange(jobs), counts].sum() < 0
        if slots >= caps.sum():
            assert (counts == caps).all()  # every extra GPU helps in this table


def test_jct_ones_beats_the_artifact_on_a_loaded_cluster() -> None:
    specs = synthetic(40, duration=3600.0, seed=2, max_gpus=8, applications=SHORT)
    cluster = ClusterSpec(nodes=2, gpus_per_node=4)
    jct = simulate(specs, make_policy("ones", seed=0), cluster).summary["avg_jct"]
    artifact = simulate(specs, make_policy("ones", seed=0, variant="artifact"), cluster)
    assert jct < artifact.summary["avg_jct"]


CSV = """name,time,application,num_replicas,batch_size
cifar10-0,0,cifar10,2,256
ncf-1,30,ncf,1,8192
bert-2,60,bert,2,48
cifar10-3,90,cifar10,4,512
"""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"variant": "jct"}),
        (
            ["--ones-variant", "artifact", "--ones-restart-weight", "5", "--no-ones-greedy-seed"],
            {"variant": "artifact", "restart_weight": 5.0, "seed_greedy": False},
        ),
    ],
)
def test_cli_ones_variant_and_flags_keep_the_contract(tmp_path, flags, expected) -> None:
    from ptrain.sched.cli import main

    workload = tmp_path / "w.csv"
    workload.write_text(CSV)
    out = tmp_path / "run.json"
    argv = ["simulate", "--workload", str(workload), "--policy", "ones", "--gpus", "8"]
    argv += ["--gpus-per-node", "4", "--seed", "0", "--json", str(out), *flags]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    keys = {"policy", "avg_jct", "p99_jct", "makespan", "jobs", "decide_latency_ms_median"}
    assert keys <= set(data) and data["policy"] == "ones" and data["jobs"] == 4
    for key, value in expected.items():
        assert data["config"]["ones"][key] == value
